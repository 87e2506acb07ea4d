"""The simulated WhatsApp network's memory: what each contact received and what it sent.

This file stands in for WhatsApp's servers, not for WhatsDeX data, which is why it is the one
SQLite file kept outside `whatsdex/store/`. Tests and benchmarks read it from other processes to
prove that every message reached its contact exactly once, even when the engine host was killed
in the middle of a send: a delivery row is committed with `synchronous=FULL` before the send is
answered, and a retry of the same outbox id on the same number is counted, not shown again.

Writes go through one thread per engine host that commits whatever is queued in one transaction
(group commit), so a flood of sends costs one fsync per batch, not one per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH = 512  # jobs committed together at most
BUSY_MS = 15000  # other hosts and test processes write and read the same file

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        sender_jid TEXT NOT NULL,
        to_jid TEXT NOT NULL,
        outbox_id TEXT,
        wa_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT NOT NULL DEFAULT '',
        media_sha256 TEXT,
        media_size INTEGER,
        detail TEXT NOT NULL DEFAULT '{}',
        attempts INTEGER NOT NULL DEFAULT 1,
        delivered_at INTEGER NOT NULL,
        last_attempt_at INTEGER NOT NULL
    )""",
    # NULL outbox ids never conflict: only sends that name their outbox row are deduplicated.
    "CREATE UNIQUE INDEX IF NOT EXISTS deliveries_outbox ON deliveries (session, outbox_id)",
    """CREATE TABLE IF NOT EXISTS inbound (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        to_jid TEXT NOT NULL,
        sender_jid TEXT NOT NULL,
        sender_lid TEXT NOT NULL,
        push_name TEXT NOT NULL DEFAULT '',
        wa_id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL DEFAULT 'text',
        text TEXT NOT NULL DEFAULT '',
        timestamp_ms INTEGER NOT NULL,
        sent_at INTEGER NOT NULL,
        acked_at INTEGER
    )""",
    # Messages the number has not confirmed yet are offered again when it reconnects.
    "CREATE INDEX IF NOT EXISTS inbound_pending ON inbound (session, to_jid, id) "
    "WHERE acked_at IS NULL",
    # Who has exchanged messages with whom: the contacts' side of the Signal sessions.
    """CREATE TABLE IF NOT EXISTS contacts (
        our_jid TEXT NOT NULL,
        their_jid TEXT NOT NULL,
        first_at INTEGER NOT NULL,
        PRIMARY KEY (our_jid, their_jid)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS reads (
        id INTEGER PRIMARY KEY,
        session TEXT NOT NULL,
        chat TEXT NOT NULL,
        sender TEXT NOT NULL,
        message_id TEXT NOT NULL,
        read_at INTEGER NOT NULL
    )""",
)


def _connect(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_MS / 1000
    )
    conn.row_factory = sqlite3.Row
    # busy_timeout first: the journal_mode change itself needs a lock another process may hold.
    conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to the network by a number."""

    session: str
    sender_jid: str
    to_jid: str
    outbox_id: str
    wa_id: str
    kind: str
    text: str
    media_sha256: str | None
    media_size: int | None
    detail: str  # JSON of the kind's other fields (location, quoted message, reaction…)
    now_ms: int


@dataclass(frozen=True, slots=True)
class Delivered:
    wa_id: str
    timestamp_ms: int  # of the first delivery: a retry reports the original message
    attempts: int


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message a contact sends to a number."""

    wa_id: str
    sender_jid: str
    sender_lid: str
    push_name: str
    text: str
    timestamp_ms: int
    id: int = 0  # row id, known once recorded


