"""A simulated WhatsApp network behind the engine interface, for tests, demos and benchmarks.

Each number's runtime store file mimics whatsmeow's tables (device, Signal sessions, sender keys),
so the supervisor's vault snapshots, restores and repairs it exactly as it does a real one. What
contacts receive is committed to the network record (`sandbox_network`) before a send returns.
Everything runs on the host's event loop with `call_later` timers and short-lived tasks: no
thread per number, so hundreds of idle numbers cost little.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import itertools
import json
import os
import secrets
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from whatsdex.errors import ConfigError
from whatsdex.sessions import protocol
from whatsdex.sessions.engine import Engine, EngineError, EngineOptions, EngineSink
from whatsdex.sessions.sandbox_network import Delivery, Inbound, NetworkRecord
from whatsdex.tasks import BackgroundTasks

PHONE_SERVER = "s.whatsapp.net"
PLATFORM = "android"
# whatsmeow's pairing-code alphabet (Crockford base32 without 0, O, I, U).
PAIR_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ"
BAN_CODE = 101  # whatsmeow TempBanSentToTooManyPeople
BAN_SECONDS = 3600.0
CRASH_DELAY = 0.03  # long enough for the reply to leave the socket first
RECEIPT_BATCH = 50  # message ids merged into one receipt at most
MAX_INBOUND = 10_000  # per `inbound` action

STORE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS whatsmeow_device ("
    " jid TEXT PRIMARY KEY, lid TEXT, push_name TEXT, identity_key BLOB)",
    "CREATE TABLE IF NOT EXISTS whatsmeow_sessions ("
    " our_jid TEXT, their_id TEXT, session BLOB, PRIMARY KEY (our_jid, their_id))",
    "CREATE TABLE IF NOT EXISTS whatsmeow_sender_keys ("
    " our_jid TEXT, chat_id TEXT, sender_id TEXT, sender_key BLOB,"
    " PRIMARY KEY (our_jid, chat_id, sender_id))",
)

State = Literal["pairing", "connecting", "connected", "reconnecting"]


@dataclass(frozen=True, slots=True)
class SandboxTimings:
    """QR rotation and connect delay; whatsmeow's defaults unless the environment says otherwise.

    `WHATSDEX_SANDBOX_QR_SECONDS` (later codes, 20) also scales the first code (3 times) and
    the total (8 times) unless `WHATSDEX_SANDBOX_QR_FIRST_SECONDS` / `…_QR_TOTAL_SECONDS` are set;
    `WHATSDEX_SANDBOX_CONNECT_SECONDS` is the simulated connect time.
    """

    qr_first: float = 60.0
    qr_period: float = 20.0
    qr_total: float = 160.0
    connect_delay: float = 0.05

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SandboxTimings:
        period = _seconds(env, "WHATSDEX_SANDBOX_QR_SECONDS", 20.0)
        return cls(
            qr_first=_seconds(env, "WHATSDEX_SANDBOX_QR_FIRST_SECONDS", 3 * period),
            qr_period=period,
            qr_total=_seconds(env, "WHATSDEX_SANDBOX_QR_TOTAL_SECONDS", 8 * period),
            connect_delay=_seconds(env, "WHATSDEX_SANDBOX_CONNECT_SECONDS", 0.05, zero=True),
        )


def _seconds(env: Mapping[str, str], name: str, default: float, *, zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {raw!r}") from None
    if value < 0 or (value == 0 and not zero) or value != value:  # NaN too
        raise ConfigError(f"{name} must be {'0 or more' if zero else 'more than 0'} seconds")
    return value


@dataclass(slots=True)
class _Receipt:
    chat: str
    message_id: str
    status: Literal["delivered", "read"]


@dataclass(slots=True, eq=False)
class _Session:
    id: str
    store_path: Path
    state: State
    jid: str = ""
    lid: str = ""
    push_name: str = ""
    timer: asyncio.TimerHandle | None = None  # QR rotation or (re)connect
    # Pairing: the key parts of the QR stay the same across codes, only the ref rotates.
    qr_tail: str = ""
    qr_offered: float = 0.0  # seconds of QR validity handed out so far
    identity_key: bytes = b""
    pair_phone: str = ""
    # Faults and contacts' behaviour.
    fail_sends: int = 0
    delivered_after: float = 0.05
    read_after: float = 0.2
    # Receipts: a heap of (due, seq, receipt) behind one timer, then an ordered queue.
    due: list[tuple[float, int, _Receipt]] = field(default_factory=list)
    due_timer: asyncio.TimerHandle | None = None
    ready: deque[_Receipt] = field(default_factory=deque)
    receipt_task: asyncio.Task[None] | None = None
    # Inbound: one pump per number offers recorded messages in order.
    pump_task: asyncio.Task[None] | None = None
    pump_again: bool = False
    waiters: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    last_ts: int = 0


class _StoreFiles:
    """Open store connections, the least recently used closed beyond `limit`.

    Measured on 2 cores: an open WAL connection costs ~140 KB and 3 file descriptors; an upsert
    on an open one ~30 µs, reopening ~0.4 ms on tmpfs and ~1.4 ms on disk (closing checkpoints).
    Idle numbers therefore hold nothing open, busy ones keep theirs.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: OrderedDict[str, sqlite3.Connection] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def get(self, session: _Session) -> sqlite3.Connection:
        conn = self._open.get(session.id)
        if conn is not None:
            self._open.move_to_end(session.id)
            return conn
        conn = _open_store(session.store_path)
        self._open[session.id] = conn
        while len(self._open) > self.limit:
            _, old = self._open.popitem(last=False)
            old.close()
        return conn

    def close(self, session_id: str) -> None:
        conn = self._open.pop(session_id, None)
        if conn is not None:
            conn.close()


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """All or nothing (the connection is in autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _open_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=15.0)
    try:
        conn.execute("PRAGMA busy_timeout = 15000")  # the vault snapshots it concurrently
        conn.execute("PRAGMA journal_mode = WAL")
        # The runtime dir is usually tmpfs and the vault covers power loss: no fsync per message.
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in STORE_SCHEMA:
            conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


class SandboxEngine(Engine):
    name = "sandbox"
    open_store_limit = 64

    def __init__(self, sink: EngineSink, options: EngineOptions) -> None:
        super().__init__(sink, options)
        self.timings = SandboxTimings.from_env(os.environ)
        self.record_path = options.sandbox_record or options.data_dir / "sandbox-network.db"
        self.record = NetworkRecord(self.record_path)
        try:
            self.record.open()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"cannot open the sandbox network record {self.record_path}: {exc}"
            ) from None
        self._stores = _StoreFiles(self.open_store_limit)
        self._sessions: dict[str, _Session] = {}
        self._tasks = BackgroundTasks()
        self._seq = itertools.count()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, session: str, store_path: Path) -> None:
        if session in self._sessions:
            raise EngineError(f"{session} is already running in this engine host")
        s = _Session(id=session, store_path=Path(store_path), state="connecting")
        try:
            row = self._stores.get(s).execute(
                "SELECT jid, lid, push_name FROM whatsmeow_device LIMIT 1"
            ).fetchone()
        except sqlite3.Error as exc:
            self._stores.close(session)
            raise EngineError(f"cannot open the store file {store_path}: {exc}") from None
        self._sessions[session] = s
        if row is None:
            self._begin_pairing(s)
        else:
            s.jid, s.lid, s.push_name = row[0], row[1] or "", row[2] or ""
            self._connect_later(s)

    async def stop(self, session: str) -> None:
        s = self._sessions.get(session)
        if s is not None:  # stopping a number that is not running has nothing to undo
            self._finish(s, "stopped")

    async def logout(self, session: str) -> None:
        s = self._linked(session)
        self._unlink(s)
        self._finish(s, "logged out")

    async def shutdown(self) -> None:
        for s in list(self._sessions.values()):
            self._finish(s, "engine host shutting down")
        await self._tasks.close()
        await self.record.close()

    def _finish(self, s: _Session, reason: str) -> None:
        """Forget a number: timers, tasks and its store connection go; `Stopped` tells why."""
        if self._sessions.get(s.id) is not s:
            return
        del self._sessions[s.id]
        for handle in (s.timer, s.due_timer):
            if handle is not None:
                handle.cancel()
        s.due.clear()
        s.ready.clear()
        for task in (s.pump_task, s.receipt_task):
            if task is not None:
                task.cancel()
        for waiter in s.waiters.values():
            if not waiter.done():
                waiter.set_exception(EngineError(
                    f"{s.id} stopped before every message was offered; the rest are offered "
                    "again when it connects", retryable=True,
                ))
        s.waiters.clear()
        self._stores.close(s.id)
        self.sink.emit(protocol.Stopped(session=s.id, reason=reason))

    def _current(self, s: _Session) -> bool:
        return self._sessions.get(s.id) is s

    def _connect_later(self, s: _Session) -> None:
        s.timer = asyncio.get_running_loop().call_later(
            self.timings.connect_delay, self._connected, s
        )

    def _connected(self, s: _Session) -> None:
        s.timer = None
        if not self._current(s):
            return
        s.state = "connected"
        self.sink.emit(protocol.Connected(session=s.id, jid=s.jid, lid=s.lid,
                                          push_name=s.push_name))
        # Like WhatsApp's offline queue: whatever the number has not confirmed comes again.
        self._pump(s)
        if s.ready:
            self._drain_receipts(s)

    # -- pairing ---------------------------------------------------------------------------------

    def _begin_pairing(self, s: _Session) -> None:
        s.state = "pairing"
        s.identity_key = secrets.token_bytes(32)
        s.qr_tail = ",".join((_b64(secrets.token_bytes(32)), _b64(s.identity_key),
                              _b64(secrets.token_bytes(32))))
        self._offer_qr(s)

    def _offer_qr(self, s: _Session) -> None:
        s.timer = None
        if not self._current(s) or s.state != "pairing":
            return
        remaining = self.timings.qr_total - s.qr_offered
        if remaining <= 1e-9:
            self.sink.emit(protocol.QrTimeout(session=s.id))
            self._finish(s, "no scan before the QR codes ran out")
            return
        lasting = min(self.timings.qr_first if s.qr_offered == 0 else self.timings.qr_period,
                      remaining)
        s.qr_offered += lasting
        code = f"2@{_b64(secrets.token_bytes(60))},{s.qr_tail}"
        self.sink.emit(protocol.Qr(session=s.id, code=code, expires_in=lasting))
        s.timer = asyncio.get_running_loop().call_later(lasting, self._offer_qr, s)

    async def pair_phone(self, session: str, phone: str) -> str:
        s = self._running(session)
        if s.state != "pairing":
            raise EngineError("a pairing code can only be asked for while QR codes are offered")
        s.pair_phone = _phone(phone)
        code = "".join(secrets.choice(PAIR_ALPHABET) for _ in range(8))
        return f"{code[:4]}-{code[4:]}"

    def _scan(self, s: _Session, phone: str) -> dict[str, Any]:
        if s.state != "pairing":
            raise EngineError(f"{s.id} is not waiting for a scan")
        if phone:
            digits = _phone(phone)
        elif s.pair_phone:
            digits = s.pair_phone  # the phone types the pairing code it was given
        else:
            raise EngineError("say which phone scans the code (phone digits)")
        jid, lid = f"{digits}@{PHONE_SERVER}", f"{_random_digits(15)}@lid"
        push_name = f"Sandbox {digits[-4:]}"
        try:
            with _transaction(self._stores.get(s)) as conn:
                conn.execute("DELETE FROM whatsmeow_device")
                conn.execute(
                    "INSERT INTO whatsmeow_device (jid, lid, push_name, identity_key)"
                    " VALUES (?, ?, ?, ?)",
                    (jid, lid, push_name, s.identity_key),
                )
        except sqlite3.Error as exc:
            raise EngineError(f"cannot write the store file: {exc}", retryable=True) from None
        if s.timer is not None:
            s.timer.cancel()
        s.jid, s.lid, s.push_name, s.state = jid, lid, push_name, "connecting"
        self.sink.emit(protocol.Paired(session=s.id, jid=jid, lid=lid, push_name=push_name,
                                       platform=PLATFORM))
        self._connect_later(s)
        return {"jid": jid, "lid": lid, "push_name": push_name}

    def _unlink(self, s: _Session) -> None:
        try:
            with _transaction(self._stores.get(s)) as conn:
                for table in ("whatsmeow_device", "whatsmeow_sessions", "whatsmeow_sender_keys"):
                    conn.execute(f"DELETE FROM {table}")
        except sqlite3.Error as exc:
            raise EngineError(f"cannot write the store file: {exc}", retryable=True) from None

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, command: protocol.Send) -> dict[str, Any]:
        s = self._sessions.get(command.session)
        if s is None or s.state != "connected":
            raise EngineError(f"{command.session} is not connected", retryable=True)
        to = _jid(command.to)
        text, detail, media_sha256, media_size = _content(command)
        if s.fail_sends > 0:
            s.fail_sends -= 1
            raise EngineError("sandbox: the network refused the message", retryable=True)
        # Encrypt first, as whatsmeow does: the ratchet moves before anything leaves.
        self._ratchet(s, to)
        now = _now_ms()
        try:
            delivered = await self.record.deliver(Delivery(
                session=s.id, sender_jid=s.jid, to_jid=to, outbox_id=command.outbox_id,
                wa_id=_outbound_id(s.id, command.outbox_id), kind=command.kind, text=text,
                media_sha256=media_sha256, media_size=media_size, detail=detail, now_ms=now,
            ))
        except sqlite3.Error as exc:
            raise EngineError(f"sandbox network unavailable: {exc}", retryable=True) from None
        if self._current(s):
            if s.delivered_after >= 0:
                self._receipt_later(s, s.delivered_after, _Receipt(to, delivered.wa_id,
                                                                    "delivered"))
            if s.read_after >= 0:
                self._receipt_later(s, max(s.read_after, s.delivered_after),
                                    _Receipt(to, delivered.wa_id, "read"))
        return {"wa_id": delivered.wa_id, "timestamp_ms": delivered.timestamp_ms}

    async def mark_read(self, command: protocol.MarkRead) -> None:
        s = self._sessions.get(command.session)
        if s is None or s.state != "connected":
            raise EngineError(f"{command.session} is not connected", retryable=True)
        try:
            await self.record.record_read(s.id, command.chat, command.sender,
                                          list(command.message_ids), _now_ms())
        except sqlite3.Error as exc:
            raise EngineError(f"sandbox network unavailable: {exc}", retryable=True) from None

    def _ratchet(self, s: _Session, their_jid: str) -> None:
        """Advance the Signal session with a contact (sender key for a group), creating it
        when missing; a contact the network knows means the store lost it: renegotiation."""
        secret = secrets.token_bytes(96)
        if their_jid.endswith("@g.us"):
            update = ("UPDATE whatsmeow_sender_keys SET sender_key = ?3"
                      " WHERE our_jid = ?1 AND chat_id = ?2 AND sender_id = ?1")
            insert = ("INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key)"
                      " VALUES (?1, ?2, ?1, ?3)")
        else:
            update = ("UPDATE whatsmeow_sessions SET session = ?3"
                      " WHERE our_jid = ?1 AND their_id = ?2")
            insert = ("INSERT INTO whatsmeow_sessions (our_jid, their_id, session)"
                      " VALUES (?1, ?2, ?3)")
        try:
            conn = self._stores.get(s)
            created = conn.execute(update, (s.jid, their_jid, secret)).rowcount == 0
            if created:
                conn.execute(insert, (s.jid, their_jid, secret))
        except sqlite3.Error as exc:
            raise EngineError(f"cannot write the store file: {exc}", retryable=True) from None
        if created and self.record.knows(s.jid, their_jid):
            self.sink.emit(protocol.Log(
                level="info", session=s.id,
                message=f"renegotiated the encryption session with {their_jid} "
                        "(it was missing from the store)",
            ))

    # -- receipts --------------------------------------------------------------------------------

    def _receipt_later(self, s: _Session, delay: float, receipt: _Receipt) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        heapq.heappush(s.due, (due, next(self._seq), receipt))
        if s.due_timer is None or due < s.due_timer.when():
            if s.due_timer is not None:
                s.due_timer.cancel()
            s.due_timer = loop.call_at(due, self._receipts_due, s)

    def _receipts_due(self, s: _Session) -> None:
        s.due_timer = None
        if not self._current(s):
            return
        loop = asyncio.get_running_loop()
        horizon = loop.time() + 0.001  # timers may fire a hair early
        while s.due and s.due[0][0] <= horizon:
            s.ready.append(heapq.heappop(s.due)[2])
        if s.due:
            s.due_timer = loop.call_at(s.due[0][0], self._receipts_due, s)
        if s.ready and s.state == "connected":
            self._drain_receipts(s)

    def _drain_receipts(self, s: _Session) -> None:
        if s.receipt_task is None or s.receipt_task.done():
            s.receipt_task = self._tasks.start(self._emit_receipts(s), name=f"receipts-{s.id}")

    async def _emit_receipts(self, s: _Session) -> None:
        """One at a time and in order: a read receipt never overtakes its delivered one."""
        while s.ready and self._current(s) and s.state == "connected":
            first = s.ready.popleft()
            ids = [first.message_id]
            # Contacts confirm several messages at once, as WhatsApp does.
            while (s.ready and len(ids) < RECEIPT_BATCH and s.ready[0].chat == first.chat
                   and s.ready[0].status == first.status):
                ids.append(s.ready.popleft().message_id)
            person = _person(first.chat)
            await self.sink.emit_committed(protocol.ReceiptEvent(
                session=s.id, chat=person, sender=person, message_ids=ids, status=first.status,
                timestamp_ms=_now_ms(),
            ))

    # -- inbound ---------------------------------------------------------------------------------

    async def _inbound(self, s: _Session, command: protocol.SandboxControl) -> dict[str, Any]:
        if s.state != "connected":
            raise EngineError(f"{s.id} is not connected", retryable=True)
        sender = _jid(command.sender) if command.sender else ""
        if not sender.endswith(f"@{PHONE_SERVER}"):
            raise EngineError("inbound needs `sender`: the contact's phone digits or phone JID")
        if not 1 <= command.count <= MAX_INBOUND:
            raise EngineError(f"count must be between 1 and {MAX_INBOUND}")
        phone = sender.partition("@")[0]
        messages = [
            Inbound(wa_id=_inbound_id(), sender_jid=sender, sender_lid=_lid_for(phone),
                    push_name=f"Contact {phone[-4:]}", text=command.text,
                    timestamp_ms=self._next_ts(s))
            for _ in range(command.count)
        ]
        try:
            recorded = await self.record.add_inbound(s.id, s.jid, messages, _now_ms())
        except sqlite3.Error as exc:
            raise EngineError(f"sandbox network unavailable: {exc}", retryable=True) from None
        if not self._current(s):
            raise EngineError(f"{s.id} stopped; the messages are offered when it connects")
        # Resolved when the last one is committed: the pump offers them in order.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        s.waiters[recorded[-1].wa_id] = waiter
        s.pump_again = True
        self._pump(s)
        await waiter
        return {"wa_ids": [m.wa_id for m in recorded]}

    def _pump(self, s: _Session) -> None:
        if s.pump_task is None or s.pump_task.done():
            s.pump_task = self._tasks.start(self._offer_inbound(s), name=f"inbound-{s.id}")

    async def _offer_inbound(self, s: _Session) -> None:
        """Offer the number its unconfirmed messages, oldest first, each once committed."""
        try:
            await self._offer_pending(s)
        except (sqlite3.Error, EngineError) as exc:
            # The messages stay unconfirmed in the network: a reconnect offers them again.
            message = exc.message if isinstance(exc, EngineError) else f"sandbox network: {exc}"
            self.sink.emit(protocol.Log(level="error", session=s.id, message=message))
            for waiter in s.waiters.values():
                if not waiter.done():
                    waiter.set_exception(EngineError(message, retryable=True))
            s.waiters.clear()

    async def _offer_pending(self, s: _Session) -> None:
        cursor = 0
        while self._current(s) and s.state == "connected":
            s.pump_again = False
            batch = await self.record.pending_inbound(s.id, s.jid, cursor)
            if not batch:
                if s.pump_again:
                    continue
                return
            # Offered all at once, as WhatsApp hands a reconnecting client its backlog: the
            # supervisor commits what arrived together in one write and acks each message.
            events = []
            for message in batch:
                self._ratchet(s, message.sender_jid)
                person = protocol.Person(jid=message.sender_jid, lid=message.sender_lid,
                                         phone=message.sender_jid.partition("@")[0])
                events.append(protocol.InboundMessage(
                    session=s.id, wa_id=message.wa_id, chat=person, sender=person,
                    timestamp_ms=message.timestamp_ms, push_name=message.push_name,
                    kind="text", text=message.text,
                ))
            offered = {asyncio.ensure_future(self.sink.emit_committed(event)): message
                       for event, message in zip(events, batch, strict=True)}
            try:
                while offered:
                    # Confirmed as the acks come (usually all at once); one the number never
                    # acknowledges stays unconfirmed, as WhatsApp would offer it again.
                    done, _ = await asyncio.wait(offered, return_when=asyncio.FIRST_COMPLETED)
                    finished = [(offered.pop(task), task) for task in done]
                    self._confirm(s, [message for message, task in finished
                                      if not task.cancelled() and task.exception() is None])
                    for _, task in finished:  # the rest stay unconfirmed: offered on reconnect
                        if task.cancelled():
                            raise asyncio.CancelledError("the supervisor is gone")
                        if (failure := task.exception()) is not None:
                            raise failure
            finally:
                for task in offered:
                    task.cancel()
            cursor = batch[-1].id

    def _confirm(self, s: _Session, committed: list[Inbound]) -> None:
        if not committed:
            return
        self.record.ack_inbound([(m.id, m.sender_jid) for m in committed], s.jid, _now_ms())
        for message in committed:
            waiter = s.waiters.pop(message.wa_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _next_ts(self, s: _Session) -> int:
        s.last_ts = max(_now_ms(), s.last_ts + 1)
        return s.last_ts

    # -- sandbox controls ------------------------------------------------------------------------

    async def sandbox(self, command: protocol.SandboxControl) -> dict[str, Any]:
        action = command.action
        if action == "crash_host":
            # Like a Go fatal error: the whole process goes at once, nothing is cleaned up.
            asyncio.get_running_loop().call_later(CRASH_DELAY, os._exit, 2)
            return {"exit_in": CRASH_DELAY}
        s = self._running(command.session)
        if action == "scan":
            return self._scan(s, command.phone)
        if action == "inbound":
            return await self._inbound(s, command)
        if action == "fail_sends":
            s.fail_sends = max(0, command.count)
            return {"fail_sends": s.fail_sends}
        if action == "receipts":
            if command.delivered_after is not None:
                s.delivered_after = command.delivered_after
            if command.read_after is not None:
                s.read_after = command.read_after
            return {"delivered_after": s.delivered_after, "read_after": s.read_after}
        if s.state == "pairing":
            raise EngineError(f"{s.id} is not linked yet")
        if action == "disconnect":
            if s.state != "connected":
                raise EngineError(f"{s.id} is not connected", retryable=True)
            s.state = "reconnecting"
            self.sink.emit(protocol.Disconnected(session=s.id, reason="sandbox: connection lost",
                                                 will_retry=True))
            self._connect_later(s)
            return {}
        if action == "logout":
            self._unlink(s)
            self.sink.emit(protocol.LoggedOut(session=s.id,
                                              reason="sandbox: removed from the phone"))
            self._finish(s, "logged out from the phone")
            return {}
        if action == "ban":
            self.sink.emit(protocol.TemporaryBan(session=s.id, code=BAN_CODE,
                                                 expires_in=BAN_SECONDS))
            self._finish(s, "temporarily banned")
            return {}
        raise EngineError(f"unknown sandbox action {action!r}")

    def _running(self, session: str) -> _Session:
        s = self._sessions.get(session)
        if s is None:
            raise EngineError(f"{session} is not running in this engine host")
        return s

    def _linked(self, session: str) -> _Session:
        s = self._running(session)
        if s.state == "pairing":
            raise EngineError(f"{session} is not linked yet")
        return s


# -- addresses, ids and content ------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _random_digits(n: int) -> str:
    return str(secrets.randbelow(9 * 10 ** (n - 1)) + 10 ** (n - 1))


def _phone(text: str) -> str:
    digits = text.strip().removeprefix("+")
    if not (digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 15):
        raise EngineError(f"{text!r} is not a phone number (international digits, no '+')")
    return digits


def _jid(address: str) -> str:
    """A normalised JID; bare digits mean a phone number."""
    user, at, server = address.strip().partition("@")
    if not at:
        return f"{_phone(user)}@{PHONE_SERVER}"
    if server == PHONE_SERVER:
        return f"{_phone(user)}@{PHONE_SERVER}"
    if server == "lid" and user.isascii() and user.isdigit():
        return f"{user}@lid"
    if server == "g.us" and user and all(part.isascii() and part.isdigit()
                                         for part in user.split("-")):
        return f"{user}@g.us"
    raise EngineError(f"{address!r} is not a WhatsApp address")


def _lid_for(phone: str) -> str:
    """A contact's LID: stable for a phone number, like WhatsApp's, but not derived visibly."""
    number = int.from_bytes(hashlib.sha256(f"sandbox-lid:{phone}".encode()).digest()[:8], "big")
    return f"{10**14 + number % (9 * 10**14)}@lid"


def _person(jid: str) -> protocol.Person:
    user, _, server = jid.partition("@")
    if server == PHONE_SERVER:
        return protocol.Person(jid=jid, lid=_lid_for(user), phone=user)
    if server == "lid":
        return protocol.Person(jid=jid, lid=jid)
    return protocol.Person(jid=jid)


def _outbound_id(session: str, outbox_id: str) -> str:
    """whatsmeow's id shape (3EB0 + 18 hex); fixed by the outbox id, so a retry reuses it."""
    if not outbox_id:
        return "3EB0" + secrets.token_hex(9).upper()
    return "3EB0" + hashlib.sha256(f"{session}/{outbox_id}".encode()).hexdigest()[:18].upper()


