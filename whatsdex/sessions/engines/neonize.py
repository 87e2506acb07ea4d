"""The real WhatsApp engine: neonize (whatsmeow, in a Go shared library) behind `Engine`.

What the library does, and how this engine copes (see NEONIZE.md for the measurements):

- Go keeps every client in plain maps (`clients`, `StopSignal`, `eventChannel`) without locks;
  two Go calls touching them at once abort the whole process. Calls that create or free a
  client (connect, stop, logout) go through one queue, and connects are spaced out. A
  readers/writer gate also keeps ordinary calls (send, mark read…, which read the maps) away
  from the moments a connect or a stop writes them.
- `Neonize()`, the connect call, blocks for the client's whole life, and never returns at all
  once a QR code expired or pairing failed: it then polls forever for a device id that will
  not come. Each client therefore runs it in a daemon thread of its own: a stuck client costs
  one idle thread, never a worker of the default executor nor a clean exit.
- neonize's event dispatch is fire-and-forget (it schedules the handler and returns at once);
  whatsmeow acknowledges a message to WhatsApp once neonize has taken it. Here neonize's
  thread waits until the supervisor committed each message and receipt, and every event of a
  number is handled in order, with handler failures logged.
- QR codes come from the QR callback (one code per call); the login-status callback says how
  the QR phase ended: "success", "timeout", "error", "err-client-outdated",
  "err-unexpected-state" or, without ending it, "err-scanned-without-multidevice" (the final
  item of whatsmeow's QR channel, passed as a C string).
- neonize's module-global `event_global_loop` is never used: this engine does not call
  `NewAClient.connect()`, and its callbacks carry the host's loop (one for the host's life).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from neonize._binder import func_callback_bytes, func_callback_bytes2, func_string, gocode
from neonize.aioze.client import NewAClient
from neonize.aioze.events import Event
from neonize.events import INT_TO_EVENT
from neonize.exc import (
    LogoutError,
    MarkReadError,
    NeonizeError,
    PairPhoneError,
    SendMessageError,
    UploadError,
)
from neonize.proto.Neonize_pb2 import JID, Device
from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    ContextInfo,
    Message,
    VideoMessage,
)
from neonize.utils.enum import LogLevel, MediaType, ReceiptType
from neonize.utils.log import log_whatsmeow

from whatsdex.sessions import protocol
from whatsdex.sessions.engine import Engine, EngineError, EngineOptions, EngineSink
from whatsdex.sessions.engines import neonize_translate as translate

log = logging.getLogger(__name__)

T = TypeVar("T")

# neonize's event codes (neonize.events.EVENT_TO_INT) this engine subscribes to.
_ME, _PAIR, _CONNECTED, _KEEPALIVE_LOST, _KEEPALIVE_BACK = 0, 2, 3, 4, 5
_LOGGED_OUT, _REPLACED, _BANNED, _FAILURE, _OUTDATED, _STREAM_ERROR = 6, 7, 8, 9, 10, 11
_DISCONNECTED, _MESSAGE, _RECEIPT = 12, 17, 18
_SUBSCRIBED = bytes([
    _PAIR, _CONNECTED, _KEEPALIVE_LOST, _KEEPALIVE_BACK, _LOGGED_OUT, _REPLACED, _BANNED,
    _FAILURE, _OUTDATED, _STREAM_ERROR, _DISCONNECTED, _MESSAGE, _RECEIPT,
])
_QR_OK = "success"
_QR_SCANNED_WITHOUT_MULTIDEVICE = "err-scanned-without-multidevice"

# whatsmeow gives up a dial after 60 s (measured through a silent proxy); past this something
# is wrong and the engine reports the connect as failed itself.
_DIAL_LIMIT = 75.0
# A connect holds the gate until Go reports back (a QR code, the device, an error) or this long:
# Neonize() writes the maps from its own thread within milliseconds of the call, and reads them
# again right after the dial (about a second when WhatsApp answers). Longer would only make
# a host with many numbers slow to start when WhatsApp does not answer.
_START_SETTLE = 2.0
# When the QR phase ends neonize reads the maps once more, within microseconds.
_MAP_SETTLE = 1.0
# whatsmeow offers a 60 s code, then 5 of 20 s: its QR phase cannot last longer than this.
_QR_PHASE_LIMIT = 200.0
_HOLD_WAIT = 10.0  # how long neonize's thread waits for the gate before going on regardless
_EXIT_WAIT = 5.0  # Neonize() returns this fast once stopped (unless stuck, see above)
_DRAIN_WAIT = 10.0  # events already queued for a stopping number (messages still get committed)
_STOP_REPLY_WAIT = 15.0  # Stop/Logout answer by then; `Stopped` follows if a dial holds it longer
_RESTART_WAIT = 10.0  # Start waits this long for the same number's previous client to go
_SHUTDOWN_WAIT = 15.0  # below the host's own 20 s limit
_STORE_PATH_FORBIDDEN = "?#%"  # would change the meaning of the SQLite URI

# One log callback for the whole process, never freed: whatsmeow goroutines that outlive their
# client may still log, and a freed ctypes callback would crash the process.
_LOG_CALLBACK = func_callback_bytes2(log_whatsmeow)
# neonize's own platform (what its users run), named after the product on the phone.
_DEVICE_PROPS = DeviceProps(os="WhatsDeX", platformType=DeviceProps.SAFARI).SerializeToString()
_PERMANENT_SEND_ERRORS = (
    "unknown server", "no device part", "broadcast list", "invalid jid", "not a valid",
)


def store_dsn(store_path: Path) -> str:
    """The store in WAL mode; neonize appends `?_foreign_keys=on`, which `_x=` swallows."""
    return f"{store_path}?_journal_mode=WAL&_busy_timeout=15000&_foreign_keys=on&_x="


def _go_log_level() -> bytes:
    level: bytes = LogLevel.from_logging(logging.getLogger("whatsmeow").getEffectiveLevel()).level
    return level


async def _first(*waitables: asyncio.Event | asyncio.Future[Any], within: float) -> None:
    """Return when any of these is set or done, or after `within` s (never cancels them)."""
    waiters: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(w.wait()) if isinstance(w, asyncio.Event) else asyncio.shield(w)
        for w in waitables
    ]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an outcome as seen: nobody may await a shielded operation whose caller left."""
    if not future.cancelled():
        future.exception()


