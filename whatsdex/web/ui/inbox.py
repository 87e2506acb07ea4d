"""The inbox (`/inbox`): chats on the left, the open conversation on the right, a reply box.

Every list is a cursor page of the messaging core's indexed queries: the chat list loads more
on request, a conversation shows its newest messages and loads older ones on request, so a
million stored messages cost what a hundred do. The page stays current through `/inbox/events`
(the tenant's bus as ready-to-swap fragments); while that stream is down, the chat list and the
conversation poll instead, answering 204 when nothing changed.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response, Router, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template

from whatsdex.bus import BusEvent
from whatsdex.errors import BadRequest, NotFound, Unavailable, WhatsdexError
from whatsdex.identity import logins
from whatsdex.messaging import history
from whatsdex.messaging import media as media_core
from whatsdex.messaging.outbox import SendRequest
from whatsdex.services import Services
from whatsdex.store import messages as message_rows
from whatsdex.store import wa_sessions
from whatsdex.store.chats import Chat
from whatsdex.store.messages import Message
from whatsdex.store.records import WaSession
from whatsdex.web.api import messages as ops
from whatsdex.web.api.events import event_stream, sse
from whatsdex.web.auth import SESSION_COOKIE, requires_member, tenant_id_of
from whatsdex.web.ui.numbers import no_change, render_fragment, unchanged
from whatsdex.web.ui.workspace import is_htmx, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Text = Annotated[str, QueryParameter(max_length=200)]
Token = Annotated[str, QueryParameter(max_length=512)]

CHATS_PAGE = 50
MESSAGES_PAGE = 40
SEARCH_HITS = 20
MAX_REPLY = 4096
# Shown in the page as pictures; anything else is a download link (and served as one).
INLINE_IMAGES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
INLINE_TYPES = INLINE_IMAGES | {"video/mp4", "audio/ogg", "audio/mpeg", "audio/mp4",
                                "application/pdf"}


# -- What the templates need -------------------------------------------------------------------

def seen_token(parts: Iterable[str]) -> str:
    """What a list shows now, in a few characters: a poll that finds the same answers 204."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def media_kind(mimetype: str) -> str:
    """The message type an attached file is sent as: as a picture, video or audio when
    WhatsApp shows it as one, else as a document."""
    for kind in ("image", "video", "audio"):
        if media_core.allowed(kind, mimetype):
            return kind
    return "document"


@dataclass
class Conversation:
    """One chat's newest page of messages, oldest first, and what renders them."""

    chat: Chat
    messages: list[Message]
    older: str | None  # cursor of the page before the first shown
    quotes: dict[str, Message] = field(default_factory=dict)

    @property
    def seen(self) -> str:
        return seen_token(f"{m.id}:{m.status}:{m.deleted_at or ''}" for m in self.messages)


async def quoted(services: Services, tenant_id: str, messages: list[Message]
                 ) -> dict[str, Message]:
    """The messages these reply to, by id (one indexed lookup each, at most a page)."""
    found: dict[str, Message] = {}
    for quote_id in {m.quoted_id for m in messages if m.quoted_id}:
        message = await message_rows.get(services.store, tenant_id, quote_id)
        if message is not None:
            found[quote_id] = message
    return found


async def conversation(services: Services, tenant_id: str, chat_id: str,
                       cursor: str | None = None) -> Conversation:
    chat = await history.get_chat(services.store, tenant_id, chat_id)
    found = await history.list_messages(services.store, tenant_id, chat_id=chat_id,
                                        cursor=cursor, limit=MESSAGES_PAGE)
    messages = list(reversed(found.items))
    return Conversation(chat=chat, messages=messages, older=found.next_cursor,
                        quotes=await quoted(services, tenant_id, messages))


async def numbers_of(services: Services, tenant_id: str) -> dict[str, WaSession]:
    return {n.id: n for n in await wa_sessions.list_for_tenant(services.store, tenant_id)}


def can_fetch(services: Services) -> bool:
    """Whether received media can be downloaded (the engine can fetch it on demand)."""
    try:
        return ops.media_of(services).fetch_inbound is not None
    except Unavailable:
        return False


def message_context(services: Services, numbers: dict[str, WaSession]) -> dict[str, Any]:
    return {"numbers": numbers, "fetchable": can_fetch(services), "inline_images": INLINE_IMAGES}


def chats_url(q: str, session: str, **extra: str) -> str:
    params = {"q": q, "session": session, **extra}
    return "/inbox/chats?" + urlencode({k: v for k, v in params.items() if v})


