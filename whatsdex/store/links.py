"""One-purpose link tokens (set-up, invitations, client QR links): only hashes are stored."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import LinkToken, columns, from_row, from_rows

_COLS = columns(LinkToken)


def insert_link(conn: sqlite3.Connection, link: LinkToken, token_hash: str) -> None:
    conn.execute(
        f"INSERT INTO link_tokens ({_COLS}, token_hash) "
        f"VALUES ({', '.join('?' * (len(LinkToken.__struct_fields__) + 1))})",
        [*(getattr(link, name) for name in LinkToken.__struct_fields__), token_hash],
    )


async def find_by_hash(db: Store, token_hash: str) -> LinkToken | None:
    row = await db.fetchone(f"SELECT {_COLS} FROM link_tokens WHERE token_hash = ?",
                            (token_hash,))
    return from_row(LinkToken, row)


def find_by_hash_sync(conn: sqlite3.Connection, token_hash: str) -> LinkToken | None:
    row = conn.execute(f"SELECT {_COLS} FROM link_tokens WHERE token_hash = ?",
                       (token_hash,)).fetchone()
    return from_row(LinkToken, row)


async def list_links(db: Store, tenant_id: str | None, purpose: str) -> list[LinkToken]:
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM link_tokens WHERE tenant_id IS ? AND purpose = ? "
        "ORDER BY created_at DESC",
        (tenant_id, purpose),
    )
    return from_rows(LinkToken, rows)


def mark_used(conn: sqlite3.Connection, link_id: str, now: str) -> int:
    """Single use: only the first caller gets rowcount 1."""
    return conn.execute(
        "UPDATE link_tokens SET used_at = ? WHERE id = ? AND used_at IS NULL "
        "AND revoked_at IS NULL",
        (now, link_id),
    ).rowcount


def revoke_link(conn: sqlite3.Connection, tenant_id: str | None, link_id: str, now: str) -> int:
    return conn.execute(
        "UPDATE link_tokens SET revoked_at = ? WHERE tenant_id IS ? AND id = ? "
        "AND revoked_at IS NULL",
        (now, tenant_id, link_id),
    ).rowcount


def revoke_purpose(conn: sqlite3.Connection, purpose: str, now: str) -> int:
    return conn.execute(
        "UPDATE link_tokens SET revoked_at = ? WHERE purpose = ? AND revoked_at IS NULL "
        "AND used_at IS NULL",
        (now, purpose),
    ).rowcount
