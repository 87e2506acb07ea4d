"""The schema, as an ordered list of named migrations. Never edit an applied migration: add one."""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("whatsdex")


def run_script(db: Database, script: str) -> None:
    """Execute statements one by one: `executescript` would commit the migration's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement.strip()[:80]}")


@MIGRATIONS()
def m0001_instance(db: Database) -> None:
    """Facts about this installation (its id, when it was created), kept with the data."""
    run_script(
        db,
        """
        CREATE TABLE instance (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) STRICT;
        INSERT INTO instance (key, value) VALUES
            ('id', lower(hex(randomblob(16)))),
            ('created_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
        """,
    )
