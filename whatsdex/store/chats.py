"""Chats: one conversation of one number with a person or a group, with its unread count."""

from __future__ import annotations

import sqlite3

import msgspec

from whatsdex.store.database import Store


class Chat(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    session_id: str
    jid: str
    lid: str
    is_group: bool
    contact_id: str | None
    name: str
    last_message_at: str
    last_preview: str
    unread: int
    # From the chat's contact, when there is one (display and CRM matching).
    phone: str = ""
    contact_name: str = ""


_CHAT_FIELDS = tuple(f for f in Chat.__struct_fields__ if f not in ("phone", "contact_name"))
SELECT = (
    "SELECT " + ", ".join(f"ch.{name}" for name in _CHAT_FIELDS)
    + ", coalesce(co.phone, '') AS phone, "
    "coalesce(nullif(co.name, ''), co.push_name, '') AS contact_name "
    "FROM chats ch LEFT JOIN contacts co ON co.id = ch.contact_id"
)
PREVIEW_CHARS = 120


def from_row(row: sqlite3.Row) -> Chat:
    values = {name: row[name] for name in Chat.__struct_fields__}
    values["is_group"] = bool(values["is_group"])
    return Chat(**values)


def preview(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


def upsert(
    conn: sqlite3.Connection, tenant_id: str, *, new_id: str, session_id: str, jid: str,
    lid: str = "", is_group: bool = False, contact_id: str | None = None, name: str = "",
    at: str, last_preview: str | None, unread_add: int = 0,
) -> str:
    """The chat's id, created on first use. With a preview, `at` becomes its latest message
    (unless a newer one is there); None (a reaction, an edit) leaves that as it was."""
    row = conn.execute(
        "INSERT INTO chats (id, tenant_id, session_id, jid, lid, is_group, contact_id, name, "
        "last_message_at, last_preview, unread) "
        "VALUES (:id, :tenant, :session, :jid, :lid, :group, :contact, :name, :at, "
        ":preview, :unread) "
        "ON CONFLICT (session_id, jid) DO UPDATE SET "
        "lid = CASE WHEN excluded.lid != '' THEN excluded.lid ELSE chats.lid END, "
        "contact_id = coalesce(excluded.contact_id, chats.contact_id), "
        "name = CASE WHEN excluded.name != '' THEN excluded.name ELSE chats.name END, "
        "last_preview = CASE WHEN :touch AND excluded.last_message_at >= chats.last_message_at "
        "THEN excluded.last_preview ELSE chats.last_preview END, "
        "last_message_at = CASE WHEN :touch "
        "THEN max(chats.last_message_at, excluded.last_message_at) "
        "ELSE chats.last_message_at END, "
        "unread = chats.unread + excluded.unread "
        "RETURNING id, tenant_id",
        {"id": new_id, "tenant": tenant_id, "session": session_id, "jid": jid, "lid": lid,
         "group": int(is_group), "contact": contact_id, "name": name, "at": at,
         "preview": preview(last_preview or ""), "unread": unread_add,
         "touch": int(last_preview is not None)},
    ).fetchone()
    if row["tenant_id"] != tenant_id:  # a number belongs to one tenant: never cross over
        raise ValueError(f"chat {row['id']} belongs to another tenant")
    return str(row["id"])


async def get(db: Store, tenant_id: str, chat_id: str) -> Chat | None:
    row = await db.fetchone(f"{SELECT} WHERE ch.id = ? AND ch.tenant_id = ?",
                            (chat_id, tenant_id))
    return None if row is None else from_row(row)


def get_sync(conn: sqlite3.Connection, tenant_id: str, chat_id: str) -> Chat | None:
    row = conn.execute(f"{SELECT} WHERE ch.id = ? AND ch.tenant_id = ?",
                       (chat_id, tenant_id)).fetchone()
    return None if row is None else from_row(row)


async def page(
    db: Store, tenant_id: str, *, session_id: str | None, after: tuple[str, str] | None,
    limit: int, query: str = "",
) -> list[Chat]:
    """Most recent first; `after` is the (last_message_at, id) of the previous page's last."""
    where = ["ch.tenant_id = ?"]
    params: list[object] = [tenant_id]
    if session_id is not None:
        where.append("ch.session_id = ?")
        params.append(session_id)
    if after is not None:
        where.append("ch.last_message_at <= ? AND (ch.last_message_at < ? OR ch.id < ?)")
        params += [after[0], after[0], after[1]]
    if query:
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append(
            "(ch.name LIKE ? ESCAPE '\\' OR ch.jid LIKE ? ESCAPE '\\' "
            "OR co.name LIKE ? ESCAPE '\\' OR co.push_name LIKE ? ESCAPE '\\' "
            "OR co.phone LIKE ? ESCAPE '\\')"
        )
        params += [pattern] * 5
    rows = await db.fetchall(
        f"{SELECT} WHERE {' AND '.join(where)} ORDER BY ch.last_message_at DESC, ch.id DESC "
        "LIMIT ?",
        [*params, limit],
    )
    return [from_row(row) for row in rows]


def mark_read(conn: sqlite3.Connection, tenant_id: str, chat_id: str) -> int | None:
    """Unread back to 0; returns what it was (None: no such chat)."""
    row = conn.execute(
        "SELECT unread FROM chats WHERE id = ? AND tenant_id = ?", (chat_id, tenant_id)
    ).fetchone()
    if row is None:
        return None
    if row[0]:
        conn.execute("UPDATE chats SET unread = 0 WHERE id = ?", (chat_id,))
    return int(row[0])