async def chats_context(services: Services, tenant_id: str, *, q: str, session: str,
                        cursor: str | None = None) -> dict[str, Any]:
    """The chat list (one page), and for a search the messages whose text matches."""
    q = q.strip()
    found = await history.list_chats(services.store, tenant_id, session or None, cursor=cursor,
                                     limit=CHATS_PAGE, query=q or None)
    hits: list[Message] = []
    if q and cursor is None:
        try:
            hits = (await history.list_messages(services.store, tenant_id, query=q,
                                                session_id=session or None,
                                                limit=SEARCH_HITS)).items
        except BadRequest:  # punctuation only: nothing to search the text for
            hits = []
    chats = found.items
    seen = seen_token(f"{c.id}:{c.last_message_at}:{c.unread}" for c in chats)
    return {
        "chats": chats, "hits": hits, "q": q, "session": session, "seen": seen,
        "more_url": chats_url(q, session, cursor=found.next_cursor) if found.next_cursor
        else None,
        "poll_url": chats_url(q, session, seen=seen),
    }


def reply_key() -> str:
    """A fresh key per reply form: a double submit sends one message, not two."""
    return secrets.token_urlsafe(16)


# -- The page ----------------------------------------------------------------------------------

@get("/inbox")
async def inbox_page(request: AnyRequest, services: ServicesDep, chat: Text = "", q: Text = "",
                     session: Text = "") -> Template:
    tenant_id = tenant_id_of(request)
    numbers = await numbers_of(services, tenant_id)
    if session and session not in numbers:
        session = ""
    context = await chats_context(services, tenant_id, q=q, session=session)
    opened = await conversation(services, tenant_id, chat) if chat else None
    return page(request, "inbox/page.html", conv=opened, active=chat, reply_key=reply_key(),
                **context, **message_context(services, numbers))


@get("/inbox/chats")
async def chat_list(request: AnyRequest, services: ServicesDep, q: Text = "", session: Text = "",
                    cursor: Token = "", seen: Token = "") -> Response[Any]:
    """The list (search, number filter, poll), or with `cursor` the next rows only."""
    tenant_id = tenant_id_of(request)
    numbers = await numbers_of(services, tenant_id)
    context = await chats_context(services, tenant_id, q=q, session=session,
                                  cursor=cursor or None)
    # The open chat is marked by inbox.js: the list does not know which one it is.
    rendered = {**context, **message_context(services, numbers), "active": ""}
    if cursor:
        return partial("inbox/_chat_rows.html", **rendered)
    if unchanged(request, seen, context["seen"]):
        return no_change()
    return partial("inbox/_chats.html", **rendered)


# -- A conversation ----------------------------------------------------------------------------

def _conversation_template(services: Services, conv: Conversation,
                           numbers: dict[str, WaSession]) -> Template:
    return partial("inbox/_conversation.html", conv=conv, reply_key=reply_key(),
                   **message_context(services, numbers))


@get("/inbox/chats/{chat_id:str}")
async def open_chat(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str]
                    ) -> Response[Any]:
    """The conversation for the right column (a plain visit gets the whole page)."""
    if not is_htmx(request):
        return Redirect(f"/inbox?chat={chat_id}", status_code=303)
    tenant_id = tenant_id_of(request)
    conv = await conversation(services, tenant_id, chat_id)
    return _conversation_template(services, conv, await numbers_of(services, tenant_id))


@get("/inbox/chats/{chat_id:str}/messages")
async def older_messages(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str],
                         cursor: Token) -> Template:
    """The page before the oldest shown, with the button for the one before it."""
    tenant_id = tenant_id_of(request)
    conv = await conversation(services, tenant_id, chat_id, cursor)
    return partial("inbox/_older.html", conv=conv,
                   **message_context(services, await numbers_of(services, tenant_id)))


@get("/inbox/chats/{chat_id:str}/latest")
async def latest_messages(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str],
                          seen: Token = "") -> Response[Any]:
    """The fallback poll of the open conversation: its newest page when that changed."""
    tenant_id = tenant_id_of(request)
    conv = await conversation(services, tenant_id, chat_id)
    if unchanged(request, seen, conv.seen):
        return no_change()
    return partial("inbox/_messages.html", conv=conv,
                   **message_context(services, await numbers_of(services, tenant_id)))


@post("/inbox/chats/{chat_id:str}/read", status_code=204)
async def read_chat(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str]) -> None:
    """Opening a chat reads it: unread to 0 and read receipts sent (the row updates live)."""
    await ops.mark_chat_read(services, tenant_id_of(request), chat_id)


def _attachment(form: FormMultiDict) -> UploadFile | None:
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        return upload
    return None


@post("/inbox/chats/{chat_id:str}/messages", status_code=200,
      request_max_body_size=ops.MAX_BODY)
async def reply(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str]
                ) -> Template:
    """Send a reply (text, or a file with the text as its caption) through the outbox."""
    tenant_id = tenant_id_of(request)
    chat = await history.get_chat(services.store, tenant_id, chat_id)
    form = await request.form()
    body = text(form, "text").strip()
    if len(body) > MAX_REPLY:
        raise BadRequest(f"A reply may have at most {MAX_REPLY} characters", {"field": "text"})
    upload = _attachment(form)
    kind, media_id = "text", ""
    if upload is not None:
        stored = await ops.store_upload(services, tenant_id, upload)
        kind, media_id = media_kind(stored.mimetype), stored.id
    elif not body:
        raise BadRequest("Type a message or attach a file", {"field": "text"})
    accepted = await ops.send(
        services, tenant_id,
        SendRequest(session_id=chat.session_id, to=chat.jid, type=kind, text=body,
                    media_id=media_id),
        source="inbox", idempotency_key=text(form, "key") or None)
    numbers = await numbers_of(services, tenant_id)
    conv = Conversation(chat=chat, messages=[accepted.message], older=None,
                        quotes=await quoted(services, tenant_id, [accepted.message]))
    return partial("inbox/_sent.html", conv=conv, m=accepted.message, reply_key=reply_key(),
                   **message_context(services, numbers))


