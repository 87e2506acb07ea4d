"""Messages both ways (outbound rows are the durable outbox), idempotency keys, daily counts."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from whatsdex.store.database import Store

# Outbound status order: a receipt may only move a message forward along it.
STATUS_RANK = {"queued": 0, "sending": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}
RECEIPT_COLUMN = {"delivered": "delivered_at", "read": "read_at", "played": "played_at"}


class Message(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    session_id: str
    chat_id: str
    direction: str
    wa_id: str | None
    sender_jid: str
    sender_lid: str
    sender_phone: str
    push_name: str
    kind: str
    text: str
    payload: dict[str, Any]
    quoted_id: str
    status: str
    status_reason: str
    source: str
    priority: int
    attempts: int
    next_attempt_at: str | None
    created_at: str
    wa_timestamp: str | None
    sent_at: str | None
    delivered_at: str | None
    read_at: str | None
    played_at: str | None
    failed_at: str | None
    edited_at: str | None
    deleted_at: str | None


FIELDS = Message.__struct_fields__
COLUMNS = ", ".join(FIELDS)
_decode_payload = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder()


def columns(alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in FIELDS)


def encode_payload(payload: dict[str, Any]) -> str:
    return _encode.encode(payload).decode() if payload else "{}"


def from_row(row: sqlite3.Row) -> Message:
    values = {name: row[name] for name in FIELDS}
    values["payload"] = _decode_payload.decode(values["payload"] or "{}")
    return Message(**values)


def insert(conn: sqlite3.Connection, message: Message) -> None:
    values = [getattr(message, name) for name in FIELDS]
    values[FIELDS.index("payload")] = encode_payload(message.payload)
    conn.execute(
        f"INSERT INTO messages ({COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))})", values
    )


async def get(db: Store, tenant_id: str, message_id: str) -> Message | None:
    row = await db.fetchone(
        f"SELECT {COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?", (message_id, tenant_id)
    )
    return None if row is None else from_row(row)


def get_sync(conn: sqlite3.Connection, tenant_id: str, message_id: str) -> Message | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM messages WHERE id = ? AND tenant_id = ?", (message_id, tenant_id)
    ).fetchone()
    return None if row is None else from_row(row)


def find_by_wa_id(conn: sqlite3.Connection, tenant_id: str, session_id: str, wa_id: str
                  ) -> sqlite3.Row | None:
    """The few columns inbound handling needs of a message WhatsApp names by its id."""
    return conn.execute(  # type: ignore[no-any-return]
        "SELECT id, direction, kind, status, sender_jid FROM messages "
        "WHERE session_id = ? AND wa_id = ? AND tenant_id = ?",
        (session_id, wa_id, tenant_id),
    ).fetchone()


def set_edited(conn: sqlite3.Connection, tenant_id: str, message_id: str, text: str, at: str
               ) -> None:
    conn.execute(
        "UPDATE messages SET text = ?, edited_at = ? WHERE id = ? AND tenant_id = ?",
        (text, at, message_id, tenant_id),
    )


def set_deleted(conn: sqlite3.Connection, tenant_id: str, message_id: str, at: str) -> None:
    conn.execute(
        "UPDATE messages SET deleted_at = ? WHERE id = ? AND tenant_id = ? AND deleted_at IS NULL",
        (at, message_id, tenant_id),
    )


def set_media_id(conn: sqlite3.Connection, tenant_id: str, message_id: str, media_id: str
                 ) -> None:
    """Remember where a message's downloaded media is kept."""
    conn.execute(
        "UPDATE messages SET payload = json_set(payload, '$.media.media_id', ?) "
        "WHERE id = ? AND tenant_id = ?",
        (media_id, message_id, tenant_id),
    )


# -- receipts --------------------------------------------------------------------------------


class Advanced(msgspec.Struct, kw_only=True):
    id: str
    chat_id: str
    previous: str
    moved: bool  # False: it was already as far (or further), or failed


def advance_status(
    conn: sqlite3.Connection, tenant_id: str, session_id: str, wa_id: str, status: str, at: str
) -> Advanced | None:
    """Move an outbound message forward to `status`, never back; None: no such message.

    A later receipt fills the timestamps of the steps it implies (read implies delivered).
    """
    rank = STATUS_RANK[status]
    implied = [column for name, column in RECEIPT_COLUMN.items() if STATUS_RANK[name] <= rank]
    fills = ", ".join(f"{column} = COALESCE({column}, :at)" for column in implied)
    row = conn.execute(
        "SELECT id, chat_id, status FROM messages WHERE session_id = :session "
        "AND wa_id = :wa_id AND tenant_id = :tenant AND direction = 'out'",
        {"session": session_id, "wa_id": wa_id, "tenant": tenant_id},
    ).fetchone()
    if row is None:
        return None
    previous = str(row["status"])
    found = Advanced(id=str(row["id"]), chat_id=str(row["chat_id"]), previous=previous,
                     moved=False)
    if previous not in STATUS_RANK or STATUS_RANK[previous] >= rank:
        return found
    conn.execute(
        f"UPDATE messages SET status = :status, {fills} WHERE id = :id",
        {"status": status, "at": at, "id": row["id"]},
    )
    found.moved = True
    return found