class _Gate:
    """Readers/writer gate around neonize's unlocked Go maps (FIFO, so a writer is not starved).

    An operation keeps its place until it really ends: when its caller is cancelled, the Go
    call goes on in its thread, and so does its hold on the gate.
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._waiting: deque[tuple[bool, asyncio.Future[None]]] = deque()

    async def run(self, op: Callable[[], Awaitable[T]], *, exclusive: bool = False) -> T:
        await self._acquire(exclusive)
        try:
            task = asyncio.ensure_future(op())
        except BaseException:
            self._release(exclusive)
            raise

        def finished(done: asyncio.Future[T]) -> None:
            self._release(exclusive)
            _retrieve(done)

        task.add_done_callback(finished)
        return await asyncio.shield(task)

    async def hold(self, seconds: float) -> None:
        """Take the gate exclusively now and let it go after `seconds`."""
        await self._acquire(True)
        asyncio.get_running_loop().call_later(seconds, self._release, True)

    async def _acquire(self, exclusive: bool) -> None:
        if not self._waiting and self._free(exclusive):
            self._take(exclusive)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((exclusive, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(exclusive)  # granted just as the caller left
            else:
                self._wake()
            raise

    def _free(self, exclusive: bool) -> bool:
        return not self._writing and (self._readers == 0 or not exclusive)

    def _take(self, exclusive: bool) -> None:
        if exclusive:
            self._writing = True
        else:
            self._readers += 1

    def _release(self, exclusive: bool) -> None:
        if exclusive:
            self._writing = False
        else:
            self._readers -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            exclusive, turn = self._waiting[0]
            if turn.done():
                self._waiting.popleft()
                continue
            if not self._free(exclusive):
                return
            self._waiting.popleft()
            self._take(exclusive)
            turn.set_result(None)


class _Lifecycle:
    """The one queue for connects, stops and logouts of this host, run one at a time."""

    def __init__(self, spacing: float) -> None:
        self.spacing = spacing
        self._queue: asyncio.Queue[tuple[Callable[[], Awaitable[Any]], asyncio.Future[Any],
                                         bool]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, op: Callable[[], Awaitable[T]], *, spaced: bool) -> T:
        """Queue `op`; spaced ops are followed by a pause before the next one starts."""
        if self._closed:
            raise EngineError("the engine is shutting down", retryable=True)
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="neonize-lifecycle")
        outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(_retrieve)
        self._queue.put_nowait((op, outcome, spaced))
        return await asyncio.shield(outcome)

    async def _work(self) -> None:
        while True:
            op, outcome, spaced = await self._queue.get()
            try:
                result = await op()
            except Exception as exc:
                if not outcome.done():
                    outcome.set_exception(exc)
            else:
                if not outcome.done():
                    outcome.set_result(result)
            if spaced:
                # Neonize() writes the Go maps from its own thread after the call returned.
                await asyncio.sleep(self.spacing)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            _, outcome, _ = self._queue.get_nowait()
            if not outcome.done():
                outcome.set_exception(EngineError("the engine is shutting down", retryable=True))


@dataclass(eq=False)
class _Item:
    """One callback from Go, waiting for its turn on the host's loop."""

    kind: str  # qr, login, me, event, commit, exit
    payload: Any = None
    code: int = 0
    done: concurrent.futures.Future[None] | None = None  # set when neonize's thread waits


