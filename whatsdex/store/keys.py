"""SQL for the key tables: `tenant_keys`, `key_escrow` and the `master_key_id` row of `instance`.

Only wrapped (encrypted) keys and key fingerprints are stored here, never a usable key.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from whatsdex.errors import ConfigError
from whatsdex.store import connection
from whatsdex.store.database import Store

MASTER_KEY_ID = "master_key_id"


@dataclass(frozen=True, slots=True)
class TenantKeyRow:
    tenant_id: str
    wrapped_key: bytes = field(repr=False)
    master_key_id: str
    created_at: str
    rewrapped_at: str | None


@dataclass(frozen=True, slots=True)
class EscrowRow:
    kdf: str
    kdf_params: str  # JSON text, so the cost can change without a migration
    salt: bytes
    wrapped_master_key: bytes = field(repr=False)
    master_key_id: str
    created_at: str


_TENANT_COLS = "tenant_id, wrapped_key, master_key_id, created_at, rewrapped_at"
_ESCROW_COLS = "kdf, kdf_params, salt, wrapped_master_key, master_key_id, created_at"


def _tenant_key(row: sqlite3.Row | None) -> TenantKeyRow | None:
    if row is None:
        return None
    return TenantKeyRow(row[0], bytes(row[1]), row[2], row[3], row[4])


def _escrow(row: sqlite3.Row | None) -> EscrowRow | None:
    if row is None:
        return None
    return EscrowRow(row[0], row[1], bytes(row[2]), bytes(row[3]), row[4], row[5])


# -- the master key id -----------------------------------------------------------------------


def get_master_key_id(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM instance WHERE key = ?", (MASTER_KEY_ID,)).fetchone()
    return None if row is None else str(row[0])


def record_master_key_id(conn: sqlite3.Connection, key_id: str) -> str:
    """Record the id if none is recorded yet; return the id the database holds afterwards."""
    conn.execute(
        "INSERT OR IGNORE INTO instance (key, value) VALUES (?, ?)", (MASTER_KEY_ID, key_id)
    )
    recorded = get_master_key_id(conn)
    assert recorded is not None
    return recorded


def replace_master_key_id(conn: sqlite3.Connection, old_id: str, new_id: str) -> bool:
    """Compare-and-swap: False when the database no longer records `old_id`."""
    return (
        conn.execute(
            "UPDATE instance SET value = ? WHERE key = ? AND value = ?",
            (new_id, MASTER_KEY_ID, old_id),
        ).rowcount
        == 1
    )


# -- tenant data keys ------------------------------------------------------------------------


async def get_tenant_key(db: Store, tenant_id: str) -> TenantKeyRow | None:
    row = await db.fetchone(
        f"SELECT {_TENANT_COLS} FROM tenant_keys WHERE tenant_id = ?", (tenant_id,)
    )
    return _tenant_key(row)


def get_tenant_key_sync(conn: sqlite3.Connection, tenant_id: str) -> TenantKeyRow | None:
    row = conn.execute(
        f"SELECT {_TENANT_COLS} FROM tenant_keys WHERE tenant_id = ?", (tenant_id,)
    ).fetchone()
    return _tenant_key(row)


def tenant_exists(conn: sqlite3.Connection, tenant_id: str) -> bool:
    return conn.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone() is not None


def insert_tenant_key(
    conn: sqlite3.Connection, tenant_id: str, wrapped_key: bytes, master_key_id: str, now: str
) -> TenantKeyRow:
    """Insert unless a key exists already; return the row that won (ours or an earlier one)."""
    conn.execute(
        "INSERT OR IGNORE INTO tenant_keys (tenant_id, wrapped_key, master_key_id, created_at)"
        " VALUES (?, ?, ?, ?)",
        (tenant_id, wrapped_key, master_key_id, now),
    )
    row = get_tenant_key_sync(conn, tenant_id)
    assert row is not None
    return row


def all_tenant_keys(conn: sqlite3.Connection) -> list[TenantKeyRow]:
    rows = conn.execute(f"SELECT {_TENANT_COLS} FROM tenant_keys ORDER BY tenant_id").fetchall()
    return [r for r in map(_tenant_key, rows) if r is not None]


def rewrap_tenant_key(
    conn: sqlite3.Connection, tenant_id: str, wrapped_key: bytes, master_key_id: str, now: str
) -> None:
    conn.execute(
        "UPDATE tenant_keys SET wrapped_key = ?, master_key_id = ?, rewrapped_at = ?"
        " WHERE tenant_id = ?",
        (wrapped_key, master_key_id, now, tenant_id),
    )


def count_tenant_keys(conn: sqlite3.Connection) -> dict[str, int]:
    """Number of tenant keys per master key id (more than one id means a broken rotation)."""
    rows = conn.execute(
        "SELECT master_key_id, count(*) FROM tenant_keys GROUP BY master_key_id"
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


# -- escrow ----------------------------------------------------------------------------------


def get_escrow(conn: sqlite3.Connection) -> EscrowRow | None:
    return _escrow(conn.execute(f"SELECT {_ESCROW_COLS} FROM key_escrow WHERE id = 1").fetchone())


def put_escrow(conn: sqlite3.Connection, escrow: EscrowRow) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO key_escrow (id, {_ESCROW_COLS}) VALUES (1, ?, ?, ?, ?, ?, ?)",
        (
            escrow.kdf,
            escrow.kdf_params,
            escrow.salt,
            escrow.wrapped_master_key,
            escrow.master_key_id,
            escrow.created_at,
        ),
    )


def delete_escrow(conn: sqlite3.Connection) -> bool:
    return conn.execute("DELETE FROM key_escrow WHERE id = 1").rowcount > 0


@dataclass(frozen=True, slots=True)
class KeyState:
    master_key_id: str | None
    tenant_keys: dict[str, int]  # count per master key id
    escrow: EscrowRow | None


def read_key_state(db_path: Path) -> KeyState | None:
    """The key tables of a database FILE, opened read-only: nothing is created or changed.

    Used by `key status` and before a restore, when no key is at hand. None for a database
    without the key tables (never migrated that far).
    """
    try:
        conn = connection.open_readonly(db_path)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {db_path}: {exc}") from None
    try:
        has_tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('instance', 'tenant_keys', 'key_escrow')"
        ).fetchone()[0]
        if has_tables != 3:
            return None
        return KeyState(get_master_key_id(conn), count_tenant_keys(conn), get_escrow(conn))
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{db_path} is not a readable WhatsDeX database: {exc}") from None
    finally:
        conn.close()
