"""The client link page (`/link/{token}`): one number's QR code, pairing code and status, for the
client whose phone it is, without an account.

The token is the only credential and it is checked on every request, the event stream included
(which ends when the link is revoked or expires). It grants exactly this: no cookie is set (no
CSRF cookie either — the unguessable token in the path already proves the page was given to
the caller), no other route accepts it, and the page shows nothing but this number.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import ServerSentEventMessage, Template

from whatsdex.bus import BusEvent
from whatsdex.errors import BadRequest, Conflict, LimitReached, NotFound, WhatsdexError
from whatsdex.identity import links
from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.sessions.supervisor import RESTING
from whatsdex.store.records import LinkToken, WaSession
from whatsdex.web.api import sessions as ops
from whatsdex.web.api.events import EndOfStream, event_stream, sse
from whatsdex.web.auth import client_ip
from whatsdex.web.ui.numbers import Seen, inline_error, no_change, qr_context, unchanged
from whatsdex.web.ui.workspace import text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)

# A token in the address bar must not leak through caches or to other sites.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
PAIRING_LIMIT = 5  # pairing codes per link …
PAIRING_WINDOW = 600.0  # … per 10 minutes
OPTIONS: dict[str, Any] = {"exclude_from_csrf": True, "include_in_schema": False}


class Throttle:
    """At most `limit` actions per key within `window` seconds (in memory: one process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, collections.deque[float]] = {}

    def check(self, key: str, now: float, what: str) -> None:
        for stale in [k for k, hits in self._hits.items()
                      if not hits or hits[-1] <= now - self.window]:
            del self._hits[stale]
        hits = self._hits.setdefault(key, collections.deque())
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            wait = math.ceil(hits[0] + self.window - now)
            raise LimitReached(
                f"Too many {what} for this link: try again in {math.ceil(wait / 60)} minute(s)",
                retry_after=wait,
            )
        hits.append(now)


def _throttle(request: AnyRequest) -> Throttle:
    """One throttle per app, kept in its state (several apps may share a process in tests)."""
    state = request.app.state
    throttle = state.get("client_link_throttle")
    if not isinstance(throttle, Throttle):
        throttle = Throttle(PAIRING_LIMIT, PAIRING_WINDOW)
        state["client_link_throttle"] = throttle
    return throttle


async def _resolve(services: Services, token: str) -> tuple[LinkToken, WaSession]:
    """The link and its number, or 404 (unknown, revoked, expired, number deleted)."""
    link = await links.resolve(services.store, token, "client_link", now=services.clock())
    if link.tenant_id is None:
        raise NotFound(links.INVALID)
    row = await ops.get_session(services, link.tenant_id, link.subject)
    return link, row


def _actor(link: LinkToken) -> Principal:
    return Principal(kind="link", id=link.id, label=f"client link {link.id}", role="member",
                     tenant_id=link.tenant_id, scope=link.subject)


def _can_restart(row: WaSession) -> bool:
    """The QR codes ran out (or the phone unlinked it): the client may ask for new ones."""
    return row.status in RESTING and not row.jid


def _context(services: Services, token: str, row: WaSession) -> dict[str, Any]:
    return {
        "n": row,
        "base": f"/link/{token}",
        "qr": qr_context(services, row.tenant_id, row),
        "qr_trigger": "sse:qr",
        "can_restart": _can_restart(row),
        "client_page": True,
    }


def _gone(request: AnyRequest) -> Response[Any]:
    """The link stopped working while the page was open: replace the whole panel, calmly."""
    if request.headers.get("hx-request") == "true":
        return Template(template_name="link/_gone.html", status_code=404,
                        headers={**HEADERS, "HX-Retarget": "#link-panel",
                                 "HX-Reswap": "outerHTML"})
    return Template(template_name="link/invalid.html", status_code=404, headers=HEADERS)


@get("/link/{token:str}", **OPTIONS)
async def link_page(request: AnyRequest, services: ServicesDep, token: FromPath[str]
                    ) -> Response[Any]:
    try:
        _, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)
    return Template(template_name="link/page.html", context=_context(services, token, row),
                    headers=HEADERS)


@get("/link/{token:str}/panel", **OPTIONS)
async def link_panel(request: AnyRequest, services: ServicesDep, token: FromPath[str],
                     seen: Seen = "") -> Response[Any]:
    try:
        _, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)
    if unchanged(request, seen, row.updated_at):
        return no_change()
    return Template(template_name="link/_panel.html", context=_context(services, token, row),
                    headers=HEADERS)


@get("/link/{token:str}/qr", **OPTIONS)
async def link_qr(request: AnyRequest, services: ServicesDep, token: FromPath[str],
                  seen: Seen = "") -> Response[Any]:
    try:
        _, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)
    qr = qr_context(services, row.tenant_id, row)
    if unchanged(request, seen, qr["expires_at"] if qr else "none"):
        return no_change()
    return Template(template_name="numbers/_qr.html",
                    context={"base": f"/link/{token}", "qr": qr, "qr_trigger": "sse:qr",
                             "client_page": True},
                    headers=HEADERS)


@post("/link/{token:str}/pairing-code", status_code=200, **OPTIONS)
async def link_pairing_code(request: AnyRequest, services: ServicesDep, token: FromPath[str]
                            ) -> Response[Any]:
    try:
        link, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)
    phone = text(await request.form(), "phone")
    try:
        _throttle(request).check(link.id, services.clock(), "pairing codes")
        code = await ops.request_pairing_code(services, _actor(link), row.tenant_id, row.id,
                                              phone, client_ip(request))
    except (BadRequest, Conflict, LimitReached) as exc:
        return inline_error("#pairing-result", exc)
    return Template(template_name="numbers/_pairing_code.html",
                    context={"code": code, "phone": phone}, headers=HEADERS)


@post("/link/{token:str}/start", status_code=200, **OPTIONS)
async def link_restart(request: AnyRequest, services: ServicesDep, token: FromPath[str]
                       ) -> Response[Any]:
    """New QR codes after the last ones expired unscanned: the one thing the client may start."""
    try:
        link, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)
    if not _can_restart(row):
        raise Conflict(f"This number cannot be restarted from here (status: {row.status})")
    _throttle(request).check(f"{link.id}/start", services.clock(), "new QR codes")
    row = await ops.start_number(services, _actor(link), row.tenant_id, row.id,
                                 client_ip(request))
    return Template(template_name="link/_panel.html", context=_context(services, token, row),
                    headers=HEADERS)


@get("/link/{token:str}/events", **OPTIONS)
async def link_events(request: AnyRequest, services: ServicesDep, token: FromPath[str]
                      ) -> Response[Any]:
    """Only this number's status and QR events, as triggers; ends when the link stops working."""
    try:
        _, row = await _resolve(services, token)
    except NotFound:
        return _gone(request)

    async def valid() -> bool:
        try:
            await _resolve(services, token)
        except WhatsdexError:
            return False
        return True

    async def render(event: BusEvent) -> ServerSentEventMessage | None:
        if event.data.get("id") != row.id:
            return None
        if not await valid():
            raise EndOfStream
        if event.type == "session.status":
            return ServerSentEventMessage(event="status", data=str(event.data.get("status")))
        if event.type == "session.qr":
            return ServerSentEventMessage(event="qr", data=str(event.data.get("expires_at")))
        if event.type == "session.deleted":
            raise EndOfStream
        return None

    return sse(event_stream(services.bus, row.tenant_id, render, valid), HEADERS)


ROUTES: list[Any] = [link_page, link_panel, link_qr, link_pairing_code, link_restart, link_events]
