"""API keys: per tenant (or the operator's), shown once, revocable, with a last-used time."""

from __future__ import annotations

import sqlite3

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Forbidden, NotFound, Unauthorized
from whatsdex.identity import audit
from whatsdex.identity.principal import Principal
from whatsdex.identity.tenants import clean_name
from whatsdex.identity.tokens import API_KEY_PREFIX, new_api_key, sha256_hex
from whatsdex.store import Store, apikeys, tenants
from whatsdex.store.ids import new_id
from whatsdex.store.records import ApiKey

# last_used_at is a hint, not a log: write it at most once a minute per key.
TOUCH_INTERVAL = 60.0
SUSPENDED = "This workspace is suspended: contact your provider"


async def create_key(
    db: Store, actor: Principal, tenant_id: str | None, *, name: str, now: float,
    role: str = "owner", ip: str = "",
) -> tuple[ApiKey, str]:
    """A new key for a tenant (tenant_id None: an operator key). Returns the key once.

    A tenant key acts as an owner (manages numbers) or a member (uses them).
    """
    name = clean_name(name or "API key")
    if tenant_id is None:
        role = "operator"
    elif role not in ("owner", "member"):
        raise BadRequest("role must be owner or member", {"field": "role"})
    issued = new_api_key()
    stamp = iso(now)
    key = ApiKey(id=new_id("key"), tenant_id=tenant_id, name=name, role=role,
                 prefix=issued.prefix,
                 created_by=actor.id if actor.kind == "user" else None, created_at=stamp,
                 last_used_at=None, revoked_at=None)

    def write(conn: sqlite3.Connection) -> ApiKey:
        if tenant_id is not None and tenants.get_tenant_sync(conn, tenant_id) is None:
            raise NotFound("Tenant not found")
        apikeys.insert_key(conn, key, issued.hash)
        audit.record(conn, actor, "api_key.created", at=stamp, tenant_id=tenant_id,
                     object_type="api_key", object_id=key.id,
                     detail={"name": name, "prefix": key.prefix, "role": role}, ip=ip)
        return key

    return await db.write(write), issued.secret


async def revoke_key(
    db: Store, actor: Principal, tenant_id: str | None, key_id: str, *, now: float, ip: str = ""
) -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        key = apikeys.get_key_sync(conn, tenant_id, key_id)
        if key is None:
            raise NotFound("API key not found")
        if apikeys.revoke_key(conn, tenant_id, key_id, stamp):
            audit.record(conn, actor, "api_key.revoked", at=stamp, tenant_id=tenant_id,
                         object_type="api_key", object_id=key_id,
                         detail={"name": key.name, "prefix": key.prefix}, ip=ip)

    await db.write(write)


async def authenticate(db: Store, secret: str, *, now: float) -> Principal:
    """The identity behind a bearer key, or 401 (unknown, revoked) / 403 (tenant suspended)."""
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > 200:
        raise Unauthorized("Invalid API key")
    found = await apikeys.find_by_hash(db, sha256_hex(secret))
    if found is None or found[0].revoked_at is not None:
        raise Unauthorized("Invalid API key")
    key, tenant_status = found
    if key.tenant_id is not None:
        if tenant_status is None:
            raise Unauthorized("Invalid API key")
        if tenant_status != "active":
            raise Forbidden(SUSPENDED)
    if key.last_used_at is None or key.last_used_at <= iso(now - TOUCH_INTERVAL):
        stamp = iso(now)
        db.submit(lambda conn: apikeys.touch_key(conn, key.id, stamp))  # no need to wait
    return Principal(
        kind="api_key", id=key.id, label=f"API key {key.name} ({key.prefix}…)",
        role=key.role,  # type: ignore[arg-type]
        tenant_id=key.tenant_id,
    )
