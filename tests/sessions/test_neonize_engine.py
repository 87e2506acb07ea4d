"""The neonize engine with the real library and no network.

Tests that reach Go (connects, stops) run the engine in a child process: a Go crash aborts
the process it happens in, and must fail a test, not kill the test run. The tests in this
process only use neonize's Python side (the client object, its event dispatcher and protobuf
classes), called the way Go calls it: through ctypes callbacks, from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_root = logging.getLogger()
_handlers, _level = list(_root.handlers), _root.level
from neonize._binder import func_callback_bytes, func_string  # noqa: E402
from neonize.proto import Neonize_pb2 as N  # noqa: E402
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message  # noqa: E402

from whatsdex.sessions import protocol  # noqa: E402
from whatsdex.sessions.engine import EngineError, EngineOptions  # noqa: E402
from whatsdex.sessions.engines import neonize as engine_module  # noqa: E402
from whatsdex.sessions.engines.neonize import NeonizeEngine, _Gate, _Lifecycle, _Session  # noqa: E402

# Importing neonize calls logging.basicConfig: give the rest of the suite its logging back.
_root.handlers[:] = _handlers
_root.setLevel(_level)

ME = "15559990000"
PHONE = "15551234567"
LID = "202012345678901"
EMPTY = N.JID(User="", Server="", RawAgent=0, Device=0, Integrator=0, IsEmpty=True)
ENGINE_LOG = "whatsdex.sessions.engines.neonize"


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> N.JID:
    return N.JID(User=user, Server=server, RawAgent=0, Device=device, Integrator=0,
                 IsEmpty=False)


def message_event(text: str, wa_id: str = "3EB0AAAA") -> N.Message:
    return N.Message(
        Info=N.MessageInfo(ID=wa_id, Timestamp=1_700_000_000_123, Pushname="Ann",
                           MessageSource=N.MessageSource(
                               Chat=jid(PHONE), Sender=jid(PHONE, device=2), SenderAlt=EMPTY,
                               RecipientAlt=EMPTY, IsFromMe=False, IsGroup=False)),
        Message=Message(conversation=text),
    )


def device() -> N.Device:
    return N.Device(JID=jid(ME, device=7), LID=jid(LID, "lid", device=7), PushName="Shop",
                    Platform="", BussinessName="", Initialized=True)


class Sink:
    """Records events; `emit_committed` can be held until the test lets it go."""

    def __init__(self, *, hold: bool = False) -> None:
        self.events: list[protocol.Base] = []
        self.committing = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail_on: type[protocol.Base] | None = None

    def emit(self, event: protocol.Base) -> None:
        if self.fail_on is not None and isinstance(event, self.fail_on):
            raise RuntimeError("the sink broke")
        self.events.append(event)

    async def emit_committed(
        self, event: protocol.InboundMessage | protocol.ReceiptEvent
    ) -> None:
        self.committing.set()
        await self.release.wait()
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.events]


class GoThread:
    """Calls a session's callbacks the way Go does: through ctypes, from another thread."""

    def __init__(self, s: _Session) -> None:
        self.s = s
        # The same trampolines neonize hands to Go.
        self._event = func_callback_bytes(s.client.event.execute)
        self._qr = func_string(s.client._NewAClient__onQr)
        self._login = func_string(s.client._NewAClient__onLoginStatus)
        self._uuid = ctypes.create_string_buffer(s.id.encode())

    def event(self, code: int, event: Any) -> threading.Event:
        raw = event.SerializePartialToString()
        buffer = ctypes.create_string_buffer(raw, max(1, len(raw)))
        return self._run(lambda: self._event(self.s.id.encode(), ctypes.addressof(buffer),
                                             len(raw), code))

    def qr(self, code: str) -> threading.Event:
        text = ctypes.create_string_buffer(code.encode())
        return self._run(lambda: self._qr(ctypes.addressof(self._uuid), ctypes.addressof(text)))

    def login(self, status: str) -> threading.Event:
        text = ctypes.create_string_buffer(status.encode())
        return self._run(lambda: self._login(ctypes.addressof(self._uuid),
                                             ctypes.addressof(text)))

    @staticmethod
    def _run(call: Any) -> threading.Event:
        returned = threading.Event()

        def run() -> None:
            call()
            returned.set()

        threading.Thread(target=run, daemon=True).start()
        return returned


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def engine(sink: Sink, tmp_path: Path) -> Any:
    engine = NeonizeEngine(sink, EngineOptions(data_dir=tmp_path, lifecycle_spacing=0.01))
    yield engine
    await engine.shutdown()


