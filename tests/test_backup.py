"""Backups and restore on real files: consistency under writes, retention, locking, refusals."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from whatsdex import backups
from whatsdex.backups import BackupBusy, InvalidBackup
from whatsdex.cli import backup as cli_backup
from whatsdex.errors import Conflict, DatabaseTooNew, WhatsdexError
from whatsdex.settings import Settings
from whatsdex.store import Store, migrations
from whatsdex.store import backup as store_backup
from whatsdex.store.lock import DataDirLock


@pytest.fixture
def cfg(settings: Settings) -> Settings:
    return dataclasses.replace(settings, backup_keep=3)


@pytest.fixture
def live(cfg: Settings) -> Iterator[Store]:
    """The real store with a test table holding enough rows to span many pages."""
    store = Store(cfg.db_path)
    store.open()
    store.write_sync(
        lambda c: c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    )
    _insert(store, 300, "seed")
    yield store
    store.close()


def _insert(store: Store, count: int, label: str) -> None:
    store.write_sync(
        lambda c: c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO items (body) SELECT ? || hex(randomblob(200)) FROM n",
            (count, label),
        )
    )


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _ids(path: Path) -> list[int]:
    return [int(row[0]) for row in _query(path, "SELECT id FROM items ORDER BY id")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(directory: Path) -> dict[str, bytes]:
    """Every file under a directory with its bytes, lock files excluded (their text changes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in ("whatsdex.lock", backups.LOCK_NAME)
    }


# -- backup --------------------------------------------------------------------------------


def test_backup_under_writes_is_consistent_and_restores(
    cfg: Settings, live: Store, tmp_path: Path
) -> None:
    committed: list[int | None] = []
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            rid = live.write_sync(
                lambda c: c.execute("INSERT INTO items (body) VALUES ('background')").lastrowid
            )
            committed.append(rid)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    while len(committed) < 20:
        stop.wait(0.001)
    before_start = list(committed)
    during: list[int | None] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "copying" and done == 0:
            # The snapshot is held now: writers must not wait for it, and must not show up in it.
            for _ in range(200):
                during.append(
                    live.write_sync(
                        lambda c: c.execute("INSERT INTO items (body) VALUES ('during')").lastrowid
                    )
                )

    try:
        info = backups.create_backup(cfg, progress=progress)
    finally:
        stop.set()
        writer.join()

    assert len(during) == 200
    assert info.path.parent == cfg.backups_dir
    assert backups.NAME_RE.match(info.path.name)
    ids = _ids(info.path)
    assert ids == list(range(1, len(ids) + 1))  # a prefix of the commits: one snapshot
    assert set(before_start) <= set(ids)
    assert not set(during) & set(ids)

    manifest = json.loads(info.manifest_path.read_text())
    assert manifest["file"] == info.path.name
    assert manifest["sha256"] == _sha256(info.path) == info.sha256
    assert manifest["size"] == info.path.stat().st_size
    assert manifest["migrations"] == migrations.known_names()
    (instance_id,) = _query(cfg.db_path, "SELECT value FROM instance WHERE key = 'id'")[0]
    assert manifest["instance_id"] == instance_id
    assert manifest["scheduled"] is False
    # Self-contained: a rollback-journal file, no -wal or -shm beside it.
    assert _query(info.path, "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in cfg.backups_dir.iterdir()) == sorted(
        [info.path.name, info.manifest_path.name, backups.LOCK_NAME]
    )

    fresh = dataclasses.replace(cfg, data_dir=tmp_path / "fresh")
    result = backups.restore_backup(fresh, info.path)
    assert result.replaced is None
    restored = Store(fresh.db_path)
    restored.open()
    try:
        with restored.read_sync() as conn:
            restored_ids = [row[0] for row in conn.execute("SELECT id FROM items ORDER BY id")]
            assert [tuple(r) for r in conn.execute("PRAGMA integrity_check")] == [("ok",)]
    finally:
        restored.close()
    assert restored_ids == ids


