"""API keys: only their SHA-256 and a visible prefix are stored."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import ApiKey, columns, from_row, from_rows

_COLS = columns(ApiKey)


def insert_key(conn: sqlite3.Connection, key: ApiKey, key_hash: str) -> None:
    conn.execute(
        f"INSERT INTO api_keys ({_COLS}, key_hash) "
        f"VALUES ({', '.join('?' * (len(ApiKey.__struct_fields__) + 1))})",
        [*(getattr(key, name) for name in ApiKey.__struct_fields__), key_hash],
    )


async def find_by_hash(db: Store, key_hash: str) -> tuple[ApiKey, str | None] | None:
    """The key and its tenant's status (None for an operator key or a tenant that is gone),
    in one read: every API request asks."""
    row = await db.fetchone(
        f"SELECT {columns(ApiKey, 'k')}, t.status AS tenant_status FROM api_keys k "
        "LEFT JOIN tenants t ON t.id = k.tenant_id WHERE k.key_hash = ?", (key_hash,))
    if row is None:
        return None
    return from_rows(ApiKey, [row])[0], row["tenant_status"]


async def list_keys(db: Store, tenant_id: str | None) -> list[ApiKey]:
    """A tenant's keys, or the operator's keys when tenant_id is None."""
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM api_keys WHERE tenant_id IS ? ORDER BY created_at DESC",
        (tenant_id,),
    )
    return from_rows(ApiKey, rows)


def get_key_sync(conn: sqlite3.Connection, tenant_id: str | None, key_id: str) -> ApiKey | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM api_keys WHERE tenant_id IS ? AND id = ?", (tenant_id, key_id)
    ).fetchone()
    return from_row(ApiKey, row)


def revoke_key(conn: sqlite3.Connection, tenant_id: str | None, key_id: str, now: str) -> int:
    return conn.execute(
        "UPDATE api_keys SET revoked_at = ? "
        "WHERE tenant_id IS ? AND id = ? AND revoked_at IS NULL",
        (now, tenant_id, key_id),
    ).rowcount


def touch_key(conn: sqlite3.Connection, key_id: str, now: str) -> None:
    conn.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))