# -- the outbox ------------------------------------------------------------------------------


async def sessions_with_queue(db: Store) -> list[tuple[str, str]]:
    """(tenant_id, session_id) of every number with messages waiting to be sent."""
    rows = await db.fetchall(
        "SELECT DISTINCT session_id, tenant_id FROM messages "
        "WHERE status IN ('queued', 'sending')"
    )
    return [(str(r["tenant_id"]), str(r["session_id"])) for r in rows]


class Due(msgspec.Struct, kw_only=True):
    """The next message a number should send, with the addresses the send needs."""

    message: Message
    chat_jid: str
    session_jid: str


async def next_due(db: Store, tenant_id: str, session_id: str, now: str
                   ) -> tuple[Due | None, str | None]:
    """The most urgent message due now, else when the earliest one waiting becomes due."""
    row = await db.fetchone(
        # CROSS JOIN keeps the outbox index in charge (SQLite does not reorder it).
        f"SELECT {columns('m')}, c.jid AS chat_jid, "
        "(SELECT jid FROM wa_sessions WHERE id = m.session_id) AS session_jid "
        "FROM messages m CROSS JOIN chats c ON c.id = m.chat_id WHERE m.session_id = ? "
        "AND m.status IN ('queued', 'sending') "
        "AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= ?) AND m.tenant_id = ? "
        "ORDER BY m.priority DESC, m.created_at LIMIT 1",
        (session_id, now, tenant_id),
    )
    if row is not None:
        return Due(message=from_row(row), chat_jid=row["chat_jid"],
                   session_jid=row["session_jid"]), None
    later = await db.fetchval(
        "SELECT min(next_attempt_at) FROM messages "
        "WHERE session_id = ? AND status IN ('queued', 'sending') AND tenant_id = ?",
        (session_id, tenant_id),
    )
    return None, later


def mark_sending(conn: sqlite3.Connection, tenant_id: str, message_id: str) -> int | None:
    """Claim a message for one engine call; the attempt counts from here. None: not sendable."""
    row = conn.execute(
        "UPDATE messages SET status = 'sending', attempts = attempts + 1, status_reason = '', "
        "next_attempt_at = NULL WHERE id = ? AND tenant_id = ? AND status IN ('queued', 'sending') "
        "RETURNING attempts",
        (message_id, tenant_id),
    ).fetchone()
    return None if row is None else int(row[0])


def mark_sent(
    conn: sqlite3.Connection, tenant_id: str, message_id: str, *, session_id: str, wa_id: str,
    sender_jid: str, sent_at: str, wa_timestamp: str,
) -> bool:
    # The phone may have echoed our own send as a "from me" message first: ours is the record.
    conn.execute(
        "DELETE FROM messages WHERE session_id = ? AND wa_id = ? AND id != ? "
        "AND direction = 'out' AND source = ''",
        (session_id, wa_id, message_id),
    )
    return bool(conn.execute(
        "UPDATE messages SET status = 'sent', wa_id = ?, sender_jid = ?, sent_at = ?, "
        "wa_timestamp = ?, status_reason = '', next_attempt_at = NULL "
        "WHERE id = ? AND tenant_id = ? AND status = 'sending'",
        (wa_id, sender_jid, sent_at, wa_timestamp, message_id, tenant_id),
    ).rowcount)


def requeue(
    conn: sqlite3.Connection, tenant_id: str, message_id: str, *, reason: str,
    next_attempt_at: str | None, refund_attempt: bool = False,
) -> bool:
    """Back to the queue after a failed or interrupted attempt."""
    return bool(conn.execute(
        "UPDATE messages SET status = 'queued', status_reason = ?, next_attempt_at = ?, "
        "attempts = attempts - ? WHERE id = ? AND tenant_id = ? "
        "AND status IN ('queued', 'sending')",
        (reason, next_attempt_at, 1 if refund_attempt else 0, message_id, tenant_id),
    ).rowcount)


