"""The one place that owns `whatsdex.db`: a single writer thread and a pool of async readers.

SQLite allows one writer at a time, so instead of fighting `database is locked` every write is a
function queued to one thread that runs it inside `BEGIN IMMEDIATE`. Writes that arrive while a
transaction is running are grouped into the next one (each in its own savepoint, so one failing
write does not undo its neighbours): many small writes cost one fsync. Readers are aiosqlite
connections, so reads never wait for the writer (WAL).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from whatsdex.errors import Unavailable
from whatsdex.store import connection, migrations

log = logging.getLogger(__name__)

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], T]
Params = Sequence[Any] | dict[str, Any]

_MAX_BATCH = 256
_STOP = object()


class Store:
    """Open with `open()` (sync: migrations and the writer) and close with `close()`."""

    def __init__(self, path: Path, *, readers: int = 4) -> None:
        self.path = path
        self._reader_count = readers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: asyncio.Queue[aiosqlite.Connection] | None = None
        self._all_readers: list[aiosqlite.Connection] = []
        self._readers_lock: asyncio.Lock | None = None
        self._sync_reader: sqlite3.Connection | None = None
        self._sync_lock = threading.Lock()
        # Guards `_accepting` so that no write can be queued behind the writer's stop marker.
        self._submit_lock = threading.Lock()
        self._accepting = False
        self.applied_at_open: list[str] = []
        self.transactions = 0  # committed write transactions (batching shows as writes >> this)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def open(self) -> None:
        """Create the file if needed, refuse a newer one, apply migrations, start the writer."""
        if self.is_open:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        migrations.check_file_not_newer(self.path)
        # Private whatever the umask: SQLite gives the -wal and -shm files the same mode.
        self.path.touch(mode=0o600, exist_ok=True)
        conn = connection.connect(self.path, writer=True)
        try:
            self.applied_at_open = migrations.apply(conn)
        except BaseException:
            conn.close()
            raise
        if self.applied_at_open:
            log.info("applied migrations: %s", ", ".join(self.applied_at_open))
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="store-writer", daemon=True
        )
        self._writer.start()
        self._accepting = True

    def close(self) -> None:
        """Finish queued writes, then close every connection (sync part)."""
        with self._submit_lock:
            self._accepting = False
            if self._writer is not None:
                self._queue.put(_STOP)
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._sync_reader is not None:
            self._sync_reader.close()
            self._sync_reader = None

    async def aclose(self) -> None:
        """Close the async readers, then the writer."""
        for conn in self._all_readers:
            with contextlib.suppress(Exception):
                await conn.close()
        self._all_readers.clear()
        self._readers = None
        await asyncio.to_thread(self.close)

    # -- writes ----------------------------------------------------------------------------

    def submit(self, fn: WriteFn[T]) -> concurrent.futures.Future[T]:
        """Queue a write; `fn(conn)` runs in the writer thread inside a transaction."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._submit_lock:
            if not (self._accepting and self.is_open):
                raise Unavailable("the database is not open")
            self._queue.put((fn, future))
        return future

    async def write(self, fn: WriteFn[T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def write_sync(self, fn: WriteFn[T]) -> T:
        return self.submit(fn).result()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                try:
                    self._run_batch(conn, batch)
                except Exception as exc:  # a broken connection: never leave a caller waiting
                    log.exception("write batch failed")
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                if stop:
                    return
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA optimize")
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for _, future in batch:
                if future.set_running_or_notify_cancel():  # a cancelled one cannot take a result
                    future.set_exception(exc)
            return
        for fn, future in batch:
            if not future.set_running_or_notify_cancel():
                continue
            conn.execute("SAVEPOINT write")
            try:
                value = fn(conn)
            except BaseException as exc:  # the caller gets it; the others still commit
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                else:
                    # SQLite rolled back the whole transaction (disk full, OR ROLLBACK...): the
                    # earlier writes of this batch are gone too, so they must not report success.
                    lost = sqlite3.OperationalError(f"rolled back with a failed write: {exc}")
                    results = [(f, None, err or lost) for f, _, err in results]
                    conn.execute("BEGIN IMMEDIATE")
                results.append((future, None, exc))
            else:
                conn.execute("RELEASE write")
                results.append((future, value, None))
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
                self.transactions += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for future, _, _ in results:
                future.set_exception(exc)
            return
        for future, value, error in results:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    # -- reads -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _reader(self) -> Any:
        if not self.is_open:
            raise Unavailable("the database is not open")
        if self._readers is None:
            if self._readers_lock is None:
                self._readers_lock = asyncio.Lock()
            async with self._readers_lock:
                if self._readers is None:
                    pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
                    for _ in range(self._reader_count):
                        conn = await aiosqlite.connect(
                            self.path, isolation_level=None, check_same_thread=False
                        )
                        conn.row_factory = sqlite3.Row
                        for statement in connection.pragmas(readonly=True):
                            await conn.execute(statement)
                        self._all_readers.append(conn)
                        pool.put_nowait(conn)
                    self._readers = pool
        assert self._readers is not None
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._reader() as conn:
            rows = await conn.execute_fetchall(sql, params)
            return list(rows)

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        # One call into the reader's thread: a cursor left half-read by a cancelled task would
        # keep that connection on an old snapshot (stale reads, blocked checkpoints).
        async with self._reader() as conn:
            rows = list(await conn.execute_fetchall(sql, params))
            return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Params = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]

    @contextlib.contextmanager
    def read_sync(self) -> Iterator[sqlite3.Connection]:
        """A read connection for synchronous callers (CLI, worker threads), one at a time."""
        if not self.is_open:
            raise Unavailable("the database is not open")
        with self._sync_lock:
            if self._sync_reader is None:
                self._sync_reader = connection.connect(self.path, readonly=True)
            yield self._sync_reader
