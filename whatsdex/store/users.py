"""People who log in: the operator (no tenant) and each tenant's owners and members."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import User, columns, from_row, from_rows

_COLS = columns(User)


def insert_user(conn: sqlite3.Connection, user: User, password_hash: str) -> None:
    conn.execute(
        f"INSERT INTO users ({_COLS}, password_hash) "
        f"VALUES ({', '.join('?' * (len(User.__struct_fields__) + 1))})",
        [*(getattr(user, name) for name in User.__struct_fields__), password_hash],
    )


def email_taken(conn: sqlite3.Connection, email: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone() is not None


async def operator_exists(db: Store) -> bool:
    return bool(await db.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'operator')"))


def operator_exists_sync(conn: sqlite3.Connection) -> bool:
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM users WHERE role = 'operator')")
                .fetchone()[0])


async def find_for_login(db: Store, email: str) -> tuple[User, str] | None:
    """The user and their password hash, by e-mail (case-insensitive)."""
    row = await db.fetchone(f"SELECT {_COLS}, password_hash FROM users WHERE email = ?", (email,))
    if row is None:
        return None
    user = from_row(User, row)
    assert user is not None
    return user, row["password_hash"]


async def get_user(db: Store, user_id: str) -> User | None:
    return from_row(User, await db.fetchone(f"SELECT {_COLS} FROM users WHERE id = ?", (user_id,)))


async def list_tenant_users(db: Store, tenant_id: str) -> list[User]:
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM users WHERE tenant_id = ? ORDER BY role DESC, email", (tenant_id,)
    )
    return from_rows(User, rows)


def get_tenant_user_sync(conn: sqlite3.Connection, tenant_id: str, user_id: str) -> User | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM users WHERE tenant_id = ? AND id = ?", (tenant_id, user_id)
    ).fetchone()
    return from_row(User, row)


def count_owners(conn: sqlite3.Connection, tenant_id: str) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM users WHERE tenant_id = ? AND role = 'owner'", (tenant_id,)
    ).fetchone()[0])


def set_role(conn: sqlite3.Connection, tenant_id: str, user_id: str, role: str) -> int:
    return conn.execute(
        "UPDATE users SET role = ? WHERE tenant_id = ? AND id = ?", (role, tenant_id, user_id)
    ).rowcount


def delete_tenant_user(conn: sqlite3.Connection, tenant_id: str, user_id: str) -> int:
    return conn.execute(
        "DELETE FROM users WHERE tenant_id = ? AND id = ?", (tenant_id, user_id)
    ).rowcount


def set_password_hash(conn: sqlite3.Connection, user_id: str, password_hash: str) -> None:
    conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


def mark_login(conn: sqlite3.Connection, user_id: str, now: str) -> None:
    conn.execute("UPDATE users SET last_login_at = ? WHERE id = ?", (now, user_id))
