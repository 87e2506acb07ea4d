"""Numbered schema migrations (sqlite-utils `Migrations`), and the refusal of newer databases.

Each migration is a function named `mNNNN_what`, applied once inside a transaction together
with its record in `_sqlite_migrations`. A database that records a migration this binary does
not know was written by a newer WhatsDeX: it is refused before anything touches it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from whatsdex.errors import DatabaseTooNew
from whatsdex.store import connection
from whatsdex.store.schema import MIGRATIONS

MIGRATION_SET = MIGRATIONS.name
MIGRATIONS_TABLE = Migrations.migrations_table


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    name: str
    applied_at: str | None  # None = pending


def known_names() -> list[str]:
    return [m.name for m in MIGRATIONS._migrations]


def applied_names(conn: sqlite3.Connection) -> list[str]:
    """Migrations recorded in the file, in the order they were applied."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone()
    if not exists:
        return []
    rows = conn.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY rowid",
        (MIGRATION_SET,),
    ).fetchall()
    return [row[0] for row in rows]


def check_not_newer(conn: sqlite3.Connection, path: Path | str = "the database") -> None:
    """Raise DatabaseTooNew when the file records migrations this binary does not have."""
    unknown = [name for name in applied_names(conn) if name not in set(known_names())]
    if unknown:
        raise DatabaseTooNew(
            f"{path} was migrated by a newer WhatsDeX (unknown migrations: "
            f"{', '.join(unknown)}); upgrade WhatsDeX or restore an older backup",
            detail={"unknown_migrations": unknown},
        )


def check_file_not_newer(path: Path) -> None:
    """The same check on a file, opened read-only so that a refused file is left untouched."""
    if not path.exists():
        return
    conn = connection.open_untouched(path)
    try:
        check_not_newer(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DatabaseTooNew(f"{path} is not a readable WhatsDeX database: {exc}") from None
    finally:
        conn.close()


def status(conn: sqlite3.Connection) -> list[MigrationStatus]:
    """Every known migration with when it was applied (None when pending)."""
    applied: dict[str, str] = {}
    if applied_names(conn):
        applied = {
            row[0]: row[1]
            for row in conn.execute(
                f"SELECT name, applied_at FROM {MIGRATIONS_TABLE} WHERE migration_set = ?",
                (MIGRATION_SET,),
            )
        }
    return [MigrationStatus(name, applied.get(name)) for name in known_names()]


def pending(conn: sqlite3.Connection) -> list[str]:
    done = set(applied_names(conn))
    return [name for name in known_names() if name not in done]


def apply(conn: sqlite3.Connection) -> list[str]:
    """Apply pending migrations; returns their names. Refuses a newer database first."""
    check_not_newer(conn)
    todo = pending(conn)
    if todo:
        MIGRATIONS.apply(Database(conn))
    return todo
