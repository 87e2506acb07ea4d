"""Reading messages and chats back: newest first, cursor pages, full-text search, read marks.

Every query walks an index in the order it returns rows (a chat's messages, a tenant's
messages, the full-text index), so a page costs the same on the millionth message as on the
first. Cursors are opaque and carry the sort key of the last row shown, so rows arriving
meanwhile never shift or repeat a later page.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import Clock, iso, parse_iso
from whatsdex.errors import BadRequest, NotFound
from whatsdex.sessions import protocol
from whatsdex.sessions.hosts import HostGone
from whatsdex.sessions.supervisor import Supervisor
from whatsdex.store import Store
from whatsdex.store import chats as chat_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.chats import Chat
from whatsdex.store.messages import Message

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_LIMIT = 200
STATUSES = ("received", "queued", "sending", "sent", "delivered", "read", "played", "failed")
MAX_READ_RECEIPTS = 1000  # newest unread messages confirmed at once


class Page(msgspec.Struct, Generic[T], kw_only=True):
    items: list[T]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True, slots=True)
class ChatRead:
    """A chat marked read: the inbound messages whose senders get read receipts."""

    chat_id: str
    session_id: str
    chat_jid: str
    unread_before: int
    # (WhatsApp id, sender JID) of each message newly marked read.
    messages: list[tuple[str, str]] = field(default_factory=list)
    receipts_sent: int = 0


# -- cursors -----------------------------------------------------------------------------------


def _encode_cursor(*parts: Any) -> str:
    raw = json.dumps(list(parts), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, shape: tuple[type, ...]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw)
    except (binascii.Error, ValueError):
        parts = None
    if (not isinstance(parts, list) or len(parts) != len(shape)
            or not all(isinstance(p, t) for p, t in zip(parts, shape, strict=True))):
        raise BadRequest("`cursor` is not a cursor this list gave out", {"field": "cursor"})
    return parts


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"`limit` must be between 1 and {MAX_LIMIT}", {"field": "limit"})
    return limit


def _instant(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return None
    try:
        return iso(parse_iso(value))
    except ValueError:
        raise BadRequest(f"`{field}` must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z",
                         {"field": field}) from None


def fts_query(text: str) -> str:
    """User text as an FTS5 query: every word must appear, the last one as a prefix.

    Each word is a quoted string, so FTS5 operators and punctuation in the input are just
    text, never query syntax.
    """
    words = [w.replace('"', '""') for w in text.split() if w.replace('"', "").strip()]
    if not words:
        raise BadRequest("`query` needs at least one word", {"field": "query"})
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


# -- messages ----------------------------------------------------------------------------------


async def list_messages(
    store: Store, tenant_id: str, *, session_id: str | None = None, chat_id: str | None = None,
    direction: str | None = None, status: str | None = None, since: str | None = None,
    until: str | None = None, query: str | None = None, cursor: str | None = None,
    limit: int = 50,
) -> Page[Message]:
    """Newest first. With `query`, messages whose text matches it (full-text search)."""
    limit = _limit(limit)
    if direction is not None and direction not in ("in", "out"):
        raise BadRequest("`direction` must be in or out", {"field": "direction"})
    if status is not None and status not in STATUSES:
        raise BadRequest(f"`status` must be one of {', '.join(STATUSES)}", {"field": "status"})
    since, until = _instant(since, "since"), _instant(until, "until")
    # `+m.tenant_id` keeps SQLite on the chat's index when a chat is given (the tenant check
    # stays a filter): the chat's rows are far fewer than the tenant's.
    where = ["+m.tenant_id = ?" if chat_id else "m.tenant_id = ?"]
    params: list[Any] = [tenant_id]
    for column, value in (("chat_id", chat_id), ("session_id", session_id),
                          ("direction", direction), ("status", status)):
        if value is not None:
            where.append(f"m.{column} = ?")
            params.append(value)
    if since is not None:
        where.append("m.created_at >= ?")
        params.append(since)
    if until is not None:
        where.append("m.created_at < ?")
        params.append(until)
    if query:
        return await _search(store, where, params, fts_query(query), cursor, limit)
    if cursor:
        created_at, message_id = _decode_cursor(cursor, (str, str))
        where.append("m.created_at <= ? AND (m.created_at < ? OR m.id < ?)")
        params += [created_at, created_at, message_id]
    rows = await store.fetchall(
        f"SELECT {message_rows.columns('m')} FROM messages m WHERE {' AND '.join(where)} "
        "ORDER BY m.created_at DESC, m.id DESC LIMIT ?",
        [*params, limit + 1],
    )
    items = [message_rows.from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=_encode_cursor(items[-1].created_at, items[-1].id)
                if more else None)


async def _search(store: Store, where: list[str], params: list[Any], match: str,
                  cursor: str | None, limit: int) -> Page[Message]:
    """Driven by the full-text index, newest (highest rowid) first: no sort, no table scan."""
    where = ["messages_fts MATCH ?", *where]
    params = [match, *params]
    if cursor:
        (before,) = _decode_cursor(cursor, (int,))
        where.append("f.rowid < ?")
        params.append(before)
    rows = await store.fetchall(
        f"SELECT {message_rows.columns('m')}, f.rowid AS fts_rowid FROM messages_fts f "
        f"JOIN messages m ON m.rowid = f.rowid WHERE {' AND '.join(where)} "
        "ORDER BY f.rowid DESC LIMIT ?",
        [*params, limit + 1],
    )
    items = [message_rows.from_row(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, next_cursor=_encode_cursor(rows[limit - 1]["fts_rowid"])
                if more else None)


async def get_message(store: Store, tenant_id: str, message_id: str) -> Message:
    """One message with its status and the time of each step (sent, delivered, read…)."""
    message = await message_rows.get(store, tenant_id, message_id)
    if message is None:
        raise NotFound("Message not found")
    return message


# -- chats -------------------------------------------------------------------------------------


async def list_chats(store: Store, tenant_id: str, session_id: str | None = None, *,
                     cursor: str | None = None, limit: int = 50, query: str | None = None
                     ) -> Page[Chat]:
    """Most recently active first, each with its unread count."""
    limit = _limit(limit)
    after = None
    if cursor:
        last_at, chat_id = _decode_cursor(cursor, (str, str))
        after = (last_at, chat_id)
    rows = await chat_rows.page(store, tenant_id, session_id=session_id, after=after,
                                limit=limit + 1, query=(query or "").strip())
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items=items, next_cursor=_encode_cursor(items[-1].last_message_at, items[-1].id)
                if more else None)


async def get_chat(store: Store, tenant_id: str, chat_id: str) -> Chat:
    chat = await chat_rows.get(store, tenant_id, chat_id)
    if chat is None:
        raise NotFound("Chat not found")
    return chat


async def mark_chat_read(store: Store, tenant_id: str, chat_id: str, *, now: float) -> ChatRead:
    """Unread back to 0; its newest unread inbound messages become `read` (by us)."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> ChatRead:
        chat = chat_rows.get_sync(conn, tenant_id, chat_id)
        if chat is None:
            raise NotFound("Chat not found")
        before = chat_rows.mark_read(conn, tenant_id, chat_id) or 0
        marked: list[tuple[str, str]] = []
        if before:
            rows = conn.execute(
                "SELECT id, wa_id, sender_jid FROM messages WHERE chat_id = ? "
                "AND +tenant_id = ? AND direction = 'in' AND status = 'received' "
                "ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (chat_id, tenant_id, min(before, MAX_READ_RECEIPTS)),
            ).fetchall()
            conn.executemany(
                "UPDATE messages SET status = 'read', read_at = ? WHERE id = ?",
                [(stamp, row["id"]) for row in rows],
            )
            marked = [(str(row["wa_id"]), str(row["sender_jid"] or chat.jid))
                      for row in reversed(rows) if row["wa_id"]]
        return ChatRead(chat_id=chat_id, session_id=chat.session_id, chat_jid=chat.jid,
                        unread_before=before, messages=marked)

    return await store.write(write)