def mark_failed(conn: sqlite3.Connection, tenant_id: str, message_id: str, *, reason: str,
                at: str) -> bool:
    return bool(conn.execute(
        "UPDATE messages SET status = 'failed', status_reason = ?, failed_at = ?, "
        "next_attempt_at = NULL WHERE id = ? AND tenant_id = ? AND status IN ('queued', 'sending')",
        (reason, at, message_id, tenant_id),
    ).rowcount)


def explain_queue(conn: sqlite3.Connection, tenant_id: str, session_id: str, reason: str) -> None:
    """Say on every waiting message why it waits (a cap, a disconnected number)."""
    conn.execute(
        "UPDATE messages SET status_reason = ? WHERE session_id = ? "
        "AND status IN ('queued', 'sending') AND status = 'queued' AND tenant_id = ? "
        "AND status_reason != ?",
        (reason, session_id, tenant_id, reason),
    )


def clear_reason(conn: sqlite3.Connection, tenant_id: str, session_id: str, reason: str
                 ) -> None:
    """The wait `explain_queue` described is over: take its reason off the waiting rows."""
    conn.execute(
        "UPDATE messages SET status_reason = '' WHERE session_id = ? "
        "AND status IN ('queued', 'sending') AND tenant_id = ? AND status_reason = ?",
        (session_id, tenant_id, reason),
    )


def target_for_send(conn: sqlite3.Connection, tenant_id: str, message_id: str
                    ) -> sqlite3.Row | None:
    """What a reply or reaction needs of the message it points at."""
    return conn.execute(  # type: ignore[no-any-return]
        "SELECT id, session_id, chat_id, direction, wa_id, status, sender_jid FROM messages "
        "WHERE id = ? AND tenant_id = ?",
        (message_id, tenant_id),
    ).fetchone()


async def target_for_send_async(db: Store, tenant_id: str, message_id: str
                                ) -> sqlite3.Row | None:
    return await db.fetchone(
        "SELECT id, session_id, chat_id, direction, wa_id, status, sender_jid FROM messages "
        "WHERE id = ? AND tenant_id = ?",
        (message_id, tenant_id),
    )


# -- daily counts ----------------------------------------------------------------------------


def count_accepted(conn: sqlite3.Connection, tenant_id: str, session_id: str, day: str) -> None:
    conn.execute(
        "INSERT INTO message_counts (session_id, day, tenant_id, accepted) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (session_id, day) DO UPDATE SET accepted = accepted + 1",
        (session_id, day, tenant_id),
    )


def count_sent(conn: sqlite3.Connection, tenant_id: str, session_id: str, day: str) -> None:
    conn.execute(
        "INSERT INTO message_counts (session_id, day, tenant_id, sent) VALUES (?, ?, ?, 1) "
        "ON CONFLICT (session_id, day) DO UPDATE SET sent = sent + 1",
        (session_id, day, tenant_id),
    )


def accepted_on(conn: sqlite3.Connection, tenant_id: str, day: str) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(accepted), 0) FROM message_counts WHERE tenant_id = ? AND day = ?",
        (tenant_id, day),
    ).fetchone()
    return int(row[0])


async def sent_on(db: Store, tenant_id: str, session_id: str, day: str) -> int:
    value = await db.fetchval(
        "SELECT sent FROM message_counts WHERE session_id = ? AND day = ? AND tenant_id = ?",
        (session_id, day, tenant_id),
    )
    return int(value or 0)


# -- idempotency keys ------------------------------------------------------------------------


def get_key(conn: sqlite3.Connection, tenant_id: str, key: str) -> tuple[str, str] | None:
    """(request_hash, message_id) of a key used before."""
    row = conn.execute(
        "SELECT request_hash, message_id FROM idempotency_keys WHERE tenant_id = ? AND key = ?",
        (tenant_id, key),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


async def get_key_async(db: Store, tenant_id: str, key: str) -> tuple[str, str] | None:
    row = await db.fetchone(
        "SELECT request_hash, message_id FROM idempotency_keys WHERE tenant_id = ? AND key = ?",
        (tenant_id, key),
    )
    return None if row is None else (str(row[0]), str(row[1]))


def delete_key(conn: sqlite3.Connection, tenant_id: str, key: str) -> None:
    conn.execute("DELETE FROM idempotency_keys WHERE tenant_id = ? AND key = ?", (tenant_id, key))


def insert_key(conn: sqlite3.Connection, tenant_id: str, key: str, request_hash: str,
               message_id: str, now: str) -> None:
    conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, message_id, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (tenant_id, key, request_hash, message_id, now),
    )


def purge_keys(conn: sqlite3.Connection, older_than: str) -> int:
    """Every tenant's keys past their lifetime (a maintenance job, hence no tenant id)."""
    return conn.execute(
        "DELETE FROM idempotency_keys WHERE created_at < ?", (older_than,)
    ).rowcount
