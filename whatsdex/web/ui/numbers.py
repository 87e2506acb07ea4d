"""The tenant's numbers in the dashboard: the list with live badges, one number's page with its
QR code / pairing code, actions, history, client links and (sandbox) a simulated phone.

Pages stay current by themselves: `/ui/events` streams the tenant's bus as ready-to-swap rows
(list) and as triggers (a number's panel and QR re-fetch themselves); every live part also
polls, answering 204 when nothing changed, so a dropped stream costs seconds, not correctness.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage, Template

from whatsdex.bus import BusEvent
from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Conflict, LimitReached, NotFound, WhatsdexError
from whatsdex.identity import logins
from whatsdex.identity.tenants import get_tenant
from whatsdex.services import Services
from whatsdex.sessions.qr import qr_svg
from whatsdex.store import wa_sessions
from whatsdex.store.records import WaSession
from whatsdex.web.api import sandbox as sandbox_api
from whatsdex.web.api import sessions as ops
from whatsdex.web.api.events import event_stream, sse
from whatsdex.web.api.session_schemas import ClientLinkCreated
from whatsdex.web.auth import (
    SESSION_COOKIE,
    client_ip,
    principal_of,
    requires_member,
    requires_owner,
    tenant_id_of,
)
from whatsdex.web.ui.workspace import go, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Seen = Annotated[str, QueryParameter(description="What the page shows now", max_length=64)]

HISTORY_ROWS = 20
LINK_TTLS = ((1, "1 hour"), (24, "24 hours"), (72, "3 days"), (168, "7 days"), (720, "30 days"))
DELETED = "<!-- deleted -->"  # an SSE event needs data; this swaps a row away


# -- What the templates need -------------------------------------------------------------------

def qr_context(services: Services, tenant_id: str, row: WaSession) -> dict[str, str] | None:
    """The QR code to show now, or None when the number is not offering one."""
    if row.status != "pairing":
        return None
    try:
        code, expires_at = ops.current_qr(services, tenant_id, row.id)
    except Conflict:
        return None
    left = max(0, round(expires_at - services.clock()))
    return {"svg": qr_svg(code), "expires_at": iso(expires_at), "seconds": str(left)}


def unchanged(request: AnyRequest, seen: str, current: str) -> bool:
    """A poll that finds what the page already shows: answer 204, htmx keeps the page."""
    return request.headers.get("hx-request") == "true" and bool(seen) and seen == current


def no_change() -> Response[bytes]:
    return Response(b"", status_code=204)


def inline_error(target: str, exc: WhatsdexError) -> Template:
    """A form's failure shown next to it (app.js swaps 4xx answers that carry HX-Retarget)."""
    headers = {"HX-Retarget": target, "HX-Reswap": "innerHTML"}
    if isinstance(exc, LimitReached) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return Template(template_name="numbers/_inline_error.html", context={"message": exc.message},
                    status_code=exc.status_code, headers=headers)


def _manage(request: AnyRequest) -> bool:
    return principal_of(request).at_least("owner")


async def _panel_context(request: AnyRequest, services: Services, row: WaSession
                         ) -> dict[str, Any]:
    tenant_id = tenant_id_of(request)
    return {
        "n": row,
        "manage": _manage(request),
        "base": f"/numbers/{row.id}",
        "qr": qr_context(services, tenant_id, row),
        "qr_trigger": f"sse:qr-{row.id}",
        "history": await wa_sessions.history(services.store, tenant_id, row.id, HISTORY_ROWS),
    }


async def _panel(request: AnyRequest, services: Services, session_id: str, notice: str = ""
                 ) -> Template:
    row = await ops.get_session(services, tenant_id_of(request), session_id)
    return partial("numbers/_panel.html", notice=notice,
                   **await _panel_context(request, services, row))


async def _links_context(services: Services, tenant_id: str, session_id: str,
                         created: ClientLinkCreated | None = None) -> dict[str, Any]:
    """The client links card: the active links, and a new link's URL this once."""
    found = await ops.client_links(services, tenant_id, session_id)
    now = services.clock()
    return {"n_id": session_id, "links": [link for link in found if ops.link_active(link, now)],
            "created": created, "ttls": LINK_TTLS}


async def _links_card(request: AnyRequest, services: Services, session_id: str,
                      created: ClientLinkCreated | None = None) -> Template:
    context = await _links_context(services, tenant_id_of(request), session_id, created)
    return partial("numbers/_client_links.html", **context)