def _inbound_id() -> str:
    return "3A" + secrets.token_hex(9).upper()


def _content(
    command: protocol.Send,
) -> tuple[str, str, str | None, int | None]:
    """What the contact sees: text, other fields as JSON, and the media's sha256 and size."""
    detail: dict[str, Any] = {}
    if command.quoted_id:
        detail["quoted_id"] = command.quoted_id
        detail["quoted_sender"] = command.quoted_sender
    kind = command.kind
    if kind == "text":
        if not command.text.strip():
            raise EngineError("a text message needs text")
        return command.text, json.dumps(detail), None, None
    if kind == "location":
        if command.latitude is None or command.longitude is None:
            raise EngineError("a location needs latitude and longitude")
        detail.update(latitude=command.latitude, longitude=command.longitude,
                      name=command.location_name)
        return command.location_name, json.dumps(detail), None, None
    if kind == "reaction":
        if not command.reaction_to:
            raise EngineError("a reaction needs the message it reacts to")
        detail.update(reaction_to=command.reaction_to, from_me=command.reaction_from_me)
        return command.text, json.dumps(detail), None, None
    media = command.media
    if media is None or not media.data:
        raise EngineError(f"a {kind} message needs its media bytes")
    detail.update(mimetype=media.mimetype, filename=media.filename, voice_note=media.voice_note)
    digest = hashlib.sha256(media.data).hexdigest()
    return media.caption or command.text, json.dumps(detail), digest, len(media.data)