def offline_session(engine: NeonizeEngine, tmp_path: Path, name: str = "ses_t") -> _Session:
    """A session whose client never reached Go: its stop has nothing to free there."""
    s = _Session(name, tmp_path / f"{name}.db", engine)
    engine._sessions[name] = s
    s.launched.set_result(False)
    return s


async def returned_soon(returned: threading.Event, seconds: float = 5.0) -> bool:
    return await asyncio.to_thread(returned.wait, seconds)


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# -- the committing dispatcher (neonize's Python side, no Go) ------------------------------------


async def test_message_callback_returns_only_after_the_commit(tmp_path: Path) -> None:
    sink = Sink(hold=True)
    engine = NeonizeEngine(sink, EngineOptions(data_dir=tmp_path))
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    returned = go.event(17, message_event("must not be lost"))
    await asyncio.wait_for(sink.committing.wait(), 5)
    await asyncio.sleep(0.3)
    # whatsmeow acknowledges the message once this call returns: not before the commit.
    assert not returned.is_set()
    assert sink.events == []
    sink.release.set()
    assert await returned_soon(returned)
    [message] = sink.events
    assert isinstance(message, protocol.InboundMessage)
    assert (message.session, message.wa_id, message.text) == ("ses_t", "3EB0AAAA",
                                                              "must not be lost")
    await engine.shutdown()


async def test_receipts_are_committed_and_ignored_kinds_are_not(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path
) -> None:
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    source = N.MessageSource(Chat=jid(PHONE), Sender=jid(PHONE), SenderAlt=EMPTY,
                             RecipientAlt=EMPTY, IsFromMe=False, IsGroup=False)
    retry = N.Receipt(MessageSource=source, MessageIDs=["3EB0A"], Timestamp=1_700_000_000,
                      Type=N.Receipt.RETRY)
    assert await returned_soon(go.event(18, retry))
    read = N.Receipt(MessageSource=source, MessageIDs=["3EB0A"], Timestamp=1_700_000_000,
                     Type=N.Receipt.READ)
    assert await returned_soon(go.event(18, read))
    [receipt] = sink.events
    assert isinstance(receipt, protocol.ReceiptEvent)
    assert (receipt.status, receipt.message_ids, receipt.timestamp_ms) == (
        "read", ["3EB0A"], 1_700_000_000_000)