def test_backup_to_a_path_and_to_a_directory(cfg: Settings, live: Store, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "mine.sqlite"
    target.parent.mkdir()
    info = backups.create_backup(cfg, dest=target)
    assert info.path == target
    assert (tmp_path / "elsewhere" / "mine.sqlite.json").exists()
    with pytest.raises(Conflict, match="already exists"):
        backups.create_backup(cfg, dest=target)
    in_dir = backups.create_backup(cfg, dest=target.parent)
    assert in_dir.path.parent == target.parent
    assert backups.NAME_RE.match(in_dir.path.name)
    with pytest.raises(WhatsdexError, match="live database"):
        backups.create_backup(cfg, dest=cfg.db_path.with_name("whatsdex.db-journal"))
    # Backups written outside the backups dir are not listed there.
    assert backups.list_backups(cfg) == []


def test_retention_keeps_the_newest_scheduled_backups_only(cfg: Settings, live: Store) -> None:
    cfg.backups_dir.mkdir()
    foreign = {
        "notes.txt": b"keep me",
        "whatsdex-old.db": b"not a backup of ours",
        "whatsdex-20200101T000000Z.db": b"our name, but no manifest",
        "other.json": b'{"not": "a manifest"}',
    }
    for name, content in foreign.items():
        (cfg.backups_dir / name).write_bytes(content)
    manual = backups.create_backup(cfg)
    made = [backups.create_backup(cfg, scheduled=True) for _ in range(5)]

    scheduled = [i.path for i in backups.list_backups(cfg) if i.scheduled]
    assert scheduled == [i.path for i in made[-3:]]
    for old in made[:2]:
        assert not old.path.exists()
        assert not old.manifest_path.exists()
    assert manual.path.exists()
    assert manual.manifest_path.exists()
    for name, content in foreign.items():
        assert (cfg.backups_dir / name).read_bytes() == content
    latest = backups.latest_backup(cfg)
    assert latest is not None
    assert latest.path == made[-1].path


def test_a_second_backup_at_the_same_time_is_refused(cfg: Settings, live: Store) -> None:
    refused: list[BackupBusy] = []

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "copying" and done == 0 and not refused:
            with pytest.raises(BackupBusy) as caught:
                backups.create_backup(cfg)
            refused.append(caught.value)

    first = backups.create_backup(cfg, progress=progress)
    assert refused
    assert isinstance(refused[0], Conflict)
    assert "already running" in refused[0].message
    assert [i.path for i in backups.list_backups(cfg)] == [first.path]
    backups.create_backup(cfg)  # the lock was released


def test_a_backup_in_another_process_blocks_this_one(cfg: Settings, live: Store) -> None:
    cfg.backups_dir.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(cfg.backups_dir / backups.LOCK_NAME),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BackupBusy):
            backups.create_backup(cfg)
    finally:
        holder.communicate("")
    backups.create_backup(cfg)


def test_backup_without_a_database_is_an_error(cfg: Settings) -> None:
    with pytest.raises(WhatsdexError, match="no database"):
        backups.create_backup(cfg)


# -- restore -------------------------------------------------------------------------------


@pytest.fixture
def good_backup(cfg: Settings, live: Store, tmp_path: Path) -> backups.BackupInfo:
    """A backup of the live store, then the store closed (as a restore requires)."""
    info = backups.create_backup(cfg, dest=tmp_path / "good.db")
    _insert(live, 5, "after-backup")
    live.close()
    return info


def _corrupt_page(good: Path, dest: Path) -> None:
    """Zero the root page of `items`: a valid header, but a broken b-tree."""
    shutil.copyfile(good, dest)
    ((root,),) = _query(dest, "SELECT rootpage FROM sqlite_master WHERE name = 'items'")
    ((page_size,),) = _query(dest, "PRAGMA page_size")
    with dest.open("r+b") as f:
        f.seek((int(root) - 1) * int(page_size))
        f.write(b"\0" * int(page_size))


