"""What the inbound events of one write share, read or written once instead of once per event.

A number's events arrive in bursts (a reconnect hands over its backlog, a busy chat talks
fast), and the supervisor commits the events that arrived together in one write. Most of them
repeat the same contact and chat, so this keeps, for that one write: the tenant's webhooks,
which WhatsApp ids are already stored, the contacts already resolved, and the chats already
upserted — whose later messages only move the latest preview and add to the unread count,
applied once when the write ends (`finish`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from whatsdex.store import chats as chat_rows
from whatsdex.store.ids import new_id
from whatsdex.webhooks import outbox as webhook_outbox

# Identity of a chat upsert apart from its latest message: (session, jid, lid, is_group,
# contact id, name).
ChatKey = tuple[str, str, str, bool, str | None, str]
# What a contact lookup was given: (phone, jid, lid, push name).
ContactKey = tuple[str, str, str, str]
_LOOKUP_CHUNK = 500  # ids per `IN (...)`


@dataclass(slots=True)
class _Touch:
    """Later conversation messages of a chat already upserted in this write."""

    key: ChatKey
    at: str
    preview: str
    unread: int


@dataclass(slots=True)
class IngestBatch:
    conn: sqlite3.Connection
    tenant_id: str
    webhooks: webhook_outbox.Subscriptions
    known: set[tuple[str, str]] = field(default_factory=set)  # (session, wa_id) stored
    contacts: dict[ContactKey, str | None] = field(default_factory=dict)
    _chats: dict[ChatKey, str] = field(default_factory=dict)
    _touched: dict[str, _Touch] = field(default_factory=dict)

    @classmethod
    def start(cls, conn: sqlite3.Connection, tenant_id: str,
              wa_ids: Iterable[tuple[str, str]]) -> IngestBatch:
        """Read which of these (session, WhatsApp id) pairs are stored already."""
        batch = cls(conn, tenant_id, webhook_outbox.Subscriptions(conn, tenant_id))
        by_session: dict[str, list[str]] = {}
        for session_id, wa_id in wa_ids:
            by_session.setdefault(session_id, []).append(wa_id)
        for session_id, ids in by_session.items():
            for i in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[i:i + _LOOKUP_CHUNK]
                # INDEXED BY: given a long IN list, the planner would rather walk the tenant's
                # every message (messages_tenant) than probe the WhatsApp ids.
                rows = conn.execute(
                    "SELECT wa_id FROM messages INDEXED BY messages_wa_id "
                    f"WHERE session_id = ? AND wa_id IN ({', '.join('?' * len(chunk))}) "
                    "AND tenant_id = ?",
                    (session_id, *chunk, tenant_id)).fetchall()
                batch.known.update((session_id, row[0]) for row in rows)
        return batch

    def chat(self, key: ChatKey, *, at: str, last_preview: str | None, unread_add: int) -> str:
        """The chat's id, upserted as `chats.upsert` does; a chat already upserted in this
        write only records its newer message for `finish`."""
        chat_id = self._chats.get(key)
        if chat_id is None or last_preview is None:
            session_id, jid, lid, is_group, contact_id, name = key
            chat_id = chat_rows.upsert(
                self.conn, self.tenant_id, new_id=new_id("cht"), session_id=session_id,
                jid=jid, lid=lid, is_group=is_group, contact_id=contact_id, name=name, at=at,
                last_preview=last_preview, unread_add=unread_add)
            self._chats[key] = chat_id
            return chat_id
        touch = self._touched.get(chat_id)
        if touch is None:
            self._touched[chat_id] = _Touch(key, at, last_preview, unread_add)
        else:
            if at >= touch.at:
                touch.at, touch.preview = at, last_preview
            touch.unread += unread_add
        return chat_id

    def finish(self) -> None:
        """Apply the chats' latest messages and unread counts held back by `chat`."""
        for touch in self._touched.values():
            session_id, jid, lid, is_group, contact_id, name = touch.key
            chat_rows.upsert(
                self.conn, self.tenant_id, new_id=new_id("cht"), session_id=session_id,
                jid=jid, lid=lid, is_group=is_group, contact_id=contact_id, name=name,
                at=touch.at, last_preview=touch.preview, unread_add=touch.unread)
        self._touched.clear()
