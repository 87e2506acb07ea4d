"""The store: one writer thread batching writes (each isolated), async and sync readers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from whatsdex.errors import Conflict, Unavailable
from whatsdex.store import Store
from whatsdex.store.lock import DataDirLock

WAIT = 10.0  # seconds any single future may take before the test calls it hung


def _create_table(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")


def _insert(value: str) -> Callable[[sqlite3.Connection], int]:
    def write(conn: sqlite3.Connection) -> int:
        return conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0

    return write


def _values(path: Path) -> set[str]:
    """What is really in the file, read by a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT v FROM t")}
    finally:
        conn.close()


@pytest.fixture
def table(store: Store) -> Store:
    store.write_sync(_create_table)
    return store


class Gate:
    """Holds the writer inside one write, so that everything submitted meanwhile is one batch."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.future: concurrent.futures.Future[None] | None = None

    def _block(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        assert self.release.wait(WAIT)

    def __enter__(self) -> Gate:
        self.future = self.store.submit(self._block)
        assert self.entered.wait(WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        assert self.future is not None
        self.future.result(WAIT)


# -- writes ------------------------------------------------------------------------------------


async def test_writes_return_their_values(table: Store) -> None:
    first = table.write_sync(_insert("a"))
    second = await table.write(_insert("b"))
    assert (first, second) == (1, 2)
    assert table.submit(_insert("c")).result(WAIT) == 3
    assert table.write_sync(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 3


def test_a_failing_write_does_not_undo_its_batch(table: Store) -> None:
    def half_then_fail(value: str) -> Callable[[sqlite3.Connection], None]:
        def write(conn: sqlite3.Connection) -> None:
            _insert(value)(conn)
            raise ValueError(f"refused {value}")

        return write

    def job(i: int) -> concurrent.futures.Future[object]:
        if i % 10 == 3:
            return table.submit(half_then_fail(f"bad-{i}"))  # type: ignore[return-value]
        if i % 10 == 7:
            return table.submit(_insert("taken"))  # type: ignore[return-value]  # UNIQUE
        return table.submit(_insert(f"v-{i}"))  # type: ignore[return-value]

    table.write_sync(_insert("taken"))
    before = table.transactions
    with Gate(table), concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(job, range(200)))
    concurrent.futures.wait(futures, timeout=WAIT)
    assert table.transactions - before == 2, "the gate, then all 200 writes in one transaction"

    for i, future in enumerate(futures):
        error = future.exception(WAIT)
        if i % 10 == 3:
            assert isinstance(error, ValueError)
        elif i % 10 == 7:
            assert isinstance(error, sqlite3.IntegrityError)
        else:
            assert error is None
    expected = {"taken"} | {f"v-{i}" for i in range(200) if i % 10 not in (3, 7)}
    assert _values(table.path) == expected


def test_a_write_that_raises_leaves_nothing_behind(table: Store) -> None:
    class Refused(Exception):
        pass

    def two_rows_then_fail(conn: sqlite3.Connection) -> None:
        _insert("x")(conn)
        _insert("y")(conn)
        raise Refused

    with pytest.raises(Refused):
        table.write_sync(two_rows_then_fail)
    assert _values(table.path) == set()
    assert table.write_sync(_insert("z")) > 0  # the writer is still fine
    assert _values(table.path) == {"z"}


def test_a_write_that_aborts_the_transaction_never_reports_lost_writes(table: Store) -> None:
    """`OR ROLLBACK` (like a full disk) ends the whole transaction, not only its savepoint."""
    table.write_sync(_insert("taken"))

    def rollback_everything(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR ROLLBACK INTO t (v) VALUES ('taken')")

    with Gate(table):
        before = table.submit(_insert("before"))
        culprit = table.submit(rollback_everything)
        after = table.submit(_insert("after"))

    assert isinstance(culprit.exception(WAIT), sqlite3.IntegrityError)
    present = _values(table.path)
    for value, future in (("before", before), ("after", after)):
        if future.exception(WAIT) is None:
            assert value in present, f"{value!r} was reported committed but is missing"
        else:
            assert value not in present
    assert "after" in present, "writes after the failure still commit"


def test_a_cancelled_write_does_not_run(table: Store) -> None:
    with Gate(table):
        cancelled = table.submit(_insert("cancelled"))
        kept = table.submit(_insert("kept"))
        assert cancelled.cancel()
    assert kept.result(WAIT)
    assert _values(table.path) == {"kept"}


async def test_many_concurrent_writers_commit_in_few_transactions(table: Store) -> None:
    tasks, per_task = 50, 40

    async def writer(n: int) -> list[int]:
        return [await table.write(_insert(f"{n}-{i}")) for i in range(per_task)]

    before = table.transactions
    ids = await asyncio.gather(*(writer(n) for n in range(tasks)))
    transactions = table.transactions - before

    writes = tasks * per_task
    assert len({i for chunk in ids for i in chunk}) == writes
    assert await table.fetchval("SELECT count(*) FROM t") == writes
    assert transactions < writes / 5, f"{writes} writes took {transactions} transactions"


async def test_close_finishes_queued_writes(table: Store) -> None:
    futures = [table.submit(_insert(f"q-{i}")) for i in range(1000)]
    await table.aclose()
    assert all(f.exception(0) is None for f in futures)
    assert _values(table.path) == {f"q-{i}" for i in range(1000)}


def _submit_until_closed(
    store: Store, futures: list[concurrent.futures.Future[object]], stop: threading.Event
) -> None:
    while not stop.is_set():
        try:
            futures.append(store.submit(lambda c: c.execute("INSERT INTO r VALUES (1)")))
        except Unavailable:
            return


def test_close_never_leaves_a_write_waiting(settings_path: Path) -> None:
    """Writes racing with close either commit or fail with Unavailable; none hangs."""
    for _ in range(10):
        store = Store(settings_path)
        store.open()
        store.write_sync(lambda c: c.execute("CREATE TABLE IF NOT EXISTS r (x)"))
        futures: list[concurrent.futures.Future[object]] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=_submit_until_closed, args=(store, futures, stop))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        threading.Event().wait(0.02)
        store.close()
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        done, pending = concurrent.futures.wait(futures, timeout=WAIT)
        assert not pending, f"{len(pending)} writes never finished"
        committed = sum(f.exception() is None for f in done)
        conn = sqlite3.connect(settings_path)
        assert conn.execute("SELECT count(*) FROM r").fetchone()[0] >= committed
        conn.close()


@pytest.fixture
def settings_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "whatsdex.db"


# -- reads -------------------------------------------------------------------------------------


async def test_readers_see_committed_data(table: Store) -> None:
    assert await table.fetchone("SELECT v FROM t") is None
    assert await table.fetchval("SELECT v FROM t") is None
    assert await table.fetchall("SELECT v FROM t") == []

    await table.write(_insert("one"))
    row = await table.fetchone("SELECT id, v FROM t WHERE v = ?", ("one",))
    assert row is not None
    assert (row["id"], row["v"]) == (1, "one")
    await table.write(_insert("two"))
    rows = await table.fetchall("SELECT v FROM t ORDER BY id")
    assert [r["v"] for r in rows] == ["one", "two"]
    assert await table.fetchval("SELECT count(*) FROM t WHERE v LIKE :p", {"p": "t%"}) == 1


def test_read_sync_sees_committed_data(table: Store) -> None:
    with table.read_sync() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    table.write_sync(_insert("one"))
    with table.read_sync() as conn:
        assert [r["v"] for r in conn.execute("SELECT v FROM t")] == ["one"]


EXPECTED_PRAGMAS = {
    "journal_mode": "wal",
    "foreign_keys": 1,
    "synchronous": 1,
    "busy_timeout": 5000,
}


def _pragmas(conn: sqlite3.Connection) -> dict[str, object]:
    names = [*EXPECTED_PRAGMAS, "query_only"]
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}


async def test_pragmas_on_writer_and_readers(table: Store) -> None:
    writer = table.write_sync(_pragmas)
    with table.read_sync() as conn:
        sync_reader = _pragmas(conn)
    async_reader = {
        name: await table.fetchval(f"PRAGMA {name}") for name in [*EXPECTED_PRAGMAS, "query_only"]
    }
    assert writer == {**EXPECTED_PRAGMAS, "query_only": 0}
    assert sync_reader == {**EXPECTED_PRAGMAS, "query_only": 1}
    assert async_reader == {**EXPECTED_PRAGMAS, "query_only": 1}


async def test_readers_cannot_write(table: Store) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await table.fetchall("INSERT INTO t (v) VALUES ('sneaky')")
    with table.read_sync() as conn, pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO t (v) VALUES ('sneaky')")
    assert _values(table.path) == set()


# -- lifecycle ---------------------------------------------------------------------------------


async def test_a_closed_store_is_unavailable(settings_path: Path) -> None:
    store = Store(settings_path)
    with pytest.raises(Unavailable):
        store.write_sync(_create_table)  # never opened
    store.open()
    store.write_sync(_create_table)
    await store.fetchall("SELECT 1")
    await store.aclose()
    assert not store.is_open
    with pytest.raises(Unavailable):
        store.submit(_insert("late"))
    with pytest.raises(Unavailable):
        await store.write(_insert("late"))
    with pytest.raises(Unavailable):
        await store.fetchall("SELECT 1")
    with pytest.raises(Unavailable), store.read_sync():
        pass


def test_reopen_after_close(settings_path: Path) -> None:
    store = Store(settings_path)
    store.open()
    store.write_sync(_create_table)
    store.write_sync(_insert("kept"))
    store.close()
    store.open()
    try:
        assert store.write_sync(_insert("more")) == 2
    finally:
        store.close()
    assert _values(settings_path) == {"kept", "more"}


def test_files_are_private_whatever_the_umask(settings_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = Store(settings_path)
        store.open()
        try:
            store.write_sync(_create_table)
            modes = {p.name: p.stat().st_mode & 0o777 for p in settings_path.parent.iterdir()}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert settings_path.parent.stat().st_mode & 0o777 == 0o700
    assert modes["whatsdex.db"] == 0o600
    assert modes.get("whatsdex.db-wal", 0o600) == 0o600
    assert modes.get("whatsdex.db-shm", 0o600) == 0o600


def test_data_dir_lock_is_exclusive_and_says_who_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "whatsdex.lock"
    old = os.umask(0o022)
    try:
        first = DataDirLock(path)
        first.acquire("serve")
    finally:
        os.umask(old)
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(Conflict) as caught:
        DataDirLock(path).acquire("restore")
    assert f"in use by WhatsDeX pid {os.getpid()} (serve)" in caught.value.message
    assert "stop it before trying to restore" in caught.value.message
    first.release()
    with DataDirLock(path):  # released: the next one gets it
        pass