async def mark_read(store: Store, supervisor: Supervisor, bus: EventBus, clock: Clock,
                    tenant_id: str, chat_id: str) -> ChatRead:
    """Mark a chat read here and, when its number is connected, tell the senders."""
    read = await mark_chat_read(store, tenant_id, chat_id, now=clock())
    if read.unread_before:
        bus.publish(BusEvent(tenant_id, "chat.read", {"id": chat_id,
                                                      "session_id": read.session_id}))
    if not read.messages:
        return read
    live = supervisor.live.get(read.session_id)
    host = None if live is None or live.status != "connected" else live.host
    if host is None:
        return read  # marked here; the phone's own read state is the user's to keep
    by_sender: dict[str, list[str]] = {}
    for wa_id, sender in read.messages:
        by_sender.setdefault(sender, []).append(wa_id)
    sent = 0
    for sender, ids in by_sender.items():
        try:
            reply = await host.call(protocol.MarkRead(
                req=0, session=read.session_id, chat=read.chat_jid, sender=sender,
                message_ids=ids), timeout=30)
        except (HostGone, TimeoutError) as exc:
            log.info("read receipts for chat %s not sent: %s", chat_id, exc)
            break
        if not reply.ok:
            log.info("read receipts for chat %s not sent: %s", chat_id, reply.error)
            continue
        sent += len(ids)
    return ChatRead(chat_id=read.chat_id, session_id=read.session_id, chat_jid=read.chat_jid,
                    unread_before=read.unread_before, messages=read.messages,
                    receipts_sent=sent)
