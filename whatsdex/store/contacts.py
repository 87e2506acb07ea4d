"""Contacts as inbound messages need them: found by phone, JID or LID, and kept up to date."""

from __future__ import annotations

import sqlite3

_IDENTITY = ("phone", "jid", "lid", "push_name")


def find(conn: sqlite3.Connection, tenant_id: str, *, phone: str = "", jid: str = "",
         lid: str = "") -> sqlite3.Row | None:
    """The contact by phone first (the stable key), then JID, then LID."""
    lookups = (("phone", phone), ("jid", jid), ("lid", lid))
    for column, value in lookups:
        if not value:
            continue
        # `column != ''` lets SQLite use the partial index on that column.
        row = conn.execute(
            f"SELECT id, phone, jid, lid, push_name FROM contacts "
            f"WHERE tenant_id = ? AND {column} = ? AND {column} != '' "
            "ORDER BY phone = '' LIMIT 1",
            (tenant_id, value),
        ).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
    return None


def insert(conn: sqlite3.Connection, tenant_id: str, contact_id: str, *, phone: str, jid: str,
           lid: str, push_name: str, now: str) -> None:
    conn.execute(
        "INSERT INTO contacts (id, tenant_id, phone, jid, lid, push_name, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (contact_id, tenant_id, phone, jid, lid, push_name, now, now),
    )


def fill_identity(conn: sqlite3.Connection, tenant_id: str, row: sqlite3.Row, *, now: str,
                  **known: str) -> None:
    """Fill in what WhatsApp told us (phone, jid, lid, push name) where it differs."""
    changes = {
        name: value for name, value in known.items()
        if name in _IDENTITY and value and value != row[name]
        # A phone, once known, is the contact's key: never replaced by another.
        and not (name == "phone" and row["phone"])
    }
    if not changes:
        return
    assignments = ", ".join(f"{name} = ?" for name in changes)
    conn.execute(
        f"UPDATE contacts SET {assignments}, updated_at = ? WHERE id = ? AND tenant_id = ?",
        [*changes.values(), now, row["id"], tenant_id],
    )