async def test_events_keep_their_order_and_handler_failures_are_logged(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    sink.fail_on = protocol.StreamReplaced
    feed = [
        (0, device()), (3, N.Connected(status=True)), (4, N.KeepAliveTimeout(ErrorCount=1)),
        (17, message_event("one", "3EB01")), (5, N.KeepAliveRestored()),
        (17, message_event("two", "3EB02")), (12, N.Disconnected(status=True)),
        (3, N.Connected(status=True)),
    ]
    with caplog.at_level(logging.ERROR, logger=ENGINE_LOG):
        for code, event in feed:  # one after the other, like neonize's single event thread
            assert await returned_soon(go.event(code, event))
        await until(lambda: len(sink.events) == 7)
        # A failing handler is logged, and the events after it still flow.
        assert await returned_soon(go.event(7, N.StreamReplaced()))
        await until(lambda: any("event callback failed" in r.getMessage()
                                for r in caplog.records))
    assert sink.kinds() == ["Connected", "KeepAlive", "InboundMessage", "KeepAlive",
                            "InboundMessage", "Disconnected", "Connected"]
    connected = sink.events[0]
    assert connected == protocol.Connected(session="ses_t", jid=f"{ME}@s.whatsapp.net",
                                           lid=f"{LID}@lid", push_name="Shop")
    assert [getattr(e, "ok", None) for e in sink.events[1:4:2]] == [False, True]
    assert [getattr(e, "text", "") for e in sink.events if isinstance(
        e, protocol.InboundMessage)] == ["one", "two"]
    assert sink.events[5] == protocol.Disconnected(session="ses_t", reason="connection lost",
                                                   will_retry=True)


async def test_qr_codes_then_timeout_stop_the_client(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path
) -> None:
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    for code in ("2@first,key", "2@second,key"):
        assert await returned_soon(go.qr(code))
    assert await returned_soon(go.login("timeout"))
    await until(lambda: "Stopped" in sink.kinds())
    assert sink.events == [
        protocol.Qr(session="ses_t", code="2@first,key", expires_in=60.0),
        protocol.Qr(session="ses_t", code="2@second,key", expires_in=20.0),
        protocol.QrTimeout(session="ses_t"),
        protocol.Stopped(session="ses_t", reason="the QR code expired before a scan"),
    ]
    assert s.stuck  # neonize keeps this thread forever: the engine must not wait for it
    assert "ses_t" not in engine._sessions


async def test_pairing_success_and_a_phone_without_multidevice(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path
) -> None:
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    assert await returned_soon(go.qr("2@code"))
    assert await returned_soon(go.login("err-scanned-without-multidevice"))
    assert await returned_soon(go.login("success"))
    assert await returned_soon(go.event(0, device()))
    success = N.PairStatus(ID=jid(ME, device=7), Status=N.PairStatus.SUCCESS, Platform="android",
                           BusinessName="")
    assert await returned_soon(go.event(2, success))
    await until(lambda: len(sink.events) == 3)
    assert isinstance(sink.events[1], protocol.PairFailed)
    assert "cannot link devices" in sink.events[1].reason
    assert sink.events[2] == protocol.Paired(session="ses_t", jid=f"{ME}@s.whatsapp.net",
                                             lid=f"{LID}@lid", push_name="Shop",
                                             platform="android")
    assert not s.stuck
    assert "ses_t" in engine._sessions


@pytest.mark.parametrize(("code", "event", "expected", "stops"), [
    (6, N.LoggedOut(OnConnect=False, Reason=N.LOGGED_OUT),
     protocol.LoggedOut(session="ses_t", reason="the device was removed from the phone"), True),
    (7, N.StreamReplaced(), protocol.StreamReplaced(session="ses_t"), True),
    (8, N.TemporaryBan(Code=N.TemporaryBan.SEND_TO_TOO_MANY_PEOPLE, Expire=600),
     protocol.TemporaryBan(session="ses_t", code=1, expires_in=600.0), True),
    (9, N.ConnectFailure(Reason=N.SERVICE_UNAVAILABLE, Message=""),
     protocol.Disconnected(session="ses_t", reason="WhatsApp is temporarily unavailable",
                           will_retry=True), False),
    (9, N.ConnectFailure(Reason=N.BAD_USER_AGENT, Message=""),
     protocol.ConnectFailed(session="ses_t", reason="WhatsApp rejected the client's user agent",
                            retryable=False), True),
    (10, N.ClientOutdated(), protocol.ConnectFailed(
        session="ses_t", reason="WhatsApp says this client version is outdated; upgrade "
        "WhatsDeX", retryable=False), True),
    (11, N.StreamError(Code="516"), protocol.ConnectFailed(
        session="ses_t", reason="WhatsApp closed the stream with error 516", retryable=True),
     True),
])
async def test_connection_events(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path, code: int, event: Any,
    expected: protocol.Base, stops: bool,
) -> None:
    s = offline_session(engine, tmp_path)
    go = GoThread(s)
    assert await returned_soon(go.event(0, device()))
    assert await returned_soon(go.event(code, event))
    await until(lambda: len(sink.events) == (2 if stops else 1))
    assert sink.events[0] == expected
    if stops:
        assert isinstance(sink.events[1], protocol.Stopped)
        assert "ses_t" not in engine._sessions
    else:
        await asyncio.sleep(0.1)
        assert "ses_t" in engine._sessions


async def test_failed_first_connect_reports_then_stops(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path
) -> None:
    s = offline_session(engine, tmp_path)
    error = ('failed to dial whatsapp web websocket: dial tcp: lookup web.whatsapp.com: '
             'no such host')
    threading.Thread(target=s.go_exit, args=(error,)).start()
    await until(lambda: "Stopped" in sink.kinds())
    failed, stopped = sink.events
    assert isinstance(failed, protocol.ConnectFailed)
    assert failed.retryable
    assert failed.reason.startswith("cannot resolve WhatsApp's address")
    assert stopped == protocol.Stopped(session="ses_t", reason="connect failed")


# -- when a stop may free the client in Go (Go calls replaced by recorders) ---------------------


def launched_session(engine: NeonizeEngine, tmp_path: Path) -> tuple[_Session, list[str]]:
    """A session as if Neonize() were running, with Go's Stop/Disconnect recorded instead."""
    s = _Session("ses_t", tmp_path / "t.db", engine)
    engine._sessions["ses_t"] = s
    s.launched.set_result(True)
    calls: list[str] = []

    async def stop() -> None:
        calls.append("stop")

    async def disconnect() -> None:
        calls.append("disconnect")

    s.client.stop, s.client.disconnect = stop, disconnect
    return s, calls


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "_STOP_REPLY_WAIT", 0.3)
    monkeypatch.setattr(engine_module, "_MAP_SETTLE", 0.05)
    monkeypatch.setattr(engine_module, "_EXIT_WAIT", 0.1)


