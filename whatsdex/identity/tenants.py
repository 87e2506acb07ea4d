"""Tenants and plans, as the operator manages them. Every change is audited."""

from __future__ import annotations

import re
import sqlite3

import msgspec

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import audit
from whatsdex.identity.principal import Principal
from whatsdex.store import Store, plans, tenants
from whatsdex.store.ids import new_id
from whatsdex.store.records import Plan, Tenant

STATUSES = ("active", "suspended")
_PLAN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def clean_name(name: str, what: str = "name") -> str:
    cleaned = " ".join(str(name).split())
    if not cleaned:
        raise BadRequest(f"The {what} must not be empty", {"field": what})
    if len(cleaned) > 100:
        raise BadRequest(f"The {what} must have at most 100 characters", {"field": what})
    return cleaned


def _tenant_or_404(conn: sqlite3.Connection, tenant_id: str) -> Tenant:
    tenant = tenants.get_tenant_sync(conn, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found")
    return tenant


async def get_tenant(db: Store, tenant_id: str) -> Tenant:
    tenant = await tenants.get_tenant(db, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found")
    return tenant


async def create_tenant(
    db: Store, actor: Principal, *, name: str, plan_id: str = "free", now: float, ip: str = ""
) -> Tenant:
    name = clean_name(name)
    stamp = iso(now)
    tenant = Tenant(id=new_id("ten"), name=name, plan_id=plan_id, status="active",
                    timezone="UTC", created_at=stamp, updated_at=stamp)

    def write(conn: sqlite3.Connection) -> Tenant:
        if plans.get_plan_sync(conn, plan_id) is None:
            raise BadRequest(f"Unknown plan {plan_id!r}", {"field": "plan"})
        tenants.insert_tenant(conn, tenant)
        audit.record(conn, actor, "tenant.created", at=stamp, tenant_id=tenant.id,
                     object_type="tenant", object_id=tenant.id,
                     detail={"name": name, "plan": plan_id}, ip=ip)
        return tenant

    return await db.write(write)


async def update_tenant(
    db: Store, actor: Principal, tenant_id: str, *, now: float, ip: str = "",
    name: str | None = None, plan_id: str | None = None, status: str | None = None,
) -> Tenant:
    """Rename, change plan, suspend or resume; only the given fields change."""
    fields: dict[str, str] = {}
    if name is not None:
        fields["name"] = clean_name(name)
    if plan_id is not None:
        fields["plan_id"] = plan_id
    if status is not None:
        if status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}", {"field": "status"})
        fields["status"] = status
    if not fields:
        raise BadRequest("Nothing to change")
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Tenant:
        before = _tenant_or_404(conn, tenant_id)
        if plan_id is not None and plans.get_plan_sync(conn, plan_id) is None:
            raise BadRequest(f"Unknown plan {plan_id!r}", {"field": "plan"})
        tenants.update_tenant(conn, tenant_id, stamp, **fields)
        changes = {k: [getattr(before, k), v] for k, v in fields.items() if getattr(before, k) != v}
        action = "tenant.updated"
        if "status" in changes:
            action = "tenant.suspended" if fields["status"] == "suspended" else "tenant.resumed"
        audit.record(conn, actor, action, at=stamp, tenant_id=tenant_id, object_type="tenant",
                     object_id=tenant_id, detail=changes, ip=ip)
        return _tenant_or_404(conn, tenant_id)

    return await db.write(write)


async def delete_tenant(
    db: Store, actor: Principal, tenant_id: str, *, confirm: str, now: float, ip: str = ""
) -> None:
    """Purge a tenant and all its data; `confirm` must repeat its name exactly."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        tenant = _tenant_or_404(conn, tenant_id)
        if confirm != tenant.name:
            raise BadRequest("To delete a tenant, type its name exactly to confirm",
                             {"field": "confirm"})
        tenants.delete_tenant(conn, tenant_id)
        # Recorded at operator level: the tenant's own audit rows are purged with it.
        audit.record(conn, actor, "tenant.deleted", at=stamp, tenant_id=None,
                     object_type="tenant", object_id=tenant_id, detail={"name": tenant.name},
                     ip=ip)

    await db.write(write)


def _validate_plan(plan: Plan) -> None:
    if not _PLAN_ID.match(plan.id):
        raise BadRequest("A plan id is 1-40 lowercase letters, digits, '-' or '_'",
                         {"field": "id"})
    clean_name(plan.name)
    for limit in plans.LIMITS:
        value = getattr(plan, limit)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9:
            raise BadRequest(f"{limit} must be a whole number from 0 to 1000000000",
                             {"field": limit})


async def save_plan(db: Store, actor: Principal, plan: Plan, *, now: float, ip: str = "") -> Plan:
    """Create or update a plan (limits apply to the next thing a tenant creates)."""
    stamp = iso(now)
    _validate_plan(plan)

    def write(conn: sqlite3.Connection) -> Plan:
        existing = plans.get_plan_sync(conn, plan.id)
        row = msgspec.structs.replace(
            plan, name=clean_name(plan.name),
            created_at=existing.created_at if existing else stamp, updated_at=stamp,
        )
        plans.upsert_plan(conn, row)
        audit.record(conn, actor, "plan.updated" if existing else "plan.created", at=stamp,
                     tenant_id=None, object_type="plan", object_id=plan.id,
                     detail={limit: getattr(row, limit) for limit in plans.LIMITS}, ip=ip)
        return row

    return await db.write(write)


async def delete_plan(db: Store, actor: Principal, plan_id: str, *, now: float, ip: str = ""
                      ) -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        if plans.get_plan_sync(conn, plan_id) is None:
            raise NotFound("Plan not found")
        in_use = plans.tenants_on_plan(conn, plan_id)
        if in_use:
            raise Conflict(f"{in_use} tenant(s) are on this plan: move them first")
        plans.delete_plan(conn, plan_id)
        audit.record(conn, actor, "plan.deleted", at=stamp, tenant_id=None, object_type="plan",
                     object_id=plan_id, ip=ip)

    await db.write(write)
