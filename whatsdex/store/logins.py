"""Server-side login sessions and the failed-login counters that throttle guessing."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store


def insert_session(
    conn: sqlite3.Connection, *, token_hash: str, user_id: str, now: str,
    expires_at: str, ip: str, user_agent: str,
) -> None:
    conn.execute(
        "INSERT INTO login_sessions (token_hash, user_id, created_at, last_seen_at, "
        "expires_at, ip, user_agent) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (token_hash, user_id, now, now, expires_at, ip, user_agent[:300]),
    )


async def find_session(db: Store, token_hash: str) -> sqlite3.Row | None:
    """The session joined with its user and the user's tenant status."""
    return await db.fetchone(
        "SELECT s.token_hash, s.created_at, s.last_seen_at, s.expires_at, "
        "u.id AS user_id, u.email, u.name, u.role, u.tenant_id, t.status AS tenant_status "
        "FROM login_sessions s JOIN users u ON u.id = s.user_id "
        "LEFT JOIN tenants t ON t.id = u.tenant_id WHERE s.token_hash = ?",
        (token_hash,),
    )


def touch_session(conn: sqlite3.Connection, token_hash: str, now: str) -> None:
    conn.execute("UPDATE login_sessions SET last_seen_at = ? WHERE token_hash = ?",
                 (now, token_hash))


def delete_session(conn: sqlite3.Connection, token_hash: str) -> int:
    return conn.execute("DELETE FROM login_sessions WHERE token_hash = ?", (token_hash,)).rowcount


def delete_user_sessions(conn: sqlite3.Connection, user_id: str) -> int:
    return conn.execute("DELETE FROM login_sessions WHERE user_id = ?", (user_id,)).rowcount


def delete_expired_sessions(conn: sqlite3.Connection, now: str, idle_before: str) -> int:
    return conn.execute(
        "DELETE FROM login_sessions WHERE expires_at <= ? OR last_seen_at <= ?", (now, idle_before)
    ).rowcount


def get_failures(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT failures, window_started_at, locked_until FROM login_failures WHERE key = ?",
        (key,),
    ).fetchone()
    return row


async def locked_until(db: Store, keys: list[str], now: str) -> str | None:
    """The latest lock still in force among these keys, if any."""
    marks = ", ".join("?" * len(keys))
    value = await db.fetchval(
        f"SELECT max(locked_until) FROM login_failures WHERE key IN ({marks}) "
        "AND locked_until > ?",
        (*keys, now),
    )
    return str(value) if value else None


def set_failures(
    conn: sqlite3.Connection, key: str, failures: int, window_started_at: str,
    locked_until: str | None,
) -> None:
    conn.execute(
        "INSERT INTO login_failures (key, failures, window_started_at, locked_until) "
        "VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET failures = excluded.failures, "
        "window_started_at = excluded.window_started_at, locked_until = excluded.locked_until",
        (key, failures, window_started_at, locked_until),
    )


def clear_failures(conn: sqlite3.Connection, key: str) -> None:
    conn.execute("DELETE FROM login_failures WHERE key = ?", (key,))


def delete_stale_failures(conn: sqlite3.Connection, window_before: str, now: str) -> int:
    """Counters whose window and lock are both over: they no longer throttle anyone."""
    return conn.execute(
        "DELETE FROM login_failures WHERE window_started_at <= ? "
        "AND (locked_until IS NULL OR locked_until <= ?)",
        (window_before, now),
    ).rowcount