async def test_stop_during_the_qr_phase_waits_for_its_end(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path, quick: None
) -> None:
    """neonize reads `clients[id]` when the QR phase ends; freeing the client before that
    read would make it dereference nil and take the host down."""
    s, calls = launched_session(engine, tmp_path)
    go = GoThread(s)
    assert await returned_soon(go.qr("2@code"))
    await until(lambda: sink.kinds() == ["Qr"])
    started = time.monotonic()
    await engine.stop("ses_t")
    assert time.monotonic() - started < 2  # the caller gets its answer
    assert calls == ["disconnect"]  # the connection is closed, the client not yet freed
    assert "Stopped" not in sink.kinds()
    assert await returned_soon(go.qr("2@late"))  # whatsmeow goes on offering codes
    assert await returned_soon(go.login("timeout"))
    await until(lambda: "Stopped" in sink.kinds())
    assert calls == ["disconnect", "stop"]
    # Nothing after the stop request is news to the supervisor, except that it stopped.
    assert sink.kinds() == ["Qr", "Stopped"]
    assert s.client in engine._zombies  # its thread never leaves neonize: keep its callbacks


async def test_stop_while_dialing_waits_for_the_dial(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path, quick: None
) -> None:
    s, calls = launched_session(engine, tmp_path)
    await engine.stop("ses_t")
    assert calls == []  # Stop() would block on the socket lock; the read after it would race
    go = GoThread(s)
    assert await returned_soon(go.event(0, device()))  # connected: neonize has read its maps
    await until(lambda: "Stopped" in sink.kinds())
    assert calls == ["stop"]


async def test_stop_after_a_link_frees_the_client_at_once(
    engine: NeonizeEngine, sink: Sink, tmp_path: Path, quick: None
) -> None:
    s, calls = launched_session(engine, tmp_path)
    go = GoThread(s)
    assert await returned_soon(go.event(0, device()))
    assert await returned_soon(go.event(3, N.Connected(status=True)))
    await until(lambda: sink.kinds() == ["Connected"])
    threading.Timer(0.05, s.go_exit, args=("",)).start()  # Neonize() returns once stopped
    await engine.stop("ses_t")
    await until(lambda: "Stopped" in sink.kinds())
    assert calls == ["stop"]
    assert sink.kinds() == ["Connected", "Stopped"]
    assert s.client not in engine._zombies

    async def go_call() -> None:
        calls.append("go call")

    # A send that got past its checks before the stop must not reach Go after it.
    with pytest.raises(EngineError, match="stopped"):
        await engine._call(s, go_call)
    assert calls == ["stop"]


# -- commands that need no Go ------------------------------------------------------------------


