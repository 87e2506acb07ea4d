"""Migrations: applied once, listed, and a database from a newer WhatsDeX left untouched."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from whatsdex.errors import DatabaseTooNew
from whatsdex.settings import Settings
from whatsdex.store import Store, migrations

FUTURE = "m9999_from_the_future"


def _recorded(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT name FROM {migrations.MIGRATIONS_TABLE} WHERE migration_set = ? "
                "ORDER BY rowid",
                (migrations.MIGRATION_SET,),
            )
        ]
    finally:
        conn.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sidecars(path: Path) -> set[str]:
    return {p.name for p in path.parent.glob(path.name + "-*")}


@pytest.fixture
def newer_db(settings: Settings) -> Path:
    """A database whose record names a migration this binary does not know."""
    store = Store(settings.db_path)
    store.open()
    store.close()
    conn = sqlite3.connect(settings.db_path)
    conn.execute(
        f"INSERT INTO {migrations.MIGRATIONS_TABLE} (migration_set, name, applied_at) "
        "VALUES (?, ?, '2099-01-01 00:00:00+00:00')",
        (migrations.MIGRATION_SET, FUTURE),
    )
    conn.commit()
    conn.close()
    assert _sidecars(settings.db_path) == set(), "a cleanly closed database has no -wal"
    return settings.db_path


def test_known_migrations_are_numbered_and_unique() -> None:
    names = migrations.known_names()
    assert names, "at least one migration"
    assert len(set(names)) == len(names)
    assert names == sorted(names)
    assert all(name[0] == "m" and name[1:5].isdigit() for name in names)


def test_a_fresh_file_gets_every_migration_once(settings: Settings) -> None:
    store = Store(settings.db_path)
    store.open()
    store.close()
    assert store.applied_at_open == migrations.known_names()
    assert _recorded(settings.db_path) == migrations.known_names()

    again = Store(settings.db_path)
    again.open()
    again.close()
    assert again.applied_at_open == []
    assert _recorded(settings.db_path) == migrations.known_names()


def test_instance_facts_are_written_once(settings: Settings) -> None:
    seen = []
    for _ in range(2):
        store = Store(settings.db_path)
        store.open()
        with store.read_sync() as conn:
            seen.append(dict(conn.execute("SELECT key, value FROM instance").fetchall()))
        store.close()
    assert len(seen[0]["id"]) == 32
    assert seen[0] == seen[1], "reopening does not mint a new installation id"


def test_migrate_list(cli: Callable[..., Result], settings: Settings) -> None:
    names = migrations.known_names()
    result = cli("migrate", "--list", "--data-dir", settings.data_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"pending  {name}" for name in names]
    assert not settings.db_path.exists(), "listing does not create the database"

    result = cli("migrate", "--data-dir", settings.data_dir)
    assert result.exit_code == 0, result.output
    assert f"applied {len(names)} migration(s)" in result.stdout

    # Forget the last one, as if this file came from the previous release.
    conn = sqlite3.connect(settings.db_path)
    conn.execute(f"DELETE FROM {migrations.MIGRATIONS_TABLE} WHERE name = ?", (names[-1],))
    conn.commit()
    conn.close()
    result = cli("migrate", "--list", "--data-dir", settings.data_dir)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        *(["applied", name] for name in names[:-1]),
        ["pending", names[-1]],
    ]


def test_a_newer_database_is_refused_and_left_untouched(newer_db: Path) -> None:
    digest, sidecars = _sha256(newer_db), _sidecars(newer_db)
    store = Store(newer_db)
    with pytest.raises(DatabaseTooNew) as caught:
        store.open()
    assert FUTURE in caught.value.message
    assert not store.is_open
    assert _sha256(newer_db) == digest
    assert _sidecars(newer_db) == sidecars == set(), "no -wal or -shm created"


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(settings: Settings) -> None:
    settings.data_dir.mkdir()
    settings.db_path.write_bytes(b"this is not SQLite" * 100)
    digest = _sha256(settings.db_path)
    with pytest.raises(DatabaseTooNew, match="not a readable WhatsDeX database"):
        Store(settings.db_path).open()
    assert _sha256(settings.db_path) == digest


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "0", "--engine", "sandbox"],
        ["migrate"],
        ["migrate", "--list"],
    ],
    ids=["serve", "migrate", "migrate-list"],
)
def test_commands_refuse_a_newer_database(
    cli: Callable[..., Result], newer_db: Path, args: list[str]
) -> None:
    digest = _sha256(newer_db)
    result = cli(*args, "--data-dir", newer_db.parent)
    assert result.exit_code not in (0, None)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ")
    assert "newer WhatsDeX" in errors[0]
    assert FUTURE in errors[0]
    assert "Traceback" not in result.output
    assert _sha256(newer_db) == digest
    assert not Path(f"{newer_db}-wal").exists()
