"""Live events as server-sent events: the tenant's bus, streamed to API clients and pages.

One generator serves every stream (API JSON, dashboard fragments, a client link's page): it
subscribes to the tenant's bus for exactly as long as the client stays connected — Litestar
cancels it on disconnect and the subscription goes with it — says `retry:` first, sends a
comment every `KEEPALIVE_SECONDS` so proxies keep the connection open, checks that the caller
may still listen at each keep-alive, and ends when not, or when the server stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import ServerSentEvent, ServerSentEventMessage

from whatsdex.bus import BusEvent, EventBus
from whatsdex.errors import WhatsdexError
from whatsdex.identity import apikeys
from whatsdex.services import Services
from whatsdex.web.auth import requires_member, tenant_id_of

log = logging.getLogger(__name__)

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Render = Callable[[BusEvent], Awaitable[ServerSentEventMessage | None]]
StillAllowed = Callable[[], Awaitable[bool]]

class EndOfStream(Exception):
    """Raised by a renderer: the listener may no longer receive this stream."""


RETRY_MS = 3000  # how soon a browser reconnects after the stream drops
KEEPALIVE_SECONDS = 15.0
# Sent to every subscriber when the server stops: a stream ends at once instead of holding the
# shutdown until uvicorn's graceful timeout cancels it.
CLOSING = "server.closing"


async def event_stream(bus: EventBus, tenant_id: str, render: Render,
                       still_allowed: StillAllowed) -> AsyncIterator[ServerSentEventMessage]:
    """The tenant's events as SSE messages, until the client goes or loses its right to them."""
    async with bus.subscribe(tenant_id) as queue:
        # The first message proves the subscription exists: nothing published after it is lost.
        yield ServerSentEventMessage(data=None, comment="connected", retry=RETRY_MS)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                if not await still_allowed():
                    return
                yield ServerSentEventMessage(data=None, comment="keep-alive")
                continue
            if event.type == CLOSING:
                return
            try:
                message = await render(event)
            except EndOfStream:
                return
            if message is not None:
                yield message


def sse(stream: AsyncIterator[ServerSentEventMessage], headers: dict[str, str] | None = None
        ) -> ServerSentEvent:
    return ServerSentEvent(stream, headers={"Cache-Control": "no-store", **(headers or {})})


async def _as_json(event: BusEvent) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=event.type, data=msgspec.json.encode(event.data).decode())


@get("/api/v1/events", guards=[requires_member], security=[{"apiKey": []}], tags=["Events"],
     media_type="text/event-stream", summary="Live events (server-sent events)",
     description=(
         "A `text/event-stream` of this workspace's events, each as `event: <type>` and one JSON "
         "`data:` line. Types: `session.status` `{id, status, previous, reason, since}`, "
         "`session.qr` `{id, expires_at}` (a new QR code: fetch it), `session.deleted` `{id}`. "
         f"A comment line every {KEEPALIVE_SECONDS:.0f} s keeps the connection open. Events are "
         "live only: use webhooks to receive every event durably."
     ))
async def events(request: AnyRequest, services: ServicesDep) -> ServerSentEvent:
    tenant_id = tenant_id_of(request)
    _, _, secret = request.headers.get("authorization", "").partition(" ")

    async def still_allowed() -> bool:
        try:
            principal = await apikeys.authenticate(services.store, secret.strip(),
                                                   now=services.clock())
        except WhatsdexError:  # revoked key or suspended workspace
            return False
        return principal.tenant_id == tenant_id

    return sse(event_stream(services.bus, tenant_id, _as_json, still_allowed))


ROUTES: list[Any] = [events]