async def test_commands_on_numbers_that_cannot_take_them(
    engine: NeonizeEngine, tmp_path: Path
) -> None:
    send = protocol.Send(req=1, session="ses_t", outbox_id="o1", to=PHONE, kind="text",
                         text="hi")
    with pytest.raises(EngineError, match="not running") as missing:
        await engine.send(send)
    assert missing.value.retryable
    await engine.stop("ses_nowhere")  # nothing to undo
    with pytest.raises(EngineError, match="not running"):
        await engine.logout("ses_nowhere")

    s = offline_session(engine, tmp_path)
    with pytest.raises(EngineError, match="not connected") as offline:
        await engine.send(send)
    assert offline.value.retryable
    with pytest.raises(EngineError, match="first QR code") as early:
        await engine.pair_phone("ses_t", PHONE)
    assert early.value.retryable
    s.qr_codes = 1
    with pytest.raises(EngineError, match="not a phone number"):
        await engine.pair_phone("ses_t", "12ab")

    s.connected = True  # whatever follows fails before any call into Go
    with pytest.raises(EngineError, match="not a WhatsApp address") as bad:
        await engine.send(protocol.Send(req=2, session="ses_t", outbox_id="o2",
                                        to="someone@example.com", kind="text", text="hi"))
    assert not bad.value.retryable
    with pytest.raises(EngineError, match="needs its media bytes"):
        await engine.send(protocol.Send(req=3, session="ses_t", outbox_id="o3", to=PHONE,
                                        kind="image"))
    with pytest.raises(EngineError, match="latitude and longitude"):
        await engine.send(protocol.Send(req=4, session="ses_t", outbox_id="o4", to=PHONE,
                                        kind="location"))
    with pytest.raises(EngineError, match="already running"):
        await engine.start("ses_t", tmp_path / "other.db")
    with pytest.raises(EngineError, match="misread"):
        await engine.start("ses_q", tmp_path / "a?b.db")
    with pytest.raises(EngineError, match="does not exist"):
        await engine.start("ses_d", tmp_path / "missing" / "s.db")


async def test_messages_built_without_go(engine: NeonizeEngine, tmp_path: Path) -> None:
    s = offline_session(engine, tmp_path)
    base = {"req": 1, "session": "ses_t", "outbox_id": "o", "to": f"{PHONE}@s.whatsapp.net"}
    to = engine_module.translate.parse_address(base["to"])
    quote = engine_module.translate.quote_context("3EB0Q", base["to"])

    text = await engine._build(s, protocol.Send(kind="text", text="hi @15550001111", **base),
                               to, None)
    assert text.conversation == "hi @15550001111"
    reply = await engine._build(s, protocol.Send(kind="text", text="ok", **base), to, quote)
    assert reply.extendedTextMessage.contextInfo.stanzaID == "3EB0Q"
    place = await engine._build(s, protocol.Send(kind="location", latitude=1.5, longitude=2.5,
                                                 location_name="HQ", **base), to, None)
    assert (place.locationMessage.degreesLatitude, place.locationMessage.name) == (1.5, "HQ")
    reaction = await engine._build(s, protocol.Send(kind="reaction", text="👍",
                                                    reaction_to="3EB0R", reaction_from_me=True,
                                                    **base), to, None)
    assert reaction.reactionMessage.key.ID == "3EB0R"
    assert reaction.reactionMessage.key.fromMe
    group = {**base, "to": "120363-1700000000@g.us"}
    group_jid = engine_module.translate.parse_address(group["to"])
    theirs = await engine._build(s, protocol.Send(kind="reaction", text="😂", reaction_to="3EB0G",
                                                  quoted_sender=f"{LID}@lid", **group),
                                 group_jid, None)
    assert theirs.reactionMessage.key.participant == f"{LID}@lid"
    assert not theirs.reactionMessage.key.fromMe
    with pytest.raises(EngineError, match="not a WhatsApp address"):
        await engine._build(s, protocol.Send(kind="reaction", text="x", reaction_to="3EB0G",
                                             quoted_sender="nobody", **group), group_jid, None)


# -- the gate and the lifecycle queue -------------------------------------------------------------


