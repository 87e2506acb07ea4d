"""The operator's pages (`/admin`): tenants, plans, the audit log of all tenants, operator keys.

Only signed-in operators get in (`requires_operator` on the router). Mutations are HTMX requests
answered with the partial they change; secrets (keys, invitation links) are shown once.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import apikeys, tenants, users
from whatsdex.identity.limits import LABELS
from whatsdex.services import Services
from whatsdex.store import plans as plan_store
from whatsdex.store import tenants as tenant_store
from whatsdex.store import users as user_store
from whatsdex.store.records import Plan, Tenant
from whatsdex.web.api.admin import invite_url
from whatsdex.web.api.schemas import InvitationCreated
from whatsdex.web.auth import client_ip, principal_of, requires_operator
from whatsdex.web.ui.workspace import Cursor, audit_rows, go, key_context, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)


# -- Tenants -----------------------------------------------------------------------------------

@get("/tenants", summary="Tenants")
async def tenants_page(request: AnyRequest, services: ServicesDep) -> Template:
    return page(request, "admin/tenants.html",
                tenants=await tenant_store.list_tenants(services.store),
                plans=await plan_store.list_plans(services.store))


@post("/tenants", summary="Create a tenant")
async def create_tenant(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    form = await request.form()
    tenant = await tenants.create_tenant(
        services.store, principal_of(request), name=text(form, "name"),
        plan_id=text(form, "plan") or "free", now=services.clock(), ip=client_ip(request))
    return go(request, f"/admin/tenants/{tenant.id}")


async def _summary(services: Services, tenant: Tenant, notice: str = "") -> Template:
    return partial("admin/_tenant_summary.html", tenant=tenant, notice=notice,
                   plans=await plan_store.list_plans(services.store))


@get("/tenants/{tenant_id:str}", summary="A tenant")
async def tenant_page(request: AnyRequest, services: ServicesDep,
                      tenant_id: FromPath[str]) -> Template:
    tenant = await tenants.get_tenant(services.store, tenant_id)
    base = f"/admin/tenants/{tenant_id}/api-keys"
    return page(request, "admin/tenant.html", tenant=tenant,
                plans=await plan_store.list_plans(services.store),
                members=await user_store.list_tenant_users(services.store, tenant_id),
                **await key_context(services, tenant_id, base))


@patch("/tenants/{tenant_id:str}", summary="Rename a tenant or change its plan")
async def update_tenant(request: AnyRequest, services: ServicesDep,
                        tenant_id: FromPath[str]) -> Template:
    form = await request.form()
    tenant = await tenants.update_tenant(
        services.store, principal_of(request), tenant_id, name=text(form, "name") or None,
        plan_id=text(form, "plan") or None, now=services.clock(), ip=client_ip(request))
    return await _summary(services, tenant, "Tenant saved")


@post("/tenants/{tenant_id:str}/suspend", status_code=200, summary="Suspend a tenant")
async def suspend(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]) -> Template:
    tenant = await tenants.update_tenant(services.store, principal_of(request), tenant_id,
                                         status="suspended", now=services.clock(),
                                         ip=client_ip(request))
    return await _summary(services, tenant, "Tenant suspended: its keys and users are refused")


@post("/tenants/{tenant_id:str}/resume", status_code=200, summary="Resume a tenant")
async def resume(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]) -> Template:
    tenant = await tenants.update_tenant(services.store, principal_of(request), tenant_id,
                                         status="active", now=services.clock(),
                                         ip=client_ip(request))
    return await _summary(services, tenant, "Tenant resumed")


@delete("/tenants/{tenant_id:str}", status_code=200, summary="Delete a tenant")
async def delete_tenant(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]
                        ) -> Response[Any]:
    # htmx sends a DELETE's form fields in the query string.
    await tenants.delete_tenant(services.store, principal_of(request), tenant_id,
                                confirm=request.query_params.get("confirm", ""),
                                now=services.clock(), ip=client_ip(request))
    return go(request, "/admin/tenants")


@post("/tenants/{tenant_id:str}/invitations", summary="Invite a user into a tenant")
async def invite(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]) -> Template:
    form = await request.form()
    link, token = await users.invite(
        services.store, principal_of(request), tenant_id, email=text(form, "email"),
        role=text(form, "role") or "owner", now=services.clock(), ip=client_ip(request))
    created = InvitationCreated(id=link.id, email=link.subject, role=link.role or "owner",
                                url=invite_url(services, token), expires_at=link.expires_at)
    return partial("workspace/_invitation_link.html", created=created)


@post("/tenants/{tenant_id:str}/api-keys", summary="Create a tenant API key")
async def create_tenant_key(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]
                            ) -> Template:
    form = await request.form()
    new = await apikeys.create_key(services.store, principal_of(request), tenant_id,
                                   name=text(form, "name"), role=text(form, "role") or "owner",
                                   now=services.clock(), ip=client_ip(request))
    base = f"/admin/tenants/{tenant_id}/api-keys"
    return partial("workspace/_api_keys.html", **await key_context(services, tenant_id, base, new))


@delete("/tenants/{tenant_id:str}/api-keys/{key_id:str}", status_code=200,
        summary="Revoke a tenant API key")
async def revoke_tenant_key(request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str],
                            key_id: FromPath[str]) -> Template:
    await apikeys.revoke_key(services.store, principal_of(request), tenant_id, key_id,
                             now=services.clock(), ip=client_ip(request))
    base = f"/admin/tenants/{tenant_id}/api-keys"
    return partial("workspace/_api_keys.html", **await key_context(services, tenant_id, base))


# -- Plans -------------------------------------------------------------------------------------

def _plan_from(form: FormMultiDict, plan_id: str) -> Plan:
    """A plan from form fields; a limit that is not a whole number is named in the error."""
    limits: dict[str, int] = {}
    for limit, label in LABELS.items():
        raw = text(form, limit).strip()
        try:
            limits[limit] = int(raw)
        except ValueError:
            raise BadRequest(f"The limit on {label} must be a whole number",
                             {"field": limit}) from None
    return Plan(id=plan_id, name=text(form, "name"), created_at="", updated_at="", **limits)


@get("/plans", summary="Plans")
async def plans_page(request: AnyRequest, services: ServicesDep) -> Template:
    return page(request, "admin/plans.html", plans=await plan_store.list_plans(services.store),
                labels=LABELS)


@post("/plans", summary="Create a plan")
async def create_plan(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    plan_id = text(form, "id").strip()
    if await plan_store.get_plan(services.store, plan_id) is not None:
        raise Conflict(f"A plan with id {plan_id!r} already exists", {"field": "id"})
    plan = await tenants.save_plan(services.store, principal_of(request),
                                   _plan_from(form, plan_id), now=services.clock(),
                                   ip=client_ip(request))
    return partial("admin/_plan.html", plan=plan, labels=LABELS, notice=f"Plan {plan.name} created")


@put("/plans/{plan_id:str}", summary="Save a plan's limits")
async def update_plan(request: AnyRequest, services: ServicesDep,
                      plan_id: FromPath[str]) -> Template:
    if await plan_store.get_plan(services.store, plan_id) is None:
        raise NotFound("Plan not found")
    plan = await tenants.save_plan(services.store, principal_of(request),
                                   _plan_from(await request.form(), plan_id),
                                   now=services.clock(), ip=client_ip(request))
    return partial("admin/_plan.html", plan=plan, labels=LABELS, notice=f"Plan {plan.name} saved")


@delete("/plans/{plan_id:str}", status_code=200, summary="Delete a plan")
async def delete_plan(request: AnyRequest, services: ServicesDep,
                      plan_id: FromPath[str]) -> Template:
    await tenants.delete_plan(services.store, principal_of(request), plan_id,
                              now=services.clock(), ip=client_ip(request))
    return partial("workspace/_notice.html", notice="Plan deleted")


# -- Audit and operator keys -------------------------------------------------------------------

@get("/audit", summary="Audit log of all tenants")
async def audit(request: AnyRequest, services: ServicesDep, before: Cursor = None,
                tenant_id: FromQuery[str | None] = None) -> Template:
    names = {t.id: t.name for t in await tenant_store.list_tenants(services.store)}
    url = f"/admin/audit?{urlencode({'tenant_id': tenant_id})}" if tenant_id else "/admin/audit"
    return await audit_rows(request, services, tenant_id, before, url,
                            full_page="admin/audit.html", show_tenant=True, names=names,
                            only_tenant=tenant_id)


@get("/api-keys", summary="Operator API keys")
async def keys_page(request: AnyRequest, services: ServicesDep) -> Template:
    return page(request, "admin/api_keys.html",
                **await key_context(services, None, "/admin/api-keys"))


@post("/api-keys", summary="Create an operator API key")
async def create_key(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    new = await apikeys.create_key(services.store, principal_of(request), None,
                                   name=text(form, "name"), now=services.clock(),
                                   ip=client_ip(request))
    return partial("workspace/_api_keys.html",
                   **await key_context(services, None, "/admin/api-keys", new))


@delete("/api-keys/{key_id:str}", status_code=200, summary="Revoke an operator API key")
async def revoke_key(request: AnyRequest, services: ServicesDep, key_id: FromPath[str]) -> Template:
    await apikeys.revoke_key(services.store, principal_of(request), None, key_id,
                             now=services.clock(), ip=client_ip(request))
    return partial("workspace/_api_keys.html",
                   **await key_context(services, None, "/admin/api-keys"))


ROUTES: list[Any] = [
    Router(
        path="/admin",
        route_handlers=[
            tenants_page, create_tenant, tenant_page, update_tenant, suspend, resume,
            delete_tenant, invite, create_tenant_key, revoke_tenant_key,
            plans_page, create_plan, update_plan, delete_plan,
            audit, keys_page, create_key, revoke_key,
        ],
        guards=[requires_operator],
        include_in_schema=False,
    )
]
