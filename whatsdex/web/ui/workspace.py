"""A workspace's settings pages (`/settings`): users and invitations, API keys, audit, plan.

Owners manage everything here; members only see the plan. Mutations are HTMX requests answered
with the partial they change (`workspace/_*.html`); failures become toasts (web/errors.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from whatsdex.clock import iso
from whatsdex.identity import apikeys, users
from whatsdex.identity.tenants import get_tenant
from whatsdex.services import Services
from whatsdex.store import apikeys as key_store
from whatsdex.store import links as link_store
from whatsdex.store import users as user_store
from whatsdex.store.records import ApiKey, LinkToken
from whatsdex.web.api.admin import audit_page, invite_url
from whatsdex.web.api.schemas import AuditPage, InvitationCreated
from whatsdex.web.api.workspace import plan_usage, revoke_invite
from whatsdex.web.auth import client_ip, principal_of, requires_member, requires_owner, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Cursor = Annotated[int | None, QueryParameter(ge=1)]
AUDIT_PAGE = 50
KEYS = "/settings/api-keys"


# -- Helpers shared with the operator pages ----------------------------------------------------

def is_htmx(request: AnyRequest) -> bool:
    return request.headers.get("hx-request") == "true"


def go(request: AnyRequest, url: str) -> Response[Any]:
    """After a change that leaves the page: HTMX follows HX-Redirect, a plain form a 303."""
    if is_htmx(request):
        return Response(content=b"", status_code=200, headers={"HX-Redirect": url})
    return Redirect(path=url, status_code=303)


def text(form: FormMultiDict, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def partial(name: str, **context: Any) -> Template:
    return Template(template_name=name, context=context)


def page(request: AnyRequest, name: str, **context: Any) -> Template:
    return Template(template_name=name, context={"me": principal_of(request), **context})


async def audit_rows(request: AnyRequest, services: Services, tenant_id: str | None,
                     before: int | None, url: str, *, full_page: str, **context: Any
                     ) -> Template:
    """The audit table: the whole page, or (HTMX "load more") only the next rows."""
    found: AuditPage = await audit_page(services, tenant_id, before, AUDIT_PAGE,
                                        all_tenants=tenant_id is None)
    more = f"{url}{'&' if '?' in url else '?'}before={found.next_before}"
    rows = {"entries": found.items, "more_url": more if found.next_before else None, **context}
    if before is not None and is_htmx(request):
        return partial("workspace/_audit_rows.html", **rows)
    return page(request, full_page, **rows)


# -- Users and invitations ---------------------------------------------------------------------

async def _pending(services: Services, tenant_id: str) -> list[LinkToken]:
    now = iso(services.clock())
    return [link for link in await link_store.list_links(services.store, tenant_id, "invite")
            if link.used_at is None and link.revoked_at is None and link.expires_at > now]


async def _invitations(request: AnyRequest, services: Services,
                       created: InvitationCreated | None = None) -> Template:
    pending = await _pending(services, tenant_id_of(request))
    return partial("workspace/_invitations.html", invitations=pending, created=created)


@get("/users", summary="Members and invitations")
async def users_page(request: AnyRequest, services: ServicesDep) -> Template:
    tenant_id = tenant_id_of(request)
    return page(request, "workspace/users.html", tenant=await get_tenant(services.store, tenant_id),
                members=await user_store.list_tenant_users(services.store, tenant_id),
                invitations=await _pending(services, tenant_id), created=None)


@post("/invitations", summary="Invite a user")
async def invite(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    link, token = await users.invite(
        services.store, principal_of(request), tenant_id_of(request), email=text(form, "email"),
        role=text(form, "role") or "member", now=services.clock(), ip=client_ip(request))
    created = InvitationCreated(id=link.id, email=link.subject, role=link.role or "member",
                                url=invite_url(services, token), expires_at=link.expires_at)
    return await _invitations(request, services, created)


@delete("/invitations/{invitation_id:str}", status_code=200, summary="Revoke an invitation")
async def revoke_invitation(request: AnyRequest, services: ServicesDep, invitation_id: FromPath[str]
                            ) -> Template:
    await revoke_invite(services, request, invitation_id)
    return await _invitations(request, services)


@patch("/users/{user_id:str}", summary="Change a user's role")
async def change_role(request: AnyRequest, services: ServicesDep,
                      user_id: FromPath[str]) -> Template:
    tenant_id = tenant_id_of(request)
    form = await request.form()
    await users.change_role(services.store, principal_of(request), tenant_id, user_id,
                            role=text(form, "role"), now=services.clock(), ip=client_ip(request))
    member = next(u for u in await user_store.list_tenant_users(services.store, tenant_id)
                  if u.id == user_id)
    return partial("workspace/_user_row.html", member=member, me=principal_of(request),
                   notice=f"{member.email} is now {member.role}")


@delete("/users/{user_id:str}", status_code=200, summary="Remove a user")
async def remove_user(request: AnyRequest, services: ServicesDep,
                      user_id: FromPath[str]) -> Template:
    await users.remove_user(services.store, principal_of(request), tenant_id_of(request), user_id,
                            now=services.clock(), ip=client_ip(request))
    # The row disappears (empty swap); the toast says what happened.
    return partial("workspace/_notice.html", notice="User removed")


# -- API keys ----------------------------------------------------------------------------------

async def key_context(services: Services, tenant_id: str | None, base: str,
                      new: tuple[ApiKey, str] | None = None) -> dict[str, Any]:
    """What the keys card needs (tenant or operator keys); a new key is shown this once."""
    return {
        "keys": await key_store.list_keys(services.store, tenant_id),
        "base": base,
        "roles": ("owner", "member") if tenant_id else (),
        "new_key": new[0] if new else None,
        "new_secret": new[1] if new else None,
    }


@get("/api-keys", summary="API keys")
async def keys_page(request: AnyRequest, services: ServicesDep) -> Template:
    context = await key_context(services, tenant_id_of(request), KEYS)
    return page(request, "workspace/api_keys.html", **context)


@post("/api-keys", summary="Create an API key")
async def create_key(request: AnyRequest, services: ServicesDep) -> Template:
    tenant_id = tenant_id_of(request)
    form = await request.form()
    new = await apikeys.create_key(services.store, principal_of(request), tenant_id,
                                   name=text(form, "name"), role=text(form, "role") or "member",
                                   now=services.clock(), ip=client_ip(request))
    return partial("workspace/_api_keys.html", **await key_context(services, tenant_id, KEYS, new))


@delete("/api-keys/{key_id:str}", status_code=200, summary="Revoke an API key")
async def revoke_key(request: AnyRequest, services: ServicesDep, key_id: FromPath[str]) -> Template:
    tenant_id = tenant_id_of(request)
    await apikeys.revoke_key(services.store, principal_of(request), tenant_id, key_id,
                             now=services.clock(), ip=client_ip(request))
    return partial("workspace/_api_keys.html", **await key_context(services, tenant_id, KEYS))


# -- Audit and plan ----------------------------------------------------------------------------

@get("/audit", summary="Audit log")
async def audit(request: AnyRequest, services: ServicesDep, before: Cursor = None) -> Template:
    return await audit_rows(request, services, tenant_id_of(request), before, "/settings/audit",
                            full_page="workspace/audit.html", show_tenant=False)


@get("/plan", summary="Plan and usage")
async def plan(request: AnyRequest, services: ServicesDep) -> Template:
    tenant_id = tenant_id_of(request)
    return page(request, "workspace/plan.html", usage=await plan_usage(services, tenant_id),
                tenant=await get_tenant(services.store, tenant_id))


# Every page needs a tenant identity; all but the plan page need an owner.
_OWNER_PAGES = Router(path="/", guards=[requires_owner], route_handlers=[
    users_page, invite, revoke_invitation, change_role, remove_user,
    keys_page, create_key, revoke_key, audit,
])

ROUTES: list[Any] = [
    Router(path="/settings", route_handlers=[_OWNER_PAGES, plan], guards=[requires_member],
           include_in_schema=False),
]