async def test_gate_lets_readers_share_and_writers_wait() -> None:
    gate = _Gate()
    log: list[str] = []
    reading = asyncio.Event()
    finish_reading = asyncio.Event()

    async def reader() -> None:
        log.append("read start")
        reading.set()
        await finish_reading.wait()
        log.append("read end")

    async def writer() -> None:
        log.append("write")

    async def second_reader() -> None:
        log.append("second read")

    first = asyncio.create_task(gate.run(reader))
    await reading.wait()
    write = asyncio.create_task(gate.run(writer, exclusive=True))
    late = asyncio.create_task(gate.run(second_reader))
    await asyncio.sleep(0.05)
    assert log == ["read start"]  # the writer waits; the later reader queues behind it
    # A caller that gives up does not free the gate: its Go call would still be running.
    first.cancel()
    await asyncio.sleep(0.05)
    assert log == ["read start"]
    finish_reading.set()
    await asyncio.wait_for(asyncio.gather(write, late), 5)
    assert log == ["read start", "read end", "write", "second read"]


async def test_lifecycle_runs_one_call_at_a_time_with_spacing() -> None:
    lifecycle = _Lifecycle(spacing=0.1)
    spans: list[tuple[float, float]] = []

    async def op() -> float:
        start = time.monotonic()
        await asyncio.sleep(0.02)
        spans.append((start, time.monotonic()))
        return start

    await asyncio.gather(*(lifecycle.run(op, spaced=True) for _ in range(4)))
    await lifecycle.close()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start - end >= 0.09


# -- the real library in a child process ----------------------------------------------------------

CHILD = textwrap.dedent("""
    import asyncio, json, os, sys, threading, time
    from pathlib import Path

    from whatsdex.sessions.engine import EngineOptions
    from whatsdex.sessions.engines import load_engine
    import whatsdex.sessions.engines.neonize as engine_module

    mode, directory, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    began = time.monotonic()

    def rss_kb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def report(**fields):
        print(json.dumps(fields), flush=True)

    class Sink:
        def __init__(self):
            self.events = []
        def emit(self, event):
            self.events.append((round(time.monotonic() - began, 3), type(event).__name__,
                                getattr(event, "session", ""), getattr(event, "reason", ""),
                                getattr(event, "retryable", None)))
        async def emit_committed(self, event):
            self.emit(event)
        def count(self, kind):
            return sum(1 for event in self.events if event[1] == kind)

    async def settle(sink, kind, wanted, seconds):
        deadline = time.monotonic() + seconds
        while sink.count(kind) < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def main():
        sink = Sink()
        engine_class = load_engine("neonize")
        spacing = float(os.environ.get("SPACING", "0.2"))
        engine = engine_class(sink, EngineOptions(data_dir=directory, lifecycle_spacing=spacing))
        if mode == "offline":
            # One client first: what the library sets up once is not a per-client cost.
            await engine.start("ses_warm", directory / "warm.db")
            await settle(sink, "Stopped", 1, 30)
            rss_before, threads_before = rss_kb(), threading.active_count()
            fds_before = len(os.listdir("/proc/self/fd"))
            started = time.monotonic()
            for i in range(count):
                await engine.start(f"ses_{i}", directory / f"s{i}.db")
            await settle(sink, "Stopped", count + 1, 60)
            for i in range(count):  # already stopped after the failure: nothing to undo
                await engine.stop(f"ses_{i}")
            # A client's thread ends just after it reported its end.
            deadline = time.monotonic() + 10
            while threading.active_count() > threads_before and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            report(mode=mode, seconds=round(time.monotonic() - started, 2),
                   rss_before_kb=rss_before, rss_after_kb=rss_kb(),
                   threads_before=threads_before, threads_after=threading.active_count(),
                   fds_before=fds_before, fds_after=len(os.listdir("/proc/self/fd")),
                   running=len(engine._sessions), events=sink.events)
        elif mode == "hang":
            engine_module._STOP_REPLY_WAIT = 1.0
            engine_module._SHUTDOWN_WAIT = 1.0
            await engine.start("ses_h", directory / "h.db")
            await asyncio.sleep(0.5)
            asked = time.monotonic()
            await engine.stop("ses_h")
            report(mode=mode, stop_seconds=round(time.monotonic() - asked, 2),
                   events=list(sink.events))
        asked = time.monotonic()
        await engine.shutdown()
        report(shutdown_seconds=round(time.monotonic() - asked, 2), events=sink.events,
               alive=True)

    asyncio.run(main())
""")


