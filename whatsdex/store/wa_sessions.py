"""Linked numbers ("sessions"), their transition history and their encrypted auth blobs."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import WaSession, WaSessionTransition, columns, from_row, from_rows

_COLS = columns(WaSession)
_HISTORY_COLS = columns(WaSessionTransition)
_IDENTITY_FIELDS = ("phone", "jid", "lid", "push_name")


def insert(conn: sqlite3.Connection, session: WaSession) -> None:
    conn.execute(
        f"INSERT INTO wa_sessions ({_COLS}) "
        f"VALUES ({', '.join('?' * len(WaSession.__struct_fields__))})",
        [getattr(session, name) for name in WaSession.__struct_fields__],
    )


def count_for_tenant(conn: sqlite3.Connection, tenant_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM wa_sessions WHERE tenant_id = ?", (tenant_id,))
    return int(row.fetchone()[0])


async def get(db: Store, tenant_id: str, session_id: str) -> WaSession | None:
    row = await db.fetchone(
        f"SELECT {_COLS} FROM wa_sessions WHERE tenant_id = ? AND id = ?", (tenant_id, session_id)
    )
    return from_row(WaSession, row)


def get_sync(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> WaSession | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM wa_sessions WHERE tenant_id = ? AND id = ?", (tenant_id, session_id)
    ).fetchone()
    return from_row(WaSession, row)


async def list_for_tenant(db: Store, tenant_id: str) -> list[WaSession]:
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM wa_sessions WHERE tenant_id = ? ORDER BY created_at, id", (tenant_id,)
    )
    return from_rows(WaSession, rows)


async def list_all(db: Store) -> list[WaSession]:
    """Every number of every tenant (the supervisor's view at start)."""
    return from_rows(WaSession, await db.fetchall(f"SELECT {_COLS} FROM wa_sessions ORDER BY id"))


def set_status(
    conn: sqlite3.Connection, tenant_id: str, session_id: str, *, status: str, reason: str,
    now: str,
) -> str | None:
    """Store a transition and its history row; returns the previous status (None: not found)."""
    row = conn.execute(
        "SELECT status FROM wa_sessions WHERE tenant_id = ? AND id = ?", (tenant_id, session_id)
    ).fetchone()
    if row is None:
        return None
    previous = str(row[0])
    conn.execute(
        "UPDATE wa_sessions SET status = ?, status_reason = ?, status_since = ?, updated_at = ? "
        "WHERE id = ?",
        (status, reason, now, now, session_id),
    )
    conn.execute(
        "INSERT INTO wa_session_history (session_id, tenant_id, at, from_status, to_status, "
        "reason) VALUES (?, ?, ?, ?, ?, ?)",
        (session_id, tenant_id, now, previous, status, reason),
    )
    return previous


def set_identity(conn: sqlite3.Connection, tenant_id: str, session_id: str, now: str,
                 **fields: str) -> None:
    """Record who the number is (phone, JID, LID, push name) once the engine knows."""
    fields = {k: v for k, v in fields.items() if k in _IDENTITY_FIELDS and v}
    if not fields:
        return
    assignments = ", ".join(f"{name} = ?" for name in fields)
    conn.execute(
        f"UPDATE wa_sessions SET {assignments}, updated_at = ? WHERE tenant_id = ? AND id = ?",
        [*fields.values(), now, tenant_id, session_id],
    )


def clear_identity(conn: sqlite3.Connection, tenant_id: str, session_id: str, now: str) -> None:
    conn.execute(
        "UPDATE wa_sessions SET jid = '', lid = '', updated_at = ? WHERE tenant_id = ? AND id = ?",
        (now, tenant_id, session_id),
    )


def set_desired(conn: sqlite3.Connection, tenant_id: str, session_id: str, desired: str,
                now: str) -> int:
    return conn.execute(
        "UPDATE wa_sessions SET desired = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
        (desired, now, tenant_id, session_id),
    ).rowcount


def rename(conn: sqlite3.Connection, tenant_id: str, session_id: str, name: str, now: str) -> int:
    return conn.execute(
        "UPDATE wa_sessions SET name = ?, updated_at = ? WHERE tenant_id = ? AND id = ?",
        (name, now, tenant_id, session_id),
    ).rowcount


def delete(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> int:
    return conn.execute(
        "DELETE FROM wa_sessions WHERE tenant_id = ? AND id = ?", (tenant_id, session_id)
    ).rowcount


async def history(db: Store, tenant_id: str, session_id: str, limit: int = 50
                  ) -> list[WaSessionTransition]:
    rows = await db.fetchall(
        f"SELECT {_HISTORY_COLS} FROM wa_session_history WHERE tenant_id = ? AND session_id = ? "
        "ORDER BY id DESC LIMIT ?",
        (tenant_id, session_id, limit),
    )
    return from_rows(WaSessionTransition, rows)


# -- the auth vault --------------------------------------------------------------------------


def put_blob(conn: sqlite3.Connection, tenant_id: str, session_id: str, blob: bytes, *,
             clean: bool, now: str) -> None:
    conn.execute(
        "INSERT INTO wa_auth_vault (session_id, tenant_id, blob, clean, size, snapshot_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(session_id) DO UPDATE SET blob = excluded.blob, "
        "clean = excluded.clean, size = excluded.size, snapshot_at = excluded.snapshot_at",
        (session_id, tenant_id, blob, int(clean), len(blob), now),
    )


def get_blob(conn: sqlite3.Connection, tenant_id: str, session_id: str
             ) -> tuple[bytes, bool] | None:
    row = conn.execute(
        "SELECT blob, clean FROM wa_auth_vault WHERE tenant_id = ? AND session_id = ?",
        (tenant_id, session_id),
    ).fetchone()
    return None if row is None else (bytes(row[0]), bool(row[1]))


def mark_blob_unclean(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> None:
    conn.execute(
        "UPDATE wa_auth_vault SET clean = 0 WHERE tenant_id = ? AND session_id = ?",
        (tenant_id, session_id),
    )


def delete_blob(conn: sqlite3.Connection, tenant_id: str, session_id: str) -> int:
    return conn.execute(
        "DELETE FROM wa_auth_vault WHERE tenant_id = ? AND session_id = ?", (tenant_id, session_id)
    ).rowcount
