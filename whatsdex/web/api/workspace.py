"""A tenant's own JSON API (`/api/v1`): who am I, the plan, API keys, invitations, audit.

The tenant is always the authenticated key's: every store call takes `tenant_id_of(request)`, so
another tenant's ids are simply not found (404, never 403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from whatsdex.clock import iso
from whatsdex.errors import NotFound
from whatsdex.identity import apikeys, links, users
from whatsdex.identity.tenants import get_tenant
from whatsdex.services import Services
from whatsdex.store import Store, contact_lists, wa_sessions
from whatsdex.store import apikeys as key_store
from whatsdex.store import links as link_store
from whatsdex.store import plans as plan_store
from whatsdex.store import users as user_store
from whatsdex.store import webhooks as webhook_rows
from whatsdex.web.api.admin import Before, PageSize, audit_page, invite_url
from whatsdex.web.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    AuditPage,
    Identity,
    InvitationCreate,
    InvitationCreated,
    InvitationOut,
    Me,
    PlanOut,
    PlanUsage,
    TenantOut,
    limit_rows,
)
from whatsdex.web.auth import client_ip, principal_of, requires_member, requires_owner, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)


async def _numbers(db: Store, tenant_id: str) -> int:
    return len(await wa_sessions.list_for_tenant(db, tenant_id))


# How much of each plan limit a tenant uses, keyed by limit name. Add a counter here as each
# resource arrives (contacts, campaigns, webhooks, messages per day); absent ones show null.
USAGE_COUNTERS: dict[str, Callable[[Store, str], Awaitable[int]]] = {
    "max_numbers": _numbers,
    "max_contacts": contact_lists.count_async,
    "max_webhooks": webhook_rows.count,
}


async def plan_usage(services: Services, tenant_id: str) -> PlanUsage:
    tenant = await get_tenant(services.store, tenant_id)
    plan = await plan_store.get_plan(services.store, tenant.plan_id)
    if plan is None:
        raise NotFound("Plan not found")
    used = {limit: await count(services.store, tenant_id)
            for limit, count in USAGE_COUNTERS.items()}
    keys = await key_store.list_keys(services.store, tenant_id)
    invites = await link_store.list_links(services.store, tenant_id, "invite")
    stamp = iso(services.clock())
    return PlanUsage(
        plan=PlanOut.of(plan),
        limits=limit_rows(plan, used),
        users=len(await user_store.list_tenant_users(services.store, tenant_id)),
        active_api_keys=sum(k.revoked_at is None for k in keys),
        pending_invitations=sum(i.used_at is None and i.revoked_at is None
                                and i.expires_at > stamp for i in invites),
    )


async def revoke_invite(services: Services, request: AnyRequest, invitation_id: str) -> None:
    """Revoke one of the caller's tenant's invitations (not another kind of link)."""
    tenant_id = tenant_id_of(request)
    invites = await link_store.list_links(services.store, tenant_id, "invite")
    if not any(i.id == invitation_id for i in invites):
        raise NotFound("Invitation not found")
    await links.revoke(services.store, principal_of(request), tenant_id, invitation_id,
                       now=services.clock(), ip=client_ip(request))


@get("/me", tags=["Workspace"], summary="Who am I",
     description="The calling key (name, role), its tenant, and the tenant's plan with limits.")
async def me(request: AnyRequest, services: ServicesDep) -> Me:
    caller = principal_of(request)
    tenant_id = tenant_id_of(request)
    tenant = await get_tenant(services.store, tenant_id)
    plan = await plan_store.get_plan(services.store, tenant.plan_id)
    if plan is None:
        raise NotFound("Plan not found")
    name = caller.label
    if caller.kind == "api_key":
        keys = await key_store.list_keys(services.store, tenant_id)
        name = next((k.name for k in keys if k.id == caller.id), name)
    return Me(identity=Identity(kind=caller.kind, id=caller.id, name=name, role=caller.role),
              tenant=TenantOut.of(tenant), plan=PlanOut.of(plan))


@get("/plan", tags=["Workspace"], summary="Plan limits and current usage",
     description="`used` is null for resources not counted yet.")
async def plan(request: AnyRequest, services: ServicesDep) -> PlanUsage:
    return await plan_usage(services, tenant_id_of(request))


@get("/api-keys", tags=["API keys"], guards=[requires_owner], summary="List API keys",
     description="Owners only. Keys are never shown again after creation: only their prefix.")
async def list_keys(request: AnyRequest, services: ServicesDep) -> list[ApiKeyOut]:
    keys = await key_store.list_keys(services.store, tenant_id_of(request))
    return [ApiKeyOut.of(k) for k in keys]


@post("/api-keys", tags=["API keys"], guards=[requires_owner], summary="Create an API key",
      description="Owners only. `role` owner manages the workspace, member only uses it. The key "
                  "is in this response once and never again.")
async def create_key(request: AnyRequest, services: ServicesDep, data: JSONBody[ApiKeyCreate]
                     ) -> ApiKeyCreated:
    key, secret = await apikeys.create_key(
        services.store, principal_of(request), tenant_id_of(request), name=data.name,
        role=data.role, now=services.clock(), ip=client_ip(request))
    return ApiKeyCreated.issued(key, secret)


@delete("/api-keys/{key_id:str}", tags=["API keys"], guards=[requires_owner],
        summary="Revoke an API key", description="Owners only. Takes effect immediately.")
async def revoke_key(request: AnyRequest, services: ServicesDep, key_id: FromPath[str]) -> None:
    await apikeys.revoke_key(services.store, principal_of(request), tenant_id_of(request),
                             key_id, now=services.clock(), ip=client_ip(request))


@get("/invitations", tags=["Users"], guards=[requires_owner], summary="List invitations",
     description="Owners only. Newest first, with their status.")
async def list_invitations(request: AnyRequest, services: ServicesDep) -> list[InvitationOut]:
    found = await link_store.list_links(services.store, tenant_id_of(request), "invite")
    now = services.clock()
    return [InvitationOut.of(link, now) for link in found]


@post("/invitations", tags=["Users"], guards=[requires_owner], summary="Invite a user",
      description="Owners only. Returns a one-time link (valid 72 hours) to send to the "
                  "invitee, who picks a password there.")
async def invite(request: AnyRequest, services: ServicesDep, data: JSONBody[InvitationCreate]
                 ) -> InvitationCreated:
    link, token = await users.invite(
        services.store, principal_of(request), tenant_id_of(request), email=data.email,
        role=data.role, now=services.clock(), ip=client_ip(request))
    return InvitationCreated(id=link.id, email=link.subject, role=link.role or data.role,
                             url=invite_url(services, token), expires_at=link.expires_at)


@delete("/invitations/{invitation_id:str}", tags=["Users"], guards=[requires_owner],
        summary="Revoke an invitation", description="Owners only. The link stops working.")
async def revoke_invitation(request: AnyRequest, services: ServicesDep, invitation_id: FromPath[str]
                            ) -> None:
    await revoke_invite(services, request, invitation_id)


@get("/audit", tags=["Audit"], guards=[requires_owner], summary="This workspace's audit log",
     description="Owners only. Newest first; pass `next_before` as `before` for the next page.")
async def audit(request: AnyRequest, services: ServicesDep, before: Before = None,
                limit: PageSize = 50) -> AuditPage:
    return await audit_page(services, tenant_id_of(request), before, limit)


ROUTES: list[Any] = [
    Router(
        path="/api/v1",
        route_handlers=[me, plan, list_keys, create_key, revoke_key, list_invitations, invite,
                        revoke_invitation, audit],
        guards=[requires_member],
        security=[{"apiKey": []}],
    )
]