class _Pump:
    """One number's Go callbacks, handled one at a time, in order, on the host's loop."""

    def __init__(self, session: str, handle: Callable[[_Item], Awaitable[None]]) -> None:
        self.session = session
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._handle = handle
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._closed = False
        self._worker = self.loop.create_task(self._work(), name=f"neonize-events-{session}")

    def submit(self, item: _Item) -> bool:
        """Queue from any thread; False when nobody will handle it (stopped, or host exiting)."""
        if self._closed:
            return False
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the host is exiting
            return False
        return True

    def submit_and_wait(self, item: _Item) -> None:
        """From neonize's thread: return only once the item was handled (or cannot be)."""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("a commit cannot wait on the loop's own thread")
        item.done = concurrent.futures.Future()
        if not self.submit(item):
            log.warning("a %s arrived after its client stopped; it is not recorded",
                        type(item.payload).__name__, extra={"session": self.session})
            return
        while True:
            try:
                item.done.result(timeout=1.0)
                return
            except concurrent.futures.TimeoutError:
                if self.loop.is_closed():
                    return
            except Exception:  # the handler failed: already logged on the loop
                return

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    self._finish(item)
                    raise
                # emit_committed was cancelled: the supervisor is gone and the host exits.
                log.warning("%s event not committed: the supervisor went away", item.kind,
                            extra={"session": self.session})
            except Exception:
                log.exception("handling neonize's %s callback failed", item.kind,
                              extra={"session": self.session})
            self._finish(item)

    @staticmethod
    def _finish(item: _Item) -> None:
        if item.done is not None and not item.done.done():
            item.done.set_result(None)

    async def close(self, within: float) -> None:
        """Handle what is already queued (bounded), then release anything still waiting."""
        if self._closed:
            return
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), within)
        except TimeoutError:
            log.warning("events still queued after %.0fs; dropping them", within,
                        extra={"session": self.session})
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._closed = True
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._finish(item)


class _Events(Event):  # type: ignore[misc]  # neonize ships no type information
    """neonize's event dispatcher, replaced: parse on neonize's thread, hand over in order."""

    def __init__(self, client: _Client, session: _Session) -> None:
        super().__init__(client)
        self.session = session

    def execute(self, uuid: bytes, binary: int, size: int, code: int) -> None:
        try:
            self.session.go_event(code, ctypes.string_at(binary, size) if size else b"")
        except Exception:  # an exception here would only be printed by ctypes
            log.exception("neonize event %d could not be handled", code,
                          extra={"session": self.session.id})


class _Client(NewAClient):  # type: ignore[misc]
    """A neonize client whose callbacks go to its `_Session` and whose connect runs in a
    daemon thread of its own."""

    def __init__(self, session: _Session) -> None:
        super().__init__(store_dsn(session.store_path), uuid=session.id)
        # A garbage-collected client would call Stop() from the finalizer thread: a map race.
        self._stop_finalizer.detach()
        self.session = session
        self.event = _Events(self, session)

    def _NewAClient__onQr(self, uuid: int, qr_address: int) -> None:
        try:
            self.session.go_qr(ctypes.string_at(qr_address).decode())
        except Exception:
            log.exception("a QR code could not be handled", extra={"session": self.session.id})

    def _NewAClient__onLoginStatus(self, uuid: int, status: int | None) -> None:
        try:
            self.session.go_login(ctypes.string_at(status).decode() if status else "")
        except Exception:
            log.exception("a login status could not be handled",
                          extra={"session": self.session.id})

    def launch(self, on_exit: Callable[[str], None]) -> None:
        """What `NewAClient.connect()` does, with `Neonize()` in a daemon thread."""
        qr_callback = func_string(self._NewAClient__onQr)
        login_callback = func_string(self._NewAClient__onLoginStatus)
        event_callback = func_callback_bytes(self.event.execute)
        # Go calls these for as long as the client lives: they must outlive it.
        self._connect_refs = (qr_callback, login_callback, event_callback)
        name, uuid, level = self.name.encode(), self.uuid, _go_log_level()

        def run() -> None:
            error = ""
            try:
                result = gocode.Neonize(
                    name, uuid, b"", 0, 0, level, qr_callback, login_callback, event_callback,
                    _LOG_CALLBACK, _SUBSCRIBED, len(_SUBSCRIBED), _DEVICE_PROPS,
                    len(_DEVICE_PROPS), b"", 0, None,
                )
                error = result.decode(errors="replace") if result else ""
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            on_exit(error)

        threading.Thread(target=run, name=f"whatsapp-{self.session.id}", daemon=True).start()