def run_child(mode: str, directory: Path, count: int = 1, seconds: float = 90.0,
              **env: str) -> tuple[list[dict[str, Any]], float]:
    import os

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(directory), str(count)],
        capture_output=True, text=True, timeout=seconds, check=False,
        env={**os.environ, "NEONIZE_BOT_TAG": "off", **env},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"child exited {done.returncode}: {done.stderr[-3000:]}"
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert reports and reports[-1].get("alive"), done.stderr[-3000:]
    return reports, elapsed


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A local port nothing listens on: a proxy there refuses at once, network or not."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


@contextlib.contextmanager
def silent_proxy() -> Iterator[int]:
    """A proxy that accepts connections and never answers: a dial that hangs (~60 s)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_no_network_ends_in_connect_failed_and_a_wal_store(tmp_path: Path) -> None:
    """The machine's own (absent) network: a clear ConnectFailed, then Stopped, no crash."""
    reports, elapsed = run_child("offline", tmp_path, count=1, seconds=120)
    summary = reports[0]
    events = [event for event in summary["events"] if event[2] == "ses_0"]
    kinds = [event[1] for event in events]
    if "Qr" in kinds:  # a machine that does reach WhatsApp gets QR codes instead
        pytest.skip("this machine reaches WhatsApp")
    assert kinds == ["ConnectFailed", "Stopped"]
    failed_at, _, _, reason, retryable = events[0]
    assert retryable is True
    assert "WhatsApp" in reason
    assert failed_at < 70  # whatsmeow gives up a dial after 60 s at worst
    assert events[1][3] == "connect failed"
    assert summary["running"] == 0
    # The store: WAL mode and whatsmeow's tables, through the DSN trick.
    store = sqlite3.connect(tmp_path / "s0.db")
    try:
        assert store.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in store.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        store.close()
    assert {"whatsmeow_device", "whatsmeow_sessions", "whatsmeow_sender_keys",
            "whatsmeow_identity_keys", "whatsmeow_lid_map"} <= tables
    assert elapsed < 100


def test_fifty_five_clients_in_one_process(tmp_path: Path) -> None:
    """Many starts and stops through the one queue: no map race, all freed, memory measured."""
    count = 55
    with closed_port() as port:
        reports, _ = run_child("offline", tmp_path, count=count, seconds=120,
                               HTTPS_PROXY=f"http://127.0.0.1:{port}", SPACING="0.05")
    summary = reports[0]
    events = summary["events"]
    for i in range(count):
        mine = [event[1] for event in events if event[2] == f"ses_{i}"]
        assert mine == ["ConnectFailed", "Stopped"], (i, mine)
    assert summary["running"] == 0
    # Each client's Neonize() thread has returned: no thread is left per client.
    assert summary["threads_after"] <= summary["threads_before"]
    per_client_kb = (summary["rss_after_kb"] - summary["rss_before_kb"]) / count
    leaked_fds = (summary["fds_after"] - summary["fds_before"]) / count
    print(f"\n{count} clients in {summary['seconds']}s; RSS {per_client_kb:.0f} kB and "
          f"{leaked_fds:.1f} fds per start/stop cycle")
    assert per_client_kb < 3000
    assert reports[-1]["shutdown_seconds"] < 5


def test_stop_during_a_hanging_dial_is_bounded_and_the_process_exits(tmp_path: Path) -> None:
    """whatsmeow holds its socket lock while dialing: Stop() waits for the dial, the engine
    does not make its caller (or the host's exit) wait with it."""
    with silent_proxy() as port:
        reports, elapsed = run_child("hang", tmp_path, seconds=60,
                                     HTTPS_PROXY=f"http://127.0.0.1:{port}")
    stopped = reports[0]
    assert stopped["stop_seconds"] < 3
    assert "Stopped" not in [event[1] for event in stopped["events"]]  # still dialing
    assert reports[-1]["shutdown_seconds"] < 3
    assert elapsed < 30  # the blocked Go thread is a daemon: it does not hold the exit
