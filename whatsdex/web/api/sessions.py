"""Linked numbers ("sessions") in the JSON API: create, read, QR / pairing code, start, stop,
log out, delete, and the one-purpose client links that show a number's QR to a client.

The supervisor owns the state machine; these handlers check who asks, call it, and audit what
the supervisor does not. The dashboard pages call the same operations (`ui/numbers.py`).
"""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request, Response, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from whatsdex.clock import iso
from whatsdex.errors import NotFound, Unavailable
from whatsdex.identity import audit, links
from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.sessions.qr import qr_svg
from whatsdex.sessions.supervisor import Supervisor
from whatsdex.store import links as link_store
from whatsdex.store import wa_sessions
from whatsdex.store.records import LinkToken, WaSession
from whatsdex.web.api.session_schemas import (
    ClientLinkCreate,
    ClientLinkCreated,
    ClientLinkOut,
    ErrorOut,
    PairingCodeOut,
    PairingCodeRequest,
    QrOut,
    SessionCreate,
    SessionCreated,
    SessionOut,
    TransitionOut,
)
from whatsdex.web.auth import client_ip, principal_of, requires_member, requires_owner, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
SVG = "image/svg+xml"
NO_STORE = {"Cache-Control": "no-store"}
HISTORY_LIMIT = 100


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers a handler may give, for the API docs."""
    described = {
        403: "Not allowed for this key's role, or a plan limit (named in `message`)",
        404: "No such number in this workspace",
        409: "Not possible in the number's current status (in `detail.status`)",
        503: "The engine host is restarting: try again in a few seconds",
    }
    return {code: ResponseSpec(data_container=ErrorOut, description=described[code],
                               generate_examples=False) for code in codes}


# -- Operations shared with the dashboard ------------------------------------------------------

def supervisor_of(services: Services) -> Supervisor:
    if services.supervisor is None:
        raise Unavailable("WhatsDeX is starting: try again in a moment")
    return services.supervisor


async def get_session(services: Services, tenant_id: str, session_id: str) -> WaSession:
    row = await wa_sessions.get(services.store, tenant_id, session_id)
    if row is None:
        raise NotFound("Session not found")
    return row


async def audit_number(services: Services, actor: Principal, tenant_id: str, action: str,
                       session_id: str, ip: str, detail: dict[str, Any] | None = None) -> None:
    """Audit what the supervisor does not audit itself (start, stop, pairing codes, sandbox)."""
    stamp = iso(services.clock())
    await services.store.write(lambda conn: audit.record(
        conn, actor, action, at=stamp, tenant_id=tenant_id, object_type="number",
        object_id=session_id, detail=detail, ip=ip))


async def start_number(services: Services, actor: Principal, tenant_id: str, session_id: str,
                       ip: str = "") -> WaSession:
    await supervisor_of(services).start_session(tenant_id, session_id)
    await audit_number(services, actor, tenant_id, "number.started", session_id, ip)
    return await get_session(services, tenant_id, session_id)


async def stop_number(services: Services, actor: Principal, tenant_id: str, session_id: str,
                      ip: str = "") -> WaSession:
    await supervisor_of(services).stop_session(tenant_id, session_id)
    await audit_number(services, actor, tenant_id, "number.stopped", session_id, ip)
    return await get_session(services, tenant_id, session_id)


async def logout_number(services: Services, actor: Principal, tenant_id: str, session_id: str,
                        ip: str = "") -> WaSession:
    await supervisor_of(services).logout(tenant_id, session_id, actor, ip)
    return await get_session(services, tenant_id, session_id)


async def delete_number(services: Services, actor: Principal, tenant_id: str, session_id: str,
                        ip: str = "") -> None:
    await supervisor_of(services).delete(tenant_id, session_id, actor, ip)
    # Its client links would only show "not found" now: make them say so in the list too.
    for link in await client_links(services, tenant_id, session_id):
        if link.revoked_at is None:
            await links.revoke(services.store, actor, tenant_id, link.id, now=services.clock(),
                               ip=ip)


async def request_pairing_code(services: Services, actor: Principal, tenant_id: str,
                               session_id: str, phone: str, ip: str = "") -> str:
    code = await supervisor_of(services).pairing_code(tenant_id, session_id, phone)
    digits = "".join(ch for ch in phone if ch.isdigit())
    # Who asked to link which phone matters later; the full number is personal data.
    await audit_number(services, actor, tenant_id, "number.pairing_code", session_id, ip,
                       {"phone_ending": digits[-4:]})
    return code


def current_qr(services: Services, tenant_id: str, session_id: str) -> tuple[str, float]:
    """The QR text to show and when it expires (409 when the number is not pairing)."""
    return supervisor_of(services).current_qr(tenant_id, session_id)


def link_active(link: LinkToken, now: float) -> bool:
    return link.revoked_at is None and link.expires_at > iso(now)


async def client_links(services: Services, tenant_id: str, session_id: str) -> list[LinkToken]:
    found = await link_store.list_links(services.store, tenant_id, "client_link")
    return [link for link in found if link.subject == session_id]


def client_link_url(services: Services, token: str) -> str:
    return f"{services.settings.base_url}/link/{token}"


async def create_client_link(services: Services, actor: Principal, tenant_id: str,
                             session_id: str, ttl_hours: int, ip: str = ""
                             ) -> ClientLinkCreated:
    await get_session(services, tenant_id, session_id)
    link, token = await links.create_client_link(
        services.store, actor, tenant_id, session_id, now=services.clock(),
        ttl_seconds=ttl_hours * 3600, ip=ip)
    return ClientLinkCreated(id=link.id, url=client_link_url(services, token),
                             expires_at=link.expires_at)


async def revoke_client_link(services: Services, actor: Principal, tenant_id: str,
                             session_id: str, link_id: str, ip: str = "") -> None:
    await get_session(services, tenant_id, session_id)
    if not any(link.id == link_id for link in await client_links(services, tenant_id, session_id)):
        raise NotFound("Client link not found")
    await links.revoke(services.store, actor, tenant_id, link_id, now=services.clock(), ip=ip)


# -- Handlers ----------------------------------------------------------------------------------

@post("/", guards=[requires_owner], summary="Add a number",
      description="Owners only. The number starts offering QR codes at once: fetch "
                  "`GET /sessions/{id}/qr`, or ask for a pairing code. Counts against the "
                  "plan's linked numbers.",
      responses=error_responses(403))
async def create_session(request: AnyRequest, services: ServicesDep,
                         data: JSONBody[SessionCreate]) -> SessionCreated:
    row = await supervisor_of(services).create(
        tenant_id_of(request), principal_of(request), name=data.name, ip=client_ip(request))
    return SessionCreated(id=row.id, name=row.name, status=row.status)  # type: ignore[arg-type]


@get("/", summary="List numbers", description="Every number of this workspace, oldest first.")
async def list_sessions(request: AnyRequest, services: ServicesDep) -> list[SessionOut]:
    rows = await wa_sessions.list_for_tenant(services.store, tenant_id_of(request))
    return [SessionOut.of(row) for row in rows]


@get("/{session_id:str}", summary="A number",
     description="Its status with the reason, and who it is on WhatsApp once linked.",
     responses=error_responses(404))
async def read_session(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                       ) -> SessionOut:
    return SessionOut.of(await get_session(services, tenant_id_of(request), session_id))


@get("/{session_id:str}/history", summary="Status history",
     description=f"Every transition with its reason, newest first (at most {HISTORY_LIMIT}).",
     responses=error_responses(404))
async def session_history(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                          ) -> list[TransitionOut]:
    tenant_id = tenant_id_of(request)
    await get_session(services, tenant_id, session_id)
    rows = await wa_sessions.history(services.store, tenant_id, session_id, HISTORY_LIMIT)
    return [TransitionOut.of(row) for row in rows]


@get("/{session_id:str}/qr", summary="The QR code to scan",
     description="JSON by default; with `Accept: image/svg+xml` the QR code as an SVG image. "
                 "Codes rotate (every 20 s after the first minute): fetch again after "
                 "`expires_at`, or on the `session.qr` event. 409 when the number is not "
                 "waiting for a scan.",
     responses={200: ResponseSpec(data_container=QrOut, description="The current code (JSON), "
                                  f"or `{SVG}` when asked for"), **error_responses(404, 409)})
async def session_qr(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                     ) -> Response[Any]:
    code, expires_at = current_qr(services, tenant_id_of(request), session_id)
    if request.accept.best_match([MediaType.JSON, SVG], default=MediaType.JSON) == SVG:
        return Response(qr_svg(code), media_type=SVG, headers=NO_STORE)
    return Response(QrOut(qr=code, expires_at=iso(expires_at)), headers=NO_STORE)


@post("/{session_id:str}/pairing-code", guards=[requires_owner], status_code=200,
      summary="Link with a phone number instead of a QR code",
      description="Owners only. While the number offers QR codes: type the returned code on the "
                  "phone (WhatsApp → Settings → Linked devices → Link a device → Link with phone "
                  "number instead).", responses=error_responses(404, 409, 503))
async def session_pairing_code(request: AnyRequest, services: ServicesDep,
                               session_id: FromPath[str], data: JSONBody[PairingCodeRequest]
                               ) -> PairingCodeOut:
    code = await request_pairing_code(services, principal_of(request), tenant_id_of(request),
                                      session_id, data.phone, client_ip(request))
    return PairingCodeOut(code=code)


@post("/{session_id:str}/start", guards=[requires_owner], status_code=202,
      summary="Start (connect) a number",
      description="Owners only. Connects it again, or offers new QR codes when it is not linked; "
                  "the status follows (see `GET /events`).", responses=error_responses(404, 503))
async def start_session(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                        ) -> SessionOut:
    return SessionOut.of(await start_number(services, principal_of(request),
                                            tenant_id_of(request), session_id,
                                            client_ip(request)))


@post("/{session_id:str}/stop", guards=[requires_owner], status_code=200, summary="Stop a number",
      description="Owners only. Disconnects it and keeps it linked: start it again any time.",
      responses=error_responses(404))
async def stop_session(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                       ) -> SessionOut:
    return SessionOut.of(await stop_number(services, principal_of(request), tenant_id_of(request),
                                           session_id, client_ip(request)))


@post("/{session_id:str}/logout", guards=[requires_owner], status_code=200,
      summary="Log a number out (unlink it)",
      description="Owners only. Removes this device from the phone and destroys its credentials: "
                  "linking again needs a new scan.", responses=error_responses(404))
async def logout_session(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                         ) -> SessionOut:
    return SessionOut.of(await logout_number(services, principal_of(request),
                                             tenant_id_of(request), session_id,
                                             client_ip(request)))


@delete("/{session_id:str}", guards=[requires_owner], summary="Delete a number",
        description="Owners only. Logs it out if linked, then deletes it with its history and "
                    "client links.", responses=error_responses(404))
async def delete_session(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                         ) -> None:
    await delete_number(services, principal_of(request), tenant_id_of(request), session_id,
                        client_ip(request))


@post("/{session_id:str}/client-links", guards=[requires_owner],
      summary="Create a client link",
      description="Owners only. A page (no sign-in) that shows only this number's QR code, "
                  "pairing code and status, for the client whose phone it is. The URL is in "
                  "this answer once; it expires after `ttl_hours`.", responses=error_responses(404))
async def create_link(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                      data: JSONBody[ClientLinkCreate]) -> ClientLinkCreated:
    return await create_client_link(services, principal_of(request), tenant_id_of(request),
                                    session_id, data.ttl_hours, client_ip(request))


@get("/{session_id:str}/client-links", guards=[requires_owner], summary="List client links",
     description="Owners only. Newest first, without their URLs.", responses=error_responses(404))
async def list_links(request: AnyRequest, services: ServicesDep, session_id: FromPath[str]
                     ) -> list[ClientLinkOut]:
    tenant_id = tenant_id_of(request)
    await get_session(services, tenant_id, session_id)
    now = services.clock()
    return [ClientLinkOut.of(link, now)
            for link in await client_links(services, tenant_id, session_id)]


@delete("/{session_id:str}/client-links/{link_id:str}", guards=[requires_owner],
        summary="Revoke a client link", description="Owners only. The page stops working at once.",
        responses=error_responses(404))
async def revoke_link(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                      link_id: FromPath[str]) -> None:
    await revoke_client_link(services, principal_of(request), tenant_id_of(request), session_id,
                             link_id, client_ip(request))


ROUTES: list[Any] = [
    Router(
        path="/api/v1/sessions",
        route_handlers=[create_session, list_sessions, read_session, session_history, session_qr,
                        session_pairing_code, start_session, stop_session, logout_session,
                        delete_session, create_link, list_links, revoke_link],
        guards=[requires_member],
        security=[{"apiKey": []}],
        tags=["Sessions (linked numbers)"],
    )
]