@dataclass(eq=False)
class _Session:
    """One number in this host: its client, its event pump and what Go reported so far."""

    id: str
    store_path: Path
    engine: NeonizeEngine
    loop: asyncio.AbstractEventLoop = field(init=False)
    client: _Client = field(init=False)
    pump: _Pump = field(init=False)
    # What neonize's thread reported; each is set before `progressed`, so whoever sees
    # `progressed` also sees why.
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    qr_seen: asyncio.Event = field(default_factory=asyncio.Event)  # the QR phase has begun
    qr_over: asyncio.Event = field(default_factory=asyncio.Event)  # ... and ended
    device_known: asyncio.Event = field(default_factory=asyncio.Event)  # connected as a device
    exited: asyncio.Future[str] = field(init=False)  # Neonize() returned (its error text)
    launched: asyncio.Future[bool] = field(init=False)
    me: Device | None = None
    qr_codes: int = 0
    connected: bool = False
    qr_status: str = ""  # how the QR phase ended (written on neonize's thread)
    quiet: bool = False  # a logout is under way: its own state events are not news
    closing: str = ""  # why the client is being stopped
    freed: bool = False  # Stop() was called: Go no longer knows this client
    stop_task: asyncio.Task[None] | None = None
    watchdog: asyncio.TimerHandle | None = None

    @property
    def stuck(self) -> bool:
        """Neonize() will never return: the QR phase ended without a link."""
        return self.qr_over.is_set() and self.qr_status != _QR_OK

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.exited = self.loop.create_future()
        self.launched = self.loop.create_future()
        self.pump = _Pump(self.id, lambda item: self.engine._handle(self, item))
        self.client = _Client(self)

    # -- on neonize's thread: parse, then hand over ----------------------------------------------

    def go_qr(self, code: str) -> None:
        self._set(self.qr_seen)
        self._set(self.progressed)
        self.pump.submit(_Item("qr", code))

    def go_login(self, status: str) -> None:
        if status != _QR_SCANNED_WITHOUT_MULTIDEVICE:
            self.qr_status = status
            # The QR phase is over: neonize reads the maps once this returns. Keep writers
            # (a Stop of this very client above all) away until it has.
            self.engine._hold_maps(self.loop)
            self._set(self.qr_over)
        self._set(self.progressed)
        self.pump.submit(_Item("login", status))

    def go_event(self, code: int, raw: bytes) -> None:
        if code == _ME:  # sent once neonize has read the maps after connecting
            self._set(self.device_known)
        self._set(self.progressed)
        kind = INT_TO_EVENT.get(code)
        if kind is None:
            return
        event = kind.FromString(raw)
        if code == _ME:
            self.client.me = event
            self.pump.submit(_Item("me", event))
        elif code == _MESSAGE:
            message = translate.inbound_message(self.id, event)
            if message is not None:
                self.pump.submit_and_wait(_Item("commit", message))
        elif code == _RECEIPT:
            receipt = translate.receipt_event(self.id, event)
            if receipt is not None:
                self.pump.submit_and_wait(_Item("commit", receipt))
        else:
            self.pump.submit(_Item("event", event, code=code))

    def go_exit(self, error: str) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the host is exiting
            self.loop.call_soon_threadsafe(self.engine._exited, self, error)

    def _set(self, event: asyncio.Event) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: the host is exiting
            self.loop.call_soon_threadsafe(event.set)


