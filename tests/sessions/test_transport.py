"""Supervisor ↔ engine host transport, with real child processes running a small test engine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from whatsdex.sessions import launch, protocol
from whatsdex.sessions.engine import EngineOptions
from whatsdex.sessions.hosts import EngineHost, HostGone, HostPool, HostStartFailed

pytestmark = pytest.mark.timeout(60)

ENGINE_DIR = Path(__file__).parent
COMMITTED = (protocol.InboundMessage, protocol.ReceiptEvent)


def _engine_env(spec: str = "fake_engine:FakeEngine") -> dict[str, str]:
    path = [str(ENGINE_DIR), os.environ.get("PYTHONPATH", "")]
    return {"WHATSDEX_TEST_ENGINE": spec, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


class Recorder:
    """Collects what the hosts report; acknowledges committed events unless told not to."""

    def __init__(self, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.events: list[protocol.Event] = []
        self.exits: list[tuple[EngineHost, int | None]] = []

    async def on_event(self, host: EngineHost, event: protocol.Event) -> None:
        self.events.append(event)
        if self.auto_ack and isinstance(event, COMMITTED) and event.ack:
            host.send_acks([event.ack])

    async def on_exit(self, host: EngineHost, code: int | None) -> None:
        self.exits.append((host, code))

    def of(self, kind: type[protocol.Base]) -> list[protocol.Event]:
        return [e for e in self.events if isinstance(e, kind)]


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for a reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def send(text: str = "hi", outbox_id: str = "o1") -> protocol.Send:
    return protocol.Send(req=0, session="ses_a", outbox_id=outbox_id, to="1@s.whatsapp.net",
                         kind="text", text=text)


def sandbox(action: str, **fields: object) -> protocol.SandboxControl:
    return protocol.SandboxControl(req=0, session="ses_a", action=action, **fields)  # type: ignore[arg-type]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def host(data_dir: Path, recorder: Recorder) -> AsyncIterator[EngineHost]:
    host = EngineHost("test", EngineOptions(data_dir=data_dir), recorder.on_event,
                      recorder.on_exit, environment=_engine_env())
    await host.start()
    yield host
    await host.stop(timeout=5)


async def test_handshake_and_round_trip(host: EngineHost, recorder: Recorder) -> None:
    assert host.alive and host.pid and host.pid != os.getpid()
    assert host.rss_bytes() > 1_000_000
    reply = await host.call(protocol.Start(req=0, session="ses_a", store_path="unused.db"))
    assert reply.ok and reply.result == {}
    await until(lambda: recorder.of(protocol.Connected))
    assert [type(e) for e in recorder.events] == [protocol.Qr, protocol.Connected]
    reply = await host.call(send(outbox_id="abc"))
    assert reply.ok and reply.result["wa_id"] == "wa-abc"
    reply = await host.call(protocol.PairPhone(req=0, session="ses_a", phone="15551234567"))
    assert reply.result == {"code": "4567-CODE"}


async def test_concurrent_calls_get_their_own_replies(host: EngineHost) -> None:
    # Later calls finish first, so replies come back in a different order than the calls.
    calls = [host.call(send(f"sleep:{(100 - i) * 0.003}", outbox_id=str(i))) for i in range(100)]
    replies = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert [r.result["wa_id"] for r in replies] == [f"wa-{i}" for i in range(100)]
    assert len({r.req for r in replies}) == 100


async def test_a_slow_command_does_not_block_the_others(host: EngineHost) -> None:
    slow = asyncio.ensure_future(host.call(send("sleep:5")))
    started = time.monotonic()
    reply = await asyncio.wait_for(host.call(protocol.Stop(req=0, session="ses_a")), 5)
    assert reply.ok and time.monotonic() - started < 2.0
    assert not slow.done()
    slow.cancel()


async def test_committed_event_waits_for_the_ack(data_dir: Path) -> None:
    recorder = Recorder(auto_ack=False)
    host = EngineHost("test", EngineOptions(data_dir=data_dir), recorder.on_event,
                      environment=_engine_env())
    await host.start()
    try:
        inbound = asyncio.ensure_future(host.call(sandbox("inbound", text="m", count=1)))
        await until(lambda: recorder.of(protocol.InboundMessage))
        (message,) = recorder.of(protocol.InboundMessage)
        assert isinstance(message, protocol.InboundMessage)
        assert message.ack > 0 and message.wa_id == "m-0"
        # Before the ack the engine is still waiting inside emit_committed.
        await asyncio.sleep(0.3)
        state = await host.call(sandbox("scan"))
        assert state.result["committed"] == [] and not inbound.done()
        host.send_acks([message.ack + 1000])  # an ack for something else releases nothing
        await asyncio.sleep(0.1)
        assert not inbound.done()
        host.send_acks([message.ack])
        reply = await asyncio.wait_for(inbound, 5)
        assert reply.ok and reply.result["committed"] == ["m-0"]
    finally:
        await host.stop(timeout=5)


async def test_engine_errors_become_failed_replies(host: EngineHost) -> None:
    await host.call(sandbox("fail_sends", count=1))
    reply = await host.call(send())
    assert (reply.ok, reply.error, reply.retryable) == (False, "sending is failing", True)
    await host.call(sandbox("fail_sends", count=0))
    reply = await host.call(send("boom"))
    assert (reply.ok, reply.error, reply.retryable) == (
        False, "internal engine error: ValueError: boom", False,
    )
    # The host survives an unexpected exception.
    assert host.alive
    assert (await host.call(send())).ok


async def test_warnings_reach_the_supervisor(host: EngineHost, recorder: Recorder) -> None:
    await host.call(send("log:careful now"))
    await until(lambda: recorder.of(protocol.Log))
    (entry,) = recorder.of(protocol.Log)
    assert isinstance(entry, protocol.Log)
    assert (entry.level, entry.message, entry.session) == ("warning", "careful now", "ses_a")


async def test_sigkill_fails_pending_calls_and_reports_the_exit(
    host: EngineHost, recorder: Recorder
) -> None:
    pending = asyncio.ensure_future(host.call(send("sleep:30")))
    await asyncio.sleep(0.2)
    pid = host.pid
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(HostGone, match="engine host"):
        await asyncio.wait_for(pending, 5)
    assert time.monotonic() - killed < 2.0
    await until(lambda: recorder.exits)
    assert recorder.exits == [(host, -signal.SIGKILL)]
    assert not host.alive and host.rss_bytes() == 0
    with pytest.raises(HostGone):
        await host.call(send())
    host.send_acks([1])  # dropped, not an error


async def test_stop_shuts_the_engine_down_and_exits_zero(
    data_dir: Path, recorder: Recorder
) -> None:
    host = EngineHost("test", EngineOptions(data_dir=data_dir), recorder.on_event,
                      recorder.on_exit, environment=_engine_env())
    await host.start()
    in_flight = asyncio.ensure_future(host.call(send("sleep:30")))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    assert await host.stop(timeout=10) == 0
    assert time.monotonic() - started < 8
    assert recorder.exits == [(host, 0)]
    assert (data_dir / f"shutdown-{host.pid}").read_text() == "clean"
    # A command still running at shutdown gets its one reply, retryable elsewhere.
    reply = in_flight.result()
    assert (reply.ok, reply.retryable) == (False, True)
    assert "shutting down" in reply.error
    assert await host.stop() == 0  # stopping twice is harmless


async def test_sigterm_is_a_clean_shutdown(host: EngineHost, recorder: Recorder,
                                           data_dir: Path) -> None:
    assert host.pid is not None
    os.kill(host.pid, signal.SIGTERM)
    await until(lambda: recorder.exits)
    assert recorder.exits == [(host, 0)]
    assert (data_dir / f"shutdown-{host.pid}").exists()


async def test_host_exits_when_the_supervisor_closes_the_socket(
    host: EngineHost, recorder: Recorder, data_dir: Path
) -> None:
    pid = host.pid
    assert pid is not None
    host._writer.close()  # type: ignore[union-attr]  # what the supervisor dying looks like
    await until(lambda: recorder.exits, timeout=10)
    assert recorder.exits == [(host, 0)]
    assert (data_dir / f"shutdown-{pid}").exists()
    assert gone(pid)


SUPERVISOR = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path

    from whatsdex.sessions.engine import EngineOptions
    from whatsdex.sessions.hosts import EngineHost

    async def on_event(host, event):
        pass

    async def main():
        host = EngineHost("test", EngineOptions(data_dir=Path(sys.argv[1])), on_event)
        await host.start()
        print(host.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_a_host_never_outlives_its_supervisor(data_dir: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(data_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **_engine_env()},
    )
    try:
        assert supervisor.stdout is not None
        pid = int(supervisor.stdout.readline())
        assert not gone(pid)
        supervisor.kill()
        supervisor.wait(5)
        deadline = time.monotonic() + 10
        while not gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(pid), "the engine host outlived its supervisor"
        assert (data_dir / f"shutdown-{pid}").exists()
    finally:
        supervisor.kill()
        supervisor.wait(5)


async def test_a_garbage_frame_is_a_protocol_error(host: EngineHost, recorder: Recorder) -> None:
    with pytest.raises(HostGone, match="unreadable frame"):
        await asyncio.wait_for(host.call(sandbox("crash_host", text="garbage")), 5)
    assert isinstance(host.protocol_error, protocol.ProtocolError)
    await until(lambda: recorder.exits)
    assert recorder.exits == [(host, -signal.SIGKILL)]  # a host that breaks protocol is killed


async def test_a_garbage_frame_from_the_supervisor_stops_the_host(
    host: EngineHost, recorder: Recorder, data_dir: Path
) -> None:
    host._writer.write(b"\x00\x00\x00\x04junk")  # type: ignore[union-attr]
    await until(lambda: recorder.exits, timeout=10)
    assert recorder.exits == [(host, 3)]  # after stopping its engine
    assert (data_dir / f"shutdown-{host.pid}").exists()


async def test_a_host_that_cannot_start_is_a_clear_error(data_dir: Path) -> None:
    host = EngineHost("test", EngineOptions(data_dir=data_dir), Recorder().on_event,
                      environment=_engine_env("no_such_module:Engine"))
    with pytest.raises(HostStartFailed, match=r"exited before it was ready \(exit code 4\)"):
        await asyncio.wait_for(host.start(), 20)
    assert host.pid is not None and gone(host.pid)


async def test_a_host_that_never_says_hello_is_killed(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "self_command",
                        lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    host = EngineHost("test", EngineOptions(data_dir=data_dir), Recorder().on_event,
                      hello_timeout=0.5)
    with pytest.raises(HostStartFailed, match="did not start within"):
        await asyncio.wait_for(host.start(), 10)
    assert host.pid is not None and gone(host.pid)


def _session_on(index: int, count: int) -> str:
    return next(f"ses_{n}" for n in range(1000) if zlib.crc32(f"ses_{n}".encode()) % count == index)


async def test_pool_restarts_a_dead_host_and_stops_cleanly(data_dir: Path) -> None:
    recorder = Recorder()
    restarted: list[int] = []
    crashed: list[tuple[int, int | None]] = []

    async def on_restart(index: int) -> None:
        restarted.append(index)

    async def on_crash(index: int, code: int | None) -> None:
        crashed.append((index, code))

    pool = HostPool(2, "test", EngineOptions(data_dir=data_dir), recorder.on_event, on_restart,
                    on_crash=on_crash, environment=_engine_env(), restart_base=0.1)
    await pool.start()
    try:
        first, second = pool.hosts
        assert pool.host_for(_session_on(0, 2)) is first
        assert pool.host_for(_session_on(1, 2)) is second
        assert pool.host_for("ses_x") is pool.host_for("ses_x")
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        await until(lambda: restarted, timeout=20)
        assert restarted == [0] and crashed == [(0, -signal.SIGKILL)]
        replacement = pool.host_for(_session_on(0, 2))
        assert replacement is not first and replacement.alive and replacement.pid != first.pid
        assert (await replacement.call(send())).ok
        assert pool.hosts[1] is second and second.alive
    finally:
        await pool.stop(timeout=5)
    assert all(h.returncode == 0 for h in pool.hosts)
    await asyncio.sleep(0.3)
    assert restarted == [0]  # nothing came back after stop
    assert all(not h.alive for h in pool.hosts)


async def test_pool_backoff_grows_and_resets(data_dir: Path) -> None:
    async def ignore(*_: object) -> None:
        return None

    pool = HostPool(1, "test", EngineOptions(data_dir=data_dir), ignore, ignore,
                    restart_base=1.0, restart_max=30.0)
    delays = [pool._backoff(0) for _ in range(8)]
    bounds = [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(0.8 * b <= d <= 1.2 * b for d, b in zip(delays, bounds, strict=True))


async def _timed(label: str, work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    print(f"{label}: {elapsed:.3f}s")
    return elapsed


async def test_figures(host: EngineHost, recorder: Recorder) -> None:
    async def sequential() -> None:
        for i in range(1000):
            assert (await host.call(send(outbox_id=str(i)))).ok

    async def burst() -> None:
        reply = await host.call(sandbox("receipts", count=10_000))
        assert reply.ok

    async def committed() -> None:
        reply = await host.call(sandbox("inbound", text="c", count=1000))
        assert len(reply.result["committed"]) == 1000

    elapsed = await _timed("1,000 sequential calls", sequential)
    print(f"  round trip: {elapsed:.3f} ms per call")
    elapsed = await _timed("10,000 events from an engine thread", burst)
    # Events from the thread are written before the reply, so all have arrived already.
    receipts = recorder.of(protocol.ReceiptEvent)
    assert [r.timestamp_ms for r in receipts] == list(range(10_000))  # type: ignore[union-attr]
    print(f"  {10_000 / elapsed:,.0f} events/s")
    elapsed = await _timed("1,000 committed messages (each waits for its ack)", committed)
    print(f"  {1000 / elapsed:,.0f} messages/s")
    assert len(recorder.of(protocol.InboundMessage)) == 1000
