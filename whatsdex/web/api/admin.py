"""The operator's JSON API (`/api/v1/admin`): tenants, plans, onboarding keys, invitations, audit.

Only operator API keys get in (`requires_operator` on the router); every change goes through the
identity domain, which audits it in the same transaction.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Router, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from whatsdex.errors import Conflict, NotFound
from whatsdex.identity import apikeys, tenants, users
from whatsdex.services import Services
from whatsdex.store import apikeys as key_store
from whatsdex.store import audit as audit_store
from whatsdex.store import plans as plan_store
from whatsdex.store import tenants as tenant_store
from whatsdex.store.records import Plan
from whatsdex.web.api.schemas import (
    MAX_PAGE,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    AuditEntryOut,
    AuditPage,
    InvitationCreate,
    InvitationCreated,
    PlanCreate,
    PlanLimits,
    PlanOut,
    TenantCreate,
    TenantOut,
    TenantUpdate,
)
from whatsdex.web.auth import client_ip, principal_of, requires_operator

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Before = Annotated[
    int | None, QueryParameter(ge=1, description="Cursor: `next_before` of the previous page")
]
PageSize = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description=f"1-{MAX_PAGE}")]


class TenantsController(Controller):
    path = "/tenants"
    tags = ["Operator: tenants"]

    @get("/", summary="List tenants")
    async def list_tenants(self, services: ServicesDep) -> list[TenantOut]:
        return [TenantOut.of(t) for t in await tenant_store.list_tenants(services.store)]

    @post("/", summary="Create a tenant",
          description="A new client workspace on a plan (default `free`). Invite its first owner "
                      "next, or create an API key for it.")
    async def create_tenant(self, request: AnyRequest, services: ServicesDep,
                            data: JSONBody[TenantCreate]) -> TenantOut:
        tenant = await tenants.create_tenant(
            services.store, principal_of(request), name=data.name, plan_id=data.plan,
            now=services.clock(), ip=client_ip(request))
        return TenantOut.of(tenant)

    @get("/{tenant_id:str}", summary="Get a tenant")
    async def get_tenant(self, services: ServicesDep, tenant_id: FromPath[str]) -> TenantOut:
        return TenantOut.of(await tenants.get_tenant(services.store, tenant_id))

    @patch("/{tenant_id:str}", summary="Rename, change plan, suspend or resume",
           description="Only the fields sent change. A suspended tenant's keys and sessions are "
                       "refused with 403 until it is resumed.")
    async def update_tenant(self, request: AnyRequest, services: ServicesDep,
                            tenant_id: FromPath[str],
                            data: JSONBody[TenantUpdate]) -> TenantOut:
        tenant = await tenants.update_tenant(
            services.store, principal_of(request), tenant_id, name=data.name,
            plan_id=data.plan, status=data.status, now=services.clock(), ip=client_ip(request))
        return TenantOut.of(tenant)

    @delete("/{tenant_id:str}", summary="Delete a tenant and all its data",
            description="Irreversible: users, keys, links, numbers, messages and the tenant's "
                        "own audit entries are purged. Repeat the tenant's exact name in the "
                        "query parameter `confirm` (URL-encoded), e.g. "
                        "`DELETE /api/v1/admin/tenants/ten_x?confirm=Acme%20Bakery`; anything "
                        "else answers 400 and deletes nothing. The operator audit log keeps a "
                        "`tenant.deleted` entry.")
    async def delete_tenant(
        self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str],
        confirm: Annotated[str, QueryParameter(description="The tenant's exact name")] = "",
    ) -> None:
        await tenants.delete_tenant(services.store, principal_of(request), tenant_id,
                                    confirm=confirm, now=services.clock(), ip=client_ip(request))

    @post("/{tenant_id:str}/suspend", status_code=200, summary="Suspend a tenant",
          description="Its API keys and signed-in users get 403 until it is resumed.")
    async def suspend(self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]
                      ) -> TenantOut:
        return TenantOut.of(await tenants.update_tenant(
            services.store, principal_of(request), tenant_id, status="suspended",
            now=services.clock(), ip=client_ip(request)))

    @post("/{tenant_id:str}/resume", status_code=200, summary="Resume a suspended tenant")
    async def resume(self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str]
                     ) -> TenantOut:
        return TenantOut.of(await tenants.update_tenant(
            services.store, principal_of(request), tenant_id, status="active",
            now=services.clock(), ip=client_ip(request)))

    @get("/{tenant_id:str}/api-keys", summary="List a tenant's API keys")
    async def list_keys(self, services: ServicesDep, tenant_id: FromPath[str]) -> list[ApiKeyOut]:
        await tenants.get_tenant(services.store, tenant_id)
        return [ApiKeyOut.of(k) for k in await key_store.list_keys(services.store, tenant_id)]

    @post("/{tenant_id:str}/api-keys", summary="Create an API key for a tenant",
          description="For onboarding a client's integration. The key is in the response once "
                      "and never again: only its hash is stored.")
    async def create_key(self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str],
                         data: JSONBody[ApiKeyCreate]) -> ApiKeyCreated:
        key, secret = await apikeys.create_key(
            services.store, principal_of(request), tenant_id, name=data.name, role=data.role,
            now=services.clock(), ip=client_ip(request))
        return ApiKeyCreated.issued(key, secret)

    @delete("/{tenant_id:str}/api-keys/{key_id:str}", summary="Revoke a tenant's API key")
    async def revoke_key(self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str],
                         key_id: FromPath[str]) -> None:
        await apikeys.revoke_key(services.store, principal_of(request), tenant_id, key_id,
                                 now=services.clock(), ip=client_ip(request))

    @post("/{tenant_id:str}/invitations", summary="Invite a user into a tenant",
          description="Returns a one-time link (valid 72 hours) where the invitee chooses a "
                      "password. Typically the operator invites each client's first owner.")
    async def invite(self, request: AnyRequest, services: ServicesDep, tenant_id: FromPath[str],
                     data: JSONBody[InvitationCreate]) -> InvitationCreated:
        link, token = await users.invite(
            services.store, principal_of(request), tenant_id, email=data.email, role=data.role,
            now=services.clock(), ip=client_ip(request))
        return InvitationCreated(id=link.id, email=link.subject, role=link.role or data.role,
                                 url=invite_url(services, token), expires_at=link.expires_at)


class PlansController(Controller):
    path = "/plans"
    tags = ["Operator: plans"]

    @get("/", summary="List plans")
    async def list_plans(self, services: ServicesDep) -> list[PlanOut]:
        return [PlanOut.of(p) for p in await plan_store.list_plans(services.store)]

    @post("/", summary="Create a plan", description="409 when the id is taken.")
    async def create_plan(self, request: AnyRequest, services: ServicesDep,
                          data: JSONBody[PlanCreate]) -> PlanOut:
        if await plan_store.get_plan(services.store, data.id) is not None:
            raise Conflict(f"A plan with id {data.id!r} already exists", {"field": "id"})
        return PlanOut.of(await _save(request, services, data.id, data))

    @put("/{plan_id:str}", summary="Change a plan's name and limits",
         description="Limits apply to what tenants create next; nothing existing is removed.")
    async def update_plan(self, request: AnyRequest, services: ServicesDep, plan_id: FromPath[str],
                          data: JSONBody[PlanLimits]) -> PlanOut:
        if await plan_store.get_plan(services.store, plan_id) is None:
            raise NotFound("Plan not found")
        return PlanOut.of(await _save(request, services, plan_id, data))

    @delete("/{plan_id:str}", summary="Delete a plan", description="409 while tenants use it.")
    async def delete_plan(self, request: AnyRequest, services: ServicesDep,
                          plan_id: FromPath[str]) -> None:
        await tenants.delete_plan(services.store, principal_of(request), plan_id,
                                  now=services.clock(), ip=client_ip(request))


async def _save(request: AnyRequest, services: Services, plan_id: str, data: PlanLimits) -> Plan:
    plan = Plan(id=plan_id, name=data.name, max_numbers=data.max_numbers,
                max_messages_per_day=data.max_messages_per_day, max_contacts=data.max_contacts,
                max_active_campaigns=data.max_active_campaigns, max_webhooks=data.max_webhooks,
                created_at="", updated_at="")
    return await tenants.save_plan(services.store, principal_of(request), plan,
                                   now=services.clock(), ip=client_ip(request))


@get("/audit", tags=["Operator: audit"], summary="The audit log of every tenant",
     description="Newest first, `limit` entries per page; `tenant_id` narrows it to one tenant.")
async def admin_audit(
    services: ServicesDep,
    tenant_id: Annotated[
        str | None, QueryParameter(description="Only this tenant's entries")
    ] = None,
    before: Before = None,
    limit: PageSize = 50,
) -> AuditPage:
    return await audit_page(services, tenant_id, before, limit, all_tenants=tenant_id is None)


async def audit_page(services: Services, tenant_id: str | None, before: int | None, limit: int,
                     *, all_tenants: bool = False) -> AuditPage:
    """One page, newest first; one extra row tells whether another page follows."""
    rows = await audit_store.list_entries(services.store, tenant_id, before_id=before,
                                          limit=limit + 1, all_tenants=all_tenants)
    page = rows[:limit]
    return AuditPage(items=[AuditEntryOut.of(e) for e in page],
                     next_before=page[-1].id if len(rows) > limit else None)


def invite_url(services: Services, token: str) -> str:
    return f"{services.settings.base_url}/invite?token={token}"


ROUTES: list[Any] = [
    Router(
        path="/api/v1/admin",
        route_handlers=[TenantsController, PlansController, admin_audit],
        guards=[requires_operator],
        security=[{"apiKey": []}],
    )
]