def _truncated(good: Path, dest: Path) -> None:
    dest.write_bytes(good.read_bytes()[: good.stat().st_size // 3])


def _garbage(good: Path, dest: Path) -> None:
    dest.write_bytes(b"this is a text file, not a database\n" * 100)


def _foreign_sqlite(good: Path, dest: Path) -> None:
    conn = sqlite3.connect(dest)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('hello')")
    conn.commit()
    conn.close()


def _newer(good: Path, dest: Path) -> None:
    shutil.copyfile(good, dest)
    conn = sqlite3.connect(dest)
    conn.execute(
        f"INSERT INTO {migrations.MIGRATIONS_TABLE} (migration_set, name, applied_at) "
        "VALUES (?, 'm9999_from_the_future', '2999-01-01')",
        (migrations.MIGRATION_SET,),
    )
    conn.commit()
    conn.close()


def _checksum_mismatch(good: Path, dest: Path) -> None:
    """A sound database whose bytes no longer match the manifest copied beside it."""
    dest = dest.with_name(good.name)
    shutil.copyfile(good, dest)
    shutil.copyfile(backups.manifest_path(good), backups.manifest_path(dest))
    conn = sqlite3.connect(dest)
    conn.execute("UPDATE items SET body = 'tampered' WHERE id = 1")
    conn.commit()
    conn.close()


REFUSALS: list[tuple[str, Callable[[Path, Path], None], type[Exception], str]] = [
    ("corrupt page", _corrupt_page, InvalidBackup, "integrity check|malformed"),
    ("truncated", _truncated, InvalidBackup, "not a readable|integrity|malformed"),
    ("not sqlite", _garbage, InvalidBackup, "not an SQLite database"),
    ("other sqlite", _foreign_sqlite, InvalidBackup, "not a WhatsDeX one"),
    ("newer", _newer, DatabaseTooNew, "newer WhatsDeX.*m9999_from_the_future"),
    ("checksum", _checksum_mismatch, InvalidBackup, "does not match the checksum"),
]


@pytest.mark.parametrize(
    ("make", "error", "message"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_restore_refuses_a_bad_file_and_touches_nothing(
    cfg: Settings,
    good_backup: backups.BackupInfo,
    tmp_path: Path,
    make: Callable[[Path, Path], None],
    error: type[Exception],
    message: str,
) -> None:
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    make(good_backup.path, bad_dir / "candidate.db")
    (bad,) = [p for p in bad_dir.iterdir() if p.suffix == ".db"]
    before = _files(cfg.data_dir)
    with pytest.raises(error, match=message):
        backups.restore_backup(cfg, bad)
    assert _files(cfg.data_dir) == before


def test_restore_refuses_a_live_database_file(
    cfg: Settings, good_backup: backups.BackupInfo, tmp_path: Path
) -> None:
    """A database in use has committed data in its -wal: copying the main file would lose it."""
    before = _files(cfg.data_dir)
    with pytest.raises(WhatsdexError, match="is the current database"):
        backups.restore_backup(cfg, cfg.db_path)
    other = tmp_path / "other" / "whatsdex.db"
    other.parent.mkdir()
    shutil.copyfile(good_backup.path, other)
    conn = sqlite3.connect(other, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("INSERT INTO items (body) VALUES ('only in the wal')")
        with pytest.raises(InvalidBackup, match="write-ahead log"):
            backups.restore_backup(cfg, other)
    finally:
        conn.close()
    assert _files(cfg.data_dir) == before


def test_restore_refuses_while_the_server_runs(
    cfg: Settings, good_backup: backups.BackupInfo
) -> None:
    before = _files(cfg.data_dir)
    server = DataDirLock(cfg.lock_path)
    server.acquire("serve")
    try:
        with pytest.raises(Conflict, match=r"in use by .*serve"):
            backups.restore_backup(cfg, good_backup.path)
    finally:
        server.release()
    assert _files(cfg.data_dir) == before
    backups.restore_backup(cfg, good_backup.path)  # and works once the server is gone


def test_restore_keeps_the_replaced_file_with_its_wal(
    cfg: Settings, good_backup: backups.BackupInfo, tmp_path: Path
) -> None:
    # A process that commits and dies without a checkpoint: its rows live only in the -wal.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
            "c.execute('PRAGMA journal_mode = WAL'); c.execute('PRAGMA wal_autocheckpoint = 0');"
            "c.execute(\"INSERT INTO items (body) SELECT 'in-wal' FROM items LIMIT 50\");"
            "os._exit(0)",
            str(cfg.db_path),
        ],
        check=True,
    )
    wal = cfg.db_path.with_name("whatsdex.db-wal")
    assert wal.stat().st_size > 0
    main_alone = tmp_path / "main-alone.db"
    shutil.copyfile(cfg.db_path, main_alone)
    assert _query(main_alone, "SELECT count(*) FROM items WHERE body = 'in-wal'") == [(0,)]

    result = backups.restore_backup(cfg, good_backup.path)

    assert result.replaced is not None
    assert result.replaced.name.startswith("whatsdex.db.replaced-")
    assert result.replaced.with_name(result.replaced.name + "-wal").exists()
    assert not wal.exists()
    assert _query(result.replaced, "SELECT count(*) FROM items WHERE body = 'in-wal'") == [(50,)]
    assert _query(
        result.replaced, "SELECT count(*) FROM items WHERE body LIKE 'after-backup%'"
    ) == [(5,)]
    assert _sha256(cfg.db_path) == good_backup.sha256
    assert _ids(cfg.db_path) == _ids(good_backup.path)
    assert _query(cfg.db_path, "SELECT count(*) FROM items WHERE body = 'in-wal'") == [(0,)]
    leftovers = [p.name for p in cfg.data_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []


# -- command line --------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.command()(cli_backup.backup)
    app.command()(cli_backup.restore)
    return app


def test_cli_backup_list_and_restore(
    cli: typer.Typer, cfg: Settings, live: Store, tmp_path: Path
) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(cfg.data_dir)]
    result = runner.invoke(cli, ["backup", *data])
    assert result.exit_code == 0, result.output
    (info,) = backups.list_backups(cfg)
    assert f"backup written: {info.path}" in result.stdout
    assert info.sha256 in result.stdout
    assert "backup: copying: 100%" in result.stderr

    target = tmp_path / "copy.db"
    result = runner.invoke(cli, ["backup", str(target), *data])
    assert result.exit_code == 0, result.output
    assert f"backup written: {target}" in result.stdout

    result = runner.invoke(cli, ["backup", "--list", *data])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{info.created_at}  manual     {info.size / 1_048_576:>7.1f} MB  {info.path}"
    ]

    live.close()
    result = runner.invoke(cli, ["restore", str(target), *data])
    assert result.exit_code == 0, result.output
    assert f"restored {target} into {cfg.db_path}" in result.stdout
    assert "the previous database was kept as " in result.stdout


def test_cli_errors_are_one_line(
    cli: typer.Typer, cfg: Settings, live: Store, tmp_path: Path
) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(cfg.data_dir)]
    bad = tmp_path / "bad.db"
    _garbage(bad, bad)
    result = runner.invoke(cli, ["restore", str(bad), *data])
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"error: {bad} is not an SQLite database"]

    existing = tmp_path / "taken.db"
    existing.write_bytes(b"")
    result = runner.invoke(cli, ["backup", str(existing), *data])
    assert result.exit_code != 0
    assert result.stderr.splitlines() == [
        f"error: {existing} already exists; choose a new file name or a directory"
    ]


@pytest.mark.parametrize("quick", [True, False], ids=["quick_check", "integrity_check"])
def test_both_checks_find_a_broken_page(good_backup: backups.BackupInfo, tmp_path: Path,
                                        quick: bool) -> None:
    """Backups are checked with quick_check, restores with the full check: both see a page
    that is not what its b-tree says."""
    assert store_backup.integrity_problems(good_backup.path, quick=quick) == []
    broken = tmp_path / "broken.db"
    _corrupt_page(good_backup.path, broken)
    try:
        problems = store_backup.integrity_problems(broken, quick=quick)
    except sqlite3.DatabaseError as exc:  # so broken that the check itself cannot run
        problems = [str(exc)]
    assert problems