@get("/inbox/media/{message_id:str}")
async def message_media(request: AnyRequest, services: ServicesDep, message_id: FromPath[str]
                        ) -> Response[bytes]:
    """A message's file for the page: pictures and players inline, everything else a
    download typed as bytes, so an uploaded page or script never runs from this origin."""
    row, data = await ops.message_media(services, tenant_id_of(request), message_id)
    base = row.mimetype.split(";", 1)[0].strip().lower()
    if base in INLINE_TYPES:
        return ops.file_response(row, data, name=message_id, disposition="inline")
    return ops.file_response(row, data, name=message_id, mimetype="application/octet-stream")


# -- Live updates --------------------------------------------------------------------------------

@dataclass
class Several(ServerSentEventMessage):
    """Several SSE messages for one bus event (a new message: its chat row and its bubble)."""

    parts: list[ServerSentEventMessage] = field(default_factory=list)


async def _each(stream: AsyncIterator[ServerSentEventMessage]
                ) -> AsyncIterator[ServerSentEventMessage]:
    async for message in stream:
        if isinstance(message, Several):
            for part in message.parts:
                yield part
        else:
            yield message


@get("/inbox/events")
async def inbox_events(request: AnyRequest, services: ServicesDep) -> ServerSentEvent:
    """Message events as fragments: `chat` (a row for the top of the list), `chat-<id>` (a row
    in place), `msgs-<chat id>` (a bubble to append) and `msg-<id>` (a bubble in place)."""
    tenant_id = tenant_id_of(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    async def row(chat_id: str) -> str:
        chat = await history.get_chat(services.store, tenant_id, chat_id)
        number = await wa_sessions.get(services.store, tenant_id, chat.session_id)
        numbers = {} if number is None else {number.id: number}
        return render_fragment(request, "inbox/_chat_row.html", c=chat, active="",
                               **message_context(services, numbers))

    async def bubble(message: Message, *, mark_read: bool = False) -> str:
        quotes = await quoted(services, tenant_id, [message])
        return render_fragment(request, "inbox/_message.html", m=message, quotes=quotes,
                               mark_read=mark_read, **message_context(services, {}))

    async def render(event: BusEvent) -> ServerSentEventMessage | None:
        try:
            return await fragments(event)
        except NotFound:  # deleted meanwhile (its number was): nothing left to show
            return None

    async def fragments(event: BusEvent) -> ServerSentEventMessage | None:
        if event.type == "chat.read":
            chat_id = str(event.data.get("id", ""))
            html = await row(chat_id)
            return ServerSentEventMessage(event=f"chat-{chat_id}", data=html)
        if event.type not in ("message.received", "message.sent", "message.status"):
            return None
        message = await message_rows.get(services.store, tenant_id, str(event.data.get("id")))
        if message is None:
            return None
        parts: list[ServerSentEventMessage] = []
        # Sends appear once sent (the event's status: the row may have moved on since).
        new = event.type != "message.status" or event.data.get("status") == "sent"
        if new:
            html = await bubble(message, mark_read=event.type == "message.received")
            parts.append(ServerSentEventMessage(event=f"msgs-{message.chat_id}", data=html))
            parts.append(ServerSentEventMessage(event="chat", data=await row(message.chat_id)))
        if event.type == "message.status":
            parts.append(ServerSentEventMessage(event=f"msg-{message.id}",
                                                data=await bubble(message)))
        # An edit or a deletion changes the message it points at, wherever that is shown.
        change = message.payload.get(message.kind) if message.kind in ("edit", "delete") else None
        target_id = str(change.get("message_id") or "") if isinstance(change, dict) else ""
        target = await message_rows.get(services.store, tenant_id, target_id) if target_id else None
        if target is not None:
            parts.append(ServerSentEventMessage(event=f"msg-{target.id}",
                                                data=await bubble(target)))
        return Several(data=None, parts=parts)

    async def still_allowed() -> bool:
        try:
            session = await logins.resolve(services.store, cookie, now=services.clock(),
                                           limits=services.session_limits)
        except WhatsdexError:  # the workspace was suspended
            return False
        return session is not None and session.principal.tenant_id == tenant_id

    return sse(_each(event_stream(services.bus, tenant_id, render, still_allowed)))


ROUTES: list[Any] = [
    Router(path="/", guards=[requires_member], include_in_schema=False, route_handlers=[
        inbox_page, chat_list, open_chat, older_messages, latest_messages, read_chat, reply,
        message_media, inbox_events,
    ]),
]