# -- The list ----------------------------------------------------------------------------------

@get("/numbers")
async def numbers_page(request: AnyRequest, services: ServicesDep) -> Template:
    tenant_id = tenant_id_of(request)
    return page(request, "numbers/list.html", manage=_manage(request),
                tenant=await get_tenant(services.store, tenant_id),
                numbers=await wa_sessions.list_for_tenant(services.store, tenant_id))


@get("/numbers/rows")
async def number_rows(request: AnyRequest, services: ServicesDep) -> Template:
    rows = await wa_sessions.list_for_tenant(services.store, tenant_id_of(request))
    return partial("numbers/_rows.html", numbers=rows)


@post("/numbers", guards=[requires_owner])
async def create_number(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    form = await request.form()
    row = await ops.supervisor_of(services).create(
        tenant_id_of(request), principal_of(request), name=text(form, "name"),
        ip=client_ip(request))
    return go(request, f"/numbers/{row.id}")


# -- One number --------------------------------------------------------------------------------

@get("/numbers/{session_id:str}")
async def number_page(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                      ) -> Template:
    row = await ops.get_session(services, tenant_id_of(request), session_id)
    context = await _panel_context(request, services, row)
    if context["manage"]:
        context.update(await _links_context(services, row.tenant_id, row.id))
    return page(request, "numbers/number.html", notice="", **context)


async def _live_row(request: AnyRequest, services: Services, session_id: str
                    ) -> WaSession | Response[Any]:
    """The number a live part of its page shows; once deleted, the page goes to the list."""
    try:
        return await ops.get_session(services, tenant_id_of(request), session_id)
    except NotFound:
        if request.headers.get("hx-request") == "true":
            return go(request, "/numbers")
        raise


@get("/numbers/{session_id:str}/panel")
async def number_panel(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                       seen: Seen = "") -> Response[Any]:
    row = await _live_row(request, services, session_id)
    if isinstance(row, Response):
        return row
    if unchanged(request, seen, row.updated_at):
        return no_change()
    return partial("numbers/_panel.html", notice="",
                   **await _panel_context(request, services, row))


@get("/numbers/{session_id:str}/qr")
async def number_qr(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                    seen: Seen = "") -> Response[Any]:
    row = await _live_row(request, services, session_id)
    if isinstance(row, Response):
        return row
    qr = qr_context(services, row.tenant_id, row)
    if unchanged(request, seen, qr["expires_at"] if qr else "none"):
        return no_change()
    return partial("numbers/_qr.html", base=f"/numbers/{row.id}", qr=qr,
                   qr_trigger=f"sse:qr-{row.id}")


@post("/numbers/{session_id:str}/pairing-code", guards=[requires_owner], status_code=200)
async def number_pairing_code(request: AnyRequest, services: ServicesDep,
                              session_id: FromPath[str]) -> Template:
    phone = text(await request.form(), "phone")
    try:
        code = await ops.request_pairing_code(services, principal_of(request),
                                              tenant_id_of(request), session_id, phone,
                                              client_ip(request))
    except (BadRequest, Conflict) as exc:
        return inline_error("#pairing-result", exc)
    return partial("numbers/_pairing_code.html", code=code, phone=phone)


@post("/numbers/{session_id:str}/start", guards=[requires_owner], status_code=200)
async def start_number(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                       ) -> Template:
    await ops.start_number(services, principal_of(request), tenant_id_of(request), session_id,
                           client_ip(request))
    return await _panel(request, services, session_id, "Starting the number")


@post("/numbers/{session_id:str}/stop", guards=[requires_owner], status_code=200)
async def stop_number(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                      ) -> Template:
    await ops.stop_number(services, principal_of(request), tenant_id_of(request), session_id,
                          client_ip(request))
    return await _panel(request, services, session_id, "Number stopped")


@post("/numbers/{session_id:str}/logout", guards=[requires_owner], status_code=200)
async def logout_number(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                        ) -> Template:
    await ops.logout_number(services, principal_of(request), tenant_id_of(request), session_id,
                            client_ip(request))
    return await _panel(request, services, session_id, "Number logged out")


@delete("/numbers/{session_id:str}", guards=[requires_owner], status_code=200)
async def delete_number(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                        ) -> Response[Any]:
    await ops.delete_number(services, principal_of(request), tenant_id_of(request), session_id,
                            client_ip(request))
    return go(request, "/numbers")


@post("/numbers/{session_id:str}/client-links", guards=[requires_owner], status_code=200)
async def create_client_link(request: AnyRequest, services: ServicesDep,
                             session_id: FromPath[str]) -> Template:
    raw = text(await request.form(), "ttl_hours") or "24"
    if raw not in {str(hours) for hours, _ in LINK_TTLS}:
        raise BadRequest("Choose how long the link works", {"field": "ttl_hours"})
    created = await ops.create_client_link(services, principal_of(request),
                                           tenant_id_of(request), session_id, int(raw),
                                           client_ip(request))
    return await _links_card(request, services, session_id, created)


@delete("/numbers/{session_id:str}/client-links/{link_id:str}", guards=[requires_owner],
        status_code=200)
async def revoke_client_link(request: AnyRequest, services: ServicesDep,
                             session_id: FromPath[str], link_id: FromPath[str]) -> Template:
    await ops.revoke_client_link(services, principal_of(request), tenant_id_of(request),
                                 session_id, link_id, client_ip(request))
    return await _links_card(request, services, session_id)


# -- The simulated phone (sandbox engine only) -------------------------------------------------

@post("/numbers/{session_id:str}/sandbox/scan", guards=[requires_owner], status_code=200)
async def sandbox_scan(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                       ) -> Template:
    phone = text(await request.form(), "phone")
    try:
        await sandbox_api.control(services, principal_of(request), tenant_id_of(request),
                                  session_id, "scan", client_ip(request), phone=phone)
    except (BadRequest, Conflict) as exc:
        return inline_error("#sandbox-result", exc)
    return partial("workspace/_notice.html", notice=f"Sandbox: scanned with {phone}")


@post("/numbers/{session_id:str}/sandbox/inbound", guards=[requires_owner], status_code=200)
async def sandbox_inbound(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                          ) -> Template:
    form = await request.form()
    sender, message = text(form, "from"), text(form, "text")
    if not message.strip():
        return inline_error("#sandbox-result", BadRequest("Type the message text"))
    try:
        await sandbox_api.control(services, principal_of(request), tenant_id_of(request),
                                  session_id, "inbound", client_ip(request), sender=sender,
                                  text=message, count=1)
    except (BadRequest, Conflict) as exc:
        return inline_error("#sandbox-result", exc)
    return partial("workspace/_notice.html", notice=f"Sandbox: {sender} sent a message")


# -- Live updates --------------------------------------------------------------------------------

def render_fragment(request: AnyRequest, name: str, **context: Any) -> str:
    engine = request.app.template_engine
    assert engine is not None
    html: str = engine.get_template(name).render(**context)
    return html


@get("/ui/events")
async def ui_events(request: AnyRequest, services: ServicesDep) -> ServerSentEvent:
    """The tenant's events for open pages: list rows to swap in, triggers for the rest."""
    tenant_id = tenant_id_of(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    async def render(event: BusEvent) -> ServerSentEventMessage | None:
        session_id = str(event.data.get("id", ""))
        if event.type == "session.status":
            if event.data.get("previous") == "new":  # no row on the page yet: fetch the list
                return ServerSentEventMessage(event="number-added", data=session_id)
            row = await wa_sessions.get(services.store, tenant_id, session_id)
            if row is None:
                return None
            html = render_fragment(request, "numbers/_row.html", n=row)
            return ServerSentEventMessage(event=f"session-{session_id}", data=html)
        if event.type == "session.qr":
            return ServerSentEventMessage(event=f"qr-{session_id}",
                                          data=str(event.data.get("expires_at", "")))
        if event.type == "session.deleted":
            return ServerSentEventMessage(event=f"deleted-{session_id}", data=DELETED)
        return None

    async def still_allowed() -> bool:
        try:
            session = await logins.resolve(services.store, cookie, now=services.clock(),
                                           limits=services.session_limits)
        except WhatsdexError:  # the workspace was suspended
            return False
        return session is not None and session.principal.tenant_id == tenant_id

    return sse(event_stream(services.bus, tenant_id, render, still_allowed))


ROUTES: list[Any] = [
    Router(path="/", guards=[requires_member], include_in_schema=False, route_handlers=[
        numbers_page, number_rows, create_number, number_page, number_panel, number_qr,
        number_pairing_code, start_number, stop_number, logout_number, delete_number,
        create_client_link, revoke_client_link, sandbox_scan, sandbox_inbound, ui_events,
    ]),
]