class NeonizeEngine(Engine):
    name = "neonize"

    def __init__(self, sink: EngineSink, options: EngineOptions) -> None:
        super().__init__(sink, options)
        self._sessions: dict[str, _Session] = {}
        self._gate = _Gate()
        self._lifecycle = _Lifecycle(options.lifecycle_spacing)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Clients whose Neonize() never returned: Go may still hold their callbacks.
        self._zombies: list[_Client] = []
        self._closing = False
        self._ffmpeg = bool(shutil.which("ffmpeg") and shutil.which("ffprobe"))

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self, session: str, store_path: Path) -> None:
        await self._await_previous(session)
        if self._closing:
            raise EngineError("the engine host is shutting down", retryable=True)
        if session in self._sessions:
            raise EngineError(f"{session} is already running in this engine host")
        store_path = Path(store_path)
        if any(char in str(store_path) for char in _STORE_PATH_FORBIDDEN):
            raise EngineError(f"the store path {store_path} contains one of "
                              f"{_STORE_PATH_FORBIDDEN!r}, which SQLite would misread")
        if not store_path.parent.is_dir():
            raise EngineError(f"the store directory {store_path.parent} does not exist")
        s = _Session(session, store_path, self)
        self._sessions[session] = s
        try:
            await self._lifecycle.run(lambda: self._launch(s), spaced=True)
        except Exception as exc:
            log.exception("could not start the WhatsApp client", extra={"session": session})
            if not s.launched.done():
                s.launched.set_result(False)
            if s.launched.result():
                await self._begin_stop(s, "the WhatsApp client could not start")
            else:  # nothing reached Go: forget it quietly, the reply says what happened
                s.closing = "the WhatsApp client could not start"
                await s.pump.close(_DRAIN_WAIT)
                if self._sessions.get(session) is s:
                    del self._sessions[session]
            raise EngineError(f"the WhatsApp client could not start: {exc}",
                              retryable=True) from None

    async def _await_previous(self, session: str) -> None:
        previous = self._sessions.get(session)
        if previous is None or previous.stop_task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(previous.stop_task), _RESTART_WAIT)
        if self._sessions.get(session) is previous:
            raise EngineError(f"{session}'s previous client is still stopping (a connection "
                              "attempt holds it)", retryable=True)

    async def _launch(self, s: _Session) -> None:
        if s.closing:  # stopped while waiting in the queue
            s.launched.set_result(False)
            return

        async def launch_and_settle() -> None:
            try:
                s.client.launch(s.go_exit)
            except BaseException:
                s.launched.set_result(False)
                raise
            s.launched.set_result(True)
            s.watchdog = s.loop.call_later(_DIAL_LIMIT, self._dial_overdue, s)
            await _first(s.progressed, s.exited, within=_START_SETTLE)

        await self._gate.run(launch_and_settle, exclusive=True)

    def _dial_overdue(self, s: _Session) -> None:
        s.watchdog = None
        if s.progressed.is_set() or s.exited.done() or s.closing:
            return
        self.sink.emit(protocol.ConnectFailed(
            session=s.id, reason=f"no answer from WhatsApp within {_DIAL_LIMIT:.0f}s",
            retryable=True))
        self._begin_stop(s, "connect timed out")

    async def stop(self, session: str) -> None:
        s = self._sessions.get(session)
        if s is None:  # nothing runs here under that name: nothing to undo
            return
        await self._bounded_stop(s, "stopped")

    async def logout(self, session: str) -> None:
        s = self._running(session)
        error: EngineError | None = None
        if s.connected and not s.closing:
            s.quiet = True
            try:
                await asyncio.wait_for(
                    self._lifecycle.run(lambda: self._call(s, s.client.logout), spaced=False),
                    _STOP_REPLY_WAIT,
                )
            except LogoutError as exc:
                error = EngineError(f"WhatsApp did not confirm the logout: {exc}",
                                    retryable=True)
            except TimeoutError:
                error = EngineError("WhatsApp did not answer the logout in time", retryable=True)
        else:
            error = EngineError(f"{session} is not connected: its client is stopped here, but "
                                "the phone may still list the device", retryable=True)
        # Whatever WhatsApp said, the client goes: the supervisor forgets the number now.
        await self._bounded_stop(s, "logged out")
        if error is not None:
            raise error

    async def shutdown(self) -> None:
        self._closing = True
        stops = [self._begin_stop(s, "engine host shutting down")
                 for s in list(self._sessions.values())]
        if stops:
            _, pending = await asyncio.wait(stops, timeout=_SHUTDOWN_WAIT)
            if pending:
                log.warning("%d WhatsApp clients still stopping at shutdown (a connection "
                            "attempt holds them)", len(pending))
        await self._lifecycle.close()
        for task in list(self._tasks):
            task.cancel()

    async def _bounded_stop(self, s: _Session, reason: str) -> None:
        task = self._begin_stop(s, reason)
        try:
            await asyncio.wait_for(asyncio.shield(task), _STOP_REPLY_WAIT)
        except TimeoutError:
            # whatsmeow holds the socket lock while dialing: Stop() waits for the dial (up to
            # 60 s). Answer now; `Stopped` follows when the client is really gone.
            log.info("still stopping after %.0fs (a connection attempt is under way)",
                     _STOP_REPLY_WAIT, extra={"session": s.id})

    def _begin_stop(self, s: _Session, reason: str) -> asyncio.Task[None]:
        """Stop this client once (later calls get the same task); `Stopped` ends it."""
        if s.stop_task is None:
            s.closing = reason
            if s.watchdog is not None:
                s.watchdog.cancel()
                s.watchdog = None
            s.stop_task = self._spawn(self._stop(s, reason))
        return s.stop_task

    async def _stop(self, s: _Session, reason: str) -> None:
        try:
            if await asyncio.shield(s.launched):
                if await self._stoppable(s):
                    await self._lifecycle.run(
                        lambda: self._gate.run(lambda: self._free(s), exclusive=True),
                        spaced=False)
                    if not s.stuck:
                        await _first(s.exited, within=_EXIT_WAIT)
                else:
                    log.error("the WhatsApp client is left running: stopping it now could "
                              "crash the engine host", extra={"session": s.id})
                if not s.exited.done():
                    self._zombies.append(s.client)
                    log.info("the WhatsApp client's thread stays blocked in neonize%s",
                             " (it does after a QR phase without a link)" if s.stuck else "",
                             extra={"session": s.id})
            await s.pump.close(_DRAIN_WAIT)
        except Exception:
            log.exception("stopping the WhatsApp client failed", extra={"session": s.id})
        finally:
            if self._sessions.get(s.id) is s:
                del self._sessions[s.id]
            self.sink.emit(protocol.Stopped(session=s.id, reason=reason))

    async def _free(self, s: _Session) -> None:
        s.freed = True  # from now on a call for this client would reach a nil client in Go
        await s.client.stop()

    async def _call(self, s: _Session, op: Callable[[], Awaitable[T]]) -> T:
        """A Go call for this client, never overlapping a connect or a stop, never after one."""

        async def guarded() -> T:
            if s.freed:
                raise EngineError(f"{s.id} is stopped", retryable=True)
            return await op()

        return await self._gate.run(guarded)

    async def _stoppable(self, s: _Session) -> bool:
        """Wait until neonize's thread no longer needs this client's map entries.

        neonize reads `clients[id]` right after the dial and again when the QR phase ends; if
        Stop() deleted the entry first, that read dereferences nil and the process dies. The
        waits happen here, not in the lifecycle queue, so other numbers are not held up.
        """
        if not s.progressed.is_set() and not s.exited.done():
            # Dialing; Stop() would block on whatsmeow's socket lock until the dial ends anyway.
            await _first(s.progressed, s.exited, within=_DIAL_LIMIT)
        if s.qr_seen.is_set() and not s.qr_over.is_set() and not s.exited.done():
            # whatsmeow keeps offering codes after a local disconnect and ends the phase with
            # "timeout": close the connection now, free the client when the phase is over.
            with contextlib.suppress(NeonizeError):
                await self._lifecycle.run(lambda: self._call(s, s.client.disconnect),
                                          spaced=False)
            await _first(s.qr_over, s.exited, within=_QR_PHASE_LIMIT)
        if s.qr_over.is_set() and not s.exited.done():
            await asyncio.sleep(_MAP_SETTLE)  # in case the gate could not be held for it
        return s.exited.done() or s.device_known.is_set() or s.qr_over.is_set()

    def _exited(self, s: _Session, error: str) -> None:
        """Neonize() returned (on the loop): a failed first connect, or the end of a stop."""
        if not s.exited.done():
            s.exited.set_result(error)
        if not s.closing:
            s.pump.submit(_Item("exit", error))

    def _hold_maps(self, loop: asyncio.AbstractEventLoop) -> None:
        """From neonize's thread: take the gate exclusively for a moment, then go on."""
        try:
            held = asyncio.run_coroutine_threadsafe(self._gate.hold(_MAP_SETTLE), loop)
        except RuntimeError:  # loop closed
            return
        try:
            held.result(timeout=_HOLD_WAIT)
        except concurrent.futures.TimeoutError:
            held.cancel()
            log.warning("the Go maps could not be reserved within %.0fs", _HOLD_WAIT)

    # -- events, in order per number --------------------------------------------------------------

    async def _handle(self, s: _Session, item: _Item) -> None:
        if item.kind == "commit":
            await self.sink.emit_committed(item.payload)
        elif item.kind == "me":
            s.me = item.payload
        elif item.kind == "exit":
            self._on_exit(s, item.payload)
        elif s.closing or s.quiet:
            return  # the client is going away on our request: its state events are noise
        elif item.kind == "qr":
            s.qr_codes += 1
            lasting = translate.FIRST_QR_SECONDS if s.qr_codes == 1 else translate.NEXT_QR_SECONDS
            self.sink.emit(protocol.Qr(session=s.id, code=item.payload, expires_in=lasting))
        elif item.kind == "login":
            self._on_login_status(s, item.payload)
        elif item.kind == "event":
            await self._on_event(s, item.code, item.payload)

    def _on_exit(self, s: _Session, error: str) -> None:
        if s.closing:
            return
        if error:
            reason, retryable = translate.dial_failure(error)
            self.sink.emit(protocol.ConnectFailed(session=s.id, reason=reason,
                                                  retryable=retryable))
            self._begin_stop(s, "connect failed")
        else:
            self._begin_stop(s, "the WhatsApp client ended")

    def _on_login_status(self, s: _Session, status: str) -> None:
        if status == _QR_OK:
            log.info("linked by QR code", extra={"session": s.id})
            return
        if status == _QR_SCANNED_WITHOUT_MULTIDEVICE:
            self.sink.emit(protocol.PairFailed(
                session=s.id, reason="the phone that scanned cannot link devices; update "
                "WhatsApp on it"))
            return
        if status == "timeout":
            self.sink.emit(protocol.QrTimeout(session=s.id))
            self._begin_stop(s, "the QR code expired before a scan")
        elif status == "error":
            self.sink.emit(protocol.PairFailed(session=s.id, reason="pairing failed"))
            self._begin_stop(s, "pairing failed")
        elif status == "err-client-outdated":
            self.sink.emit(protocol.ConnectFailed(
                session=s.id, reason="WhatsApp says this client version is outdated; "
                "upgrade WhatsDeX", retryable=False))
            self._begin_stop(s, "client outdated")
        else:
            self.sink.emit(protocol.ConnectFailed(
                session=s.id, reason=f"pairing ended unexpectedly ({status or 'no status'})",
                retryable=True))
            self._begin_stop(s, "pairing ended unexpectedly")

    async def _on_event(self, s: _Session, code: int, event: Any) -> None:
        emit = self.sink.emit
        if code == _PAIR:
            emit(translate.pair_status(s.id, event, s.me))
        elif code == _CONNECTED:
            s.connected = True
            if s.me is None:  # neonize reports the device first; asking Go is safe now
                s.me = await self._call(s, s.client.get_me)
            emit(translate.connected(s.id, s.me))
        elif code == _DISCONNECTED:
            s.connected = False
            emit(protocol.Disconnected(session=s.id, reason="connection lost", will_retry=True))
        elif code == _KEEPALIVE_LOST:
            emit(protocol.KeepAlive(session=s.id, ok=False))
        elif code == _KEEPALIVE_BACK:
            emit(protocol.KeepAlive(session=s.id, ok=True))
        elif code == _LOGGED_OUT:
            s.connected = False
            emit(protocol.LoggedOut(session=s.id, reason=translate.logged_out_reason(event)))
            self._begin_stop(s, "logged out")
        elif code == _REPLACED:
            s.connected = False
            emit(protocol.StreamReplaced(session=s.id))
            self._begin_stop(s, "another client took over the connection")
        elif code == _BANNED:
            s.connected = False
            log.warning("temporarily banned: %s", translate.ban_reason(event),
                        extra={"session": s.id})
            emit(translate.ban(s.id, event))
            self._begin_stop(s, "temporarily banned")
        elif code == _FAILURE:
            reason, retryable, reconnecting = translate.connect_failure(event)
            s.connected = False
            if reconnecting:
                emit(protocol.Disconnected(session=s.id, reason=reason, will_retry=True))
            else:
                emit(protocol.ConnectFailed(session=s.id, reason=reason, retryable=retryable))
                self._begin_stop(s, "connect failed")
        elif code == _OUTDATED:
            s.connected = False
            emit(protocol.ConnectFailed(
                session=s.id, reason="WhatsApp says this client version is outdated; upgrade "
                "WhatsDeX", retryable=False))
            self._begin_stop(s, "client outdated")
        elif code == _STREAM_ERROR:
            s.connected = False
            emit(protocol.ConnectFailed(session=s.id, reason=translate.stream_error_reason(event),
                                        retryable=True))
            self._begin_stop(s, "stream error")

    # -- commands on a running number -------------------------------------------------------------

    async def pair_phone(self, session: str, phone: str) -> str:
        s = self._running(session)
        if s.closing:
            raise EngineError(f"{session} is stopping", retryable=True)
        if s.me is not None:
            raise EngineError(f"{session} is already linked")
        if s.qr_codes == 0:
            raise EngineError("a pairing code can be asked for once the first QR code has "
                              "been shown", retryable=True)
        if s.qr_over.is_set():
            raise EngineError("the pairing window has closed; start the number again")
        digits = phone.strip().removeprefix("+")
        if not (digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 15):
            raise EngineError(f"{phone!r} is not a phone number (international digits)")
        try:
            code: str = await self._call(
                s, lambda: s.client.PairPhone(digits, show_push_notification=True))
        except PairPhoneError as exc:
            raise EngineError(f"WhatsApp gave no pairing code: {exc}", retryable=True) from None
        return code

    async def send(self, command: protocol.Send) -> dict[str, Any]:
        s = self._connected(command.session)
        try:
            to = translate.parse_address(command.to)
            quote = None
            if command.quoted_id:
                author = command.quoted_sender or (
                    command.to if to.Server != translate.GROUP_SERVER else "")
                quote = translate.quote_context(command.quoted_id, author)
        except ValueError as exc:
            raise EngineError(str(exc)) from None

        async def build_and_send() -> Any:
            message = await self._build(s, command, to, quote)
            return await s.client.send_message(to, message)

        try:
            response = await self._call(s, build_and_send)
        except SendMessageError as exc:
            text = str(exc)
            permanent = any(marker in text.lower() for marker in _PERMANENT_SEND_ERRORS)
            raise EngineError(f"WhatsApp did not take the message: {text}",
                              retryable=not permanent) from None
        except UploadError as exc:
            raise EngineError(f"uploading the media failed: {exc}", retryable=True) from None
        except NeonizeError as exc:
            raise EngineError(f"sending failed: {exc}", retryable=True) from None
        stamp = int(response.Timestamp)
        return {
            "wa_id": str(response.ID),
            "timestamp_ms": translate.to_ms(stamp) if stamp else int(time.time() * 1000),
        }

    async def _build(
        self, s: _Session, command: protocol.Send, to: JID, quote: ContextInfo | None
    ) -> Message:
        kind = command.kind
        if kind == "text":
            if not command.text:
                raise EngineError("a text message needs text")
            return translate.text_message(command.text, quote)
        if kind == "location":
            if command.latitude is None or command.longitude is None:
                raise EngineError("a location needs latitude and longitude")
            return translate.location_message(command.latitude, command.longitude,
                                              command.location_name, quote)
        if kind == "reaction":
            if not command.reaction_to:
                raise EngineError("a reaction needs the id of the message it reacts to")
            author = None  # whose message it is: only groups name it in the reaction
            if not command.reaction_from_me and command.quoted_sender:
                try:
                    author = translate.parse_address(command.quoted_sender)
                except ValueError as exc:
                    raise EngineError(str(exc)) from None
            return translate.reaction_message(to, command.reaction_to, command.text,
                                              from_me=command.reaction_from_me, author=author)
        media = command.media
        if media is None or not media.data:
            raise EngineError(f"a {kind} message needs its media bytes")
        try:
            message = await self._build_media(s, kind, media)
        except (NeonizeError, EngineError):
            raise
        except Exception as exc:  # PIL, ffmpeg or libmagic could not read the bytes
            raise EngineError(f"the {kind} could not be prepared: {exc}") from None
        content = getattr(message, f"{kind}Message")
        caption = media.caption or command.text
        if caption and kind != "audio":
            content.caption = caption  # set here: neonize would parse captions for @mentions
        if quote is not None:
            content.contextInfo.MergeFrom(quote)
        return message

    async def _build_media(
        self, s: _Session, kind: str, media: protocol.MediaPayload
    ) -> Message:
        """neonize's builders, always with bytes (a str is opened as a path or fetched)."""
        client = s.client
        data = bytes(media.data)
        message: Message
        if kind == "image":
            message = await client.build_image_message(data)
        elif kind == "document":
            message = await client.build_document_message(
                data, title=media.filename or None, filename=media.filename or None,
                mimetype=media.mimetype or None)
        elif kind == "video":
            if self._ffmpeg:  # neonize's builder needs ffmpeg for the duration and thumbnail
                message = await client.build_video_message(data)
            else:
                upload = await client.upload(data, MediaType.MediaVideo)
                message = Message(videoMessage=VideoMessage(**_uploaded(upload)))
        elif kind == "audio":
            if self._ffmpeg:
                message = await client.build_audio_message(data, ptt=media.voice_note)
            else:
                upload = await client.upload(data, MediaType.MediaAudio)
                message = Message(audioMessage=AudioMessage(PTT=media.voice_note,
                                                            **_uploaded(upload)))
        else:
            raise EngineError(f"cannot send a {kind!r} message")
        if kind in ("video", "audio"):
            content = getattr(message, f"{kind}Message")
            mimetype = media.mimetype or content.mimetype or f"{kind}/mp4"
            if media.voice_note and mimetype.split(";")[0].strip() == "audio/ogg":
                mimetype = "audio/ogg; codecs=opus"  # what WhatsApp expects of a voice note
            content.mimetype = mimetype
        return message

    async def mark_read(self, command: protocol.MarkRead) -> None:
        s = self._connected(command.session)
        if not command.message_ids:
            return
        try:
            chat = translate.parse_address(command.chat)
            sender = translate.parse_address(command.sender) if command.sender else chat
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        try:
            await self._call(s, lambda: s.client.mark_read(
                *command.message_ids, chat=chat, sender=sender, receipt=ReceiptType.READ))
        except MarkReadError as exc:
            raise EngineError(f"WhatsApp did not take the read receipt: {exc}",
                              retryable=True) from None

    # -- helpers ----------------------------------------------------------------------------------

    def _running(self, session: str) -> _Session:
        s = self._sessions.get(session)
        if s is None:
            raise EngineError(f"{session} is not running in this engine host", retryable=True)
        return s

    def _connected(self, session: str) -> _Session:
        s = self._running(session)
        if not s.connected or s.closing:
            raise EngineError(f"{session} is not connected", retryable=True)
        return s

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a background task of the neonize engine failed",
                      exc_info=task.exception())


def _uploaded(upload: Any) -> dict[str, Any]:
    """The fields every media message copies from an upload."""
    return {
        "URL": upload.url,
        "directPath": upload.DirectPath,
        "mediaKey": upload.MediaKey,
        "fileEncSHA256": upload.FileEncSHA256,
        "fileSHA256": upload.FileSHA256,
        "fileLength": upload.FileLength,
    }