class _Job:
    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop | None,
        future: asyncio.Future[Any] | None,
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future

    def settle(self, value: Any, error: BaseException | None) -> None:
        if self.future is None or self.loop is None:
            if error is not None:
                log.error("sandbox network record: a write failed: %s", error)
            return
        # A closed loop means nobody waits any more; the write itself happened (or not) anyway.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_resolve, self.future, value, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class NetworkRecord:
    """The engine host's handle on the record: one writer thread, jobs answered once durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> None:
        """Create the file and its tables (errors surface here), then start the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path)
        try:
            for statement in SCHEMA:
                conn.execute(statement)
            self._reader = _connect(self.path, synchronous="NORMAL")
            self._reader.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="sandbox-network", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        """Finish every queued job, then stop the writer and close the files."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                last = False
                while len(batch) < BATCH:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        last = True
                        break
                    batch.append(more)
                self._commit(conn, batch)
                if last:
                    return
        finally:
            conn.close()

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                # A savepoint per job: one failing job must not undo the others in the batch.
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((None, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((value, None))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(None, exc)] * len(batch)
        # Only now, after COMMIT (fsync'd): nobody hears of a write that could still be lost.
        for job, (value, error) in zip(batch, outcomes, strict=True):
            job.settle(value, error)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._thread is None:
            raise sqlite3.OperationalError("the sandbox network record is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, future))
        return await future

    def _submit(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue a write nobody waits for (jobs still run in order, before any later read)."""
        if self._closed or self._thread is None:
            raise sqlite3.OperationalError("the sandbox network record is closed")
        self._queue.put(_Job(fn, None, None))

    # -- what engines do -----------------------------------------------------------------------

    async def deliver(self, d: Delivery) -> Delivered:
        """Record a message as shown to the contact; a repeated outbox id only counts an attempt."""

        def write(conn: sqlite3.Connection) -> Delivered:
            row = conn.execute(
                "INSERT INTO deliveries (session, sender_jid, to_jid, outbox_id, wa_id, kind, text,"
                " media_sha256, media_size, detail, attempts, delivered_at, last_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (session, outbox_id) DO UPDATE SET attempts = attempts + 1,"
                " last_attempt_at = excluded.last_attempt_at"
                " RETURNING wa_id, delivered_at, attempts",
                (d.session, d.sender_jid, d.to_jid, d.outbox_id or None, d.wa_id, d.kind, d.text,
                 d.media_sha256, d.media_size, d.detail, d.now_ms, d.now_ms),
            ).fetchone()
            _meet(conn, d.sender_jid, d.to_jid, d.now_ms)
            return Delivered(wa_id=row[0], timestamp_ms=row[1], attempts=row[2])

        return await self._call(write)

    async def add_inbound(self, session: str, to_jid: str, messages: list[Inbound],
                          now_ms: int) -> list[Inbound]:
        """Record messages contacts send to a number, before the number is offered them."""

        def write(conn: sqlite3.Connection) -> list[Inbound]:
            out = []
            for m in messages:
                cursor = conn.execute(
                    "INSERT INTO inbound (session, to_jid, sender_jid, sender_lid, push_name,"
                    " wa_id, text, timestamp_ms, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session, to_jid, m.sender_jid, m.sender_lid, m.push_name, m.wa_id, m.text,
                     m.timestamp_ms, now_ms),
                )
                out.append(_with_id(m, cursor.lastrowid or 0))
            return out

        return await self._call(write)

    async def pending_inbound(self, session: str, to_jid: str, after: int) -> list[Inbound]:
        """Messages to this number not confirmed yet, oldest first."""

        def read(conn: sqlite3.Connection) -> list[Inbound]:
            rows = conn.execute(
                "SELECT id, wa_id, sender_jid, sender_lid, push_name, text, timestamp_ms"
                " FROM inbound WHERE session = ? AND to_jid = ? AND acked_at IS NULL AND id > ?"
                " ORDER BY id LIMIT 200",
                (session, to_jid, after),
            ).fetchall()
            return [
                Inbound(id=r["id"], wa_id=r["wa_id"], sender_jid=r["sender_jid"],
                        sender_lid=r["sender_lid"], push_name=r["push_name"], text=r["text"],
                        timestamp_ms=r["timestamp_ms"])
                for r in rows
            ]

        return await self._call(read)

    def ack_inbound(self, committed: list[tuple[int, str]], our_jid: str, now_ms: int) -> None:
        """The number committed these messages (row id, sender); not awaited (a lost ack means
        one redelivery)."""

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE inbound SET acked_at = ? WHERE id = ?",
                             [(now_ms, row_id) for row_id, _ in committed])
            for their_jid in dict.fromkeys(sender for _, sender in committed):
                _meet(conn, our_jid, their_jid, now_ms)

        self._submit(write)

    async def record_read(self, session: str, chat: str, sender: str, message_ids: list[str],
                          now_ms: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO reads (session, chat, sender, message_id, read_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(session, chat, sender, message_id, now_ms) for message_id in message_ids],
            )

        await self._call(write)

    def knows(self, our_jid: str, their_jid: str) -> bool:
        """Whether these two exchanged a message before (their Signal session exists)."""
        if self._reader is None:
            return False
        row = self._reader.execute(
            "SELECT 1 FROM contacts WHERE our_jid = ? AND their_jid = ?", (our_jid, their_jid)
        ).fetchone()
        return row is not None


def _meet(conn: sqlite3.Connection, our_jid: str, their_jid: str, now_ms: int) -> None:
    conn.execute(
        "INSERT INTO contacts (our_jid, their_jid, first_at) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (our_jid, their_jid, now_ms),
    )


def _with_id(message: Inbound, row_id: int) -> Inbound:
    return Inbound(
        id=row_id, wa_id=message.wa_id, sender_jid=message.sender_jid,
        sender_lid=message.sender_lid, push_name=message.push_name, text=message.text,
        timestamp_ms=message.timestamp_ms,
    )


# -- readers for tests and benchmarks (any process) ----------------------------------------------


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    if not Path(path).exists():
        yield None
        return
    conn = sqlite3.connect(path, timeout=BUSY_MS / 1000)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        conn.execute("PRAGMA query_only = ON")
        yield conn
    finally:
        conn.close()


def _rows(path: Path, sql: str, session: str | None) -> list[dict[str, Any]]:
    with _reading(path) as conn:
        if conn is None:
            return []
        if session is None:
            rows = conn.execute(f"{sql} ORDER BY id").fetchall()
        else:
            rows = conn.execute(f"{sql} WHERE session = ? ORDER BY id", (session,)).fetchall()
        return [dict(row) for row in rows]


def deliveries(path: Path, session: str | None = None) -> list[dict[str, Any]]:
    """Every message contacts were shown, in the order the network took them."""
    return _rows(path, "SELECT * FROM deliveries", session)


def inbound_messages(path: Path, session: str | None = None) -> list[dict[str, Any]]:
    """Every message contacts sent to numbers; `acked_at` is NULL until the number committed it."""
    return _rows(path, "SELECT * FROM inbound", session)


def reads(path: Path, session: str | None = None) -> list[dict[str, Any]]:
    """Read receipts the numbers sent."""
    return _rows(path, "SELECT * FROM reads", session)


def count_by_outbox(path: Path) -> dict[str, int]:
    """How many distinct messages contacts saw per outbox id: anything above 1 is a duplicate."""
    with _reading(path) as conn:
        if conn is None:
            return {}
        rows = conn.execute(
            "SELECT outbox_id, COUNT(*) FROM deliveries WHERE outbox_id IS NOT NULL"
            " GROUP BY outbox_id"
        ).fetchall()
        return {row[0]: row[1] for row in rows}
