"""The supervisor's side of engine hosts: spawn the child processes, talk to them, restart them.

`EngineHost` is one child (`whatsdex engine-host`) on a socketpair: `call()` sends a command and
returns its `Reply`; every other frame goes, in order, to the `on_event` callback. `HostPool`
keeps `count` of them running, gives each session a stable host and restarts a host that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

import msgspec

from whatsdex.errors import Unavailable
from whatsdex.sessions import launch, protocol
from whatsdex.sessions.engine import EngineOptions
from whatsdex.sessions.host import read_frame
from whatsdex.tasks import BackgroundTasks

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 60.0  # importing the WhatsApp library on a slow disk takes a while
LOST_GRACE = 30.0  # a host whose socket closed but which is still running after this is killed
SIGNAL_GRACE = 5.0  # seconds after SIGTERM (then SIGKILL) before giving up on a child

OnEvent = Callable[["EngineHost", protocol.Event], Awaitable[None]]
OnExit = Callable[["EngineHost", int | None], Awaitable[None]]


class HostGone(Unavailable):
    """The engine host stopped (crashed, was killed or broke the protocol) before answering."""

    def __init__(self, message: str = "the engine host stopped") -> None:
        super().__init__(message)


class HostStartFailed(Unavailable):
    """An engine host could not be started or never said Hello."""


class _ExitedEarly(Exception):
    """The child closed the socket before saying Hello."""


class EngineHost:
    """One engine host child process and the connection to it."""

    def __init__(
        self,
        engine_name: str,
        options: EngineOptions,
        on_event: OnEvent,
        on_exit: OnExit | None = None,
        *,
        index: int = 0,
        environment: Mapping[str, str] | None = None,
        hello_timeout: float = HELLO_TIMEOUT,
    ) -> None:
        self.engine_name = engine_name
        self.options = options
        self.index = index
        self.hello_timeout = hello_timeout
        self._on_event = on_event
        self._on_exit = on_exit
        self._environment = dict(environment or {})
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._req = 0
        self._pending: dict[int, asyncio.Future[protocol.Reply]] = {}
        self._gone: str | None = None  # why the connection ended, once it has
        self._kill_timer: asyncio.TimerHandle | None = None
        self._exited = asyncio.Event()
        self._tasks = BackgroundTasks()
        self.stopping = False  # stop() was called: an exit now is expected
        self.started_at = 0.0  # time.monotonic() when Hello arrived
        self.returncode: int | None = None
        self.protocol_error: protocol.ProtocolError | None = None

    def __repr__(self) -> str:
        return f"<EngineHost {self.index} {self.engine_name} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """Started, still running and still connected."""
        return self._proc is not None and self._proc.returncode is None and self._gone is None

    def rss_bytes(self) -> int:
        """Resident memory of the child (0 when it is gone)."""
        if not self.alive or self.pid is None:
            return 0
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    # -- starting ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the child and wait for its Hello; raises HostStartFailed with the reason."""
        if self._proc is not None:
            raise RuntimeError("an EngineHost is started once; make a new one to restart")
        parent, child = socket.socketpair()
        argv = launch.self_command(
            "engine-host", "--fd", str(child.fileno()), "--engine", self.engine_name,
            "--data-dir", str(self.options.data_dir),
        )
        if self.options.sandbox_record is not None:
            argv += ["--sandbox-record", str(self.options.sandbox_record)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=[child.fileno()],
                env={**launch.engine_environment(), **self._environment},
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            raise HostStartFailed(f"cannot start an engine host: {exc}") from None
        finally:
            child.close()  # the child has its copy; ours would hide the child's exit from us
        try:
            self._reader, self._writer = await asyncio.open_connection(sock=parent)
            hello = await asyncio.wait_for(
                read_frame(self._reader, protocol.decode_for_supervisor), self.hello_timeout
            )
            self._check_hello(hello)
        except BaseException as exc:
            if self._writer is None:
                parent.close()
            await self._abort()
            error = self._start_error(exc)
            if error is exc:
                raise
            raise error from None
        self.started_at = time.monotonic()
        self._tasks.start(self._read_loop(), name=f"engine-host-{self.index}-reader")
        self._tasks.start(self._watch(), name=f"engine-host-{self.index}-watch")

    def _check_hello(self, hello: protocol.Event | None) -> None:
        if hello is None:
            raise _ExitedEarly
        if not isinstance(hello, protocol.Hello):
            raise protocol.ProtocolError(f"expected hello, got {type(hello).__name__}")
        if hello.version != protocol.PROTOCOL_VERSION:
            raise HostStartFailed(
                f"the engine host speaks protocol {hello.version}, "
                f"this server speaks {protocol.PROTOCOL_VERSION}"
            )
        if hello.engine != self.engine_name or hello.pid != self.pid:
            raise HostStartFailed(
                f"unexpected engine host hello: engine {hello.engine!r}, pid {hello.pid}"
            )

    def _start_error(self, exc: BaseException) -> BaseException:
        """What a failed start raises: one readable HostStartFailed for the usual causes."""
        name = self.engine_name
        if isinstance(exc, _ExitedEarly):
            return HostStartFailed(
                f"the {name} engine host exited before it was ready "
                f"(exit code {self.returncode}); its error is in the server log"
            )
        if isinstance(exc, TimeoutError):
            return HostStartFailed(
                f"the {name} engine host did not start within {self.hello_timeout:.0f}s"
            )
        if isinstance(exc, protocol.ProtocolError):
            return HostStartFailed(f"the {name} engine host sent an unreadable first frame: {exc}")
        if isinstance(exc, ConnectionError):
            return HostStartFailed(f"lost the connection to the {name} engine host: {exc}")
        return exc

    async def _abort(self) -> None:
        """A start that failed: make sure the child is gone and reaped."""
        self._gone = self._gone or "the engine host did not start"
        if self._writer is not None:
            self._writer.close()
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            # It may be exiting by itself (its error is on stderr): give it a moment first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), SIGNAL_GRACE)
        self.returncode = proc.returncode

    # -- talking -------------------------------------------------------------------------------

    async def call(
        self, command: protocol.Command, timeout: float | None = None  # noqa: ASYNC109
    ) -> protocol.Reply:
        """Send a command (built with `req=0`) and return its Reply.

        Raises HostGone if the host stops before answering, TimeoutError after `timeout`
        seconds (the command may still run in the host; its late reply is dropped).
        """
        if self._gone is not None or self._writer is None:
            raise HostGone(self._gone or "the engine host is not started")
        self._req += 1
        req = self._req
        frame = protocol.encode(msgspec.structs.replace(command, req=req))
        reply: asyncio.Future[protocol.Reply] = asyncio.get_running_loop().create_future()
        self._pending[req] = reply
        try:
            self._writer.write(frame)
            await self._writer.drain()
            return await asyncio.wait_for(reply, timeout)
        except ConnectionError:
            raise HostGone(self._gone or "the engine host stopped") from None
        finally:
            self._pending.pop(req, None)

    def send_acks(self, acks: Iterable[int]) -> None:
        """Tell the host the events with these ack numbers are committed, in one send (dropped
        if it is gone)."""
        if self._gone is None and self._writer is not None and not self._writer.is_closing():
            frames = b"".join(protocol.encode(protocol.Ack(ack=ack)) for ack in acks)
            if frames:
                self._writer.write(frames)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reason = f"the engine host (pid {self.pid}) stopped"
        try:
            while True:
                event = await read_frame(self._reader, protocol.decode_for_supervisor)
                if event is None:
                    break
                if isinstance(event, protocol.Reply):
                    waiter = self._pending.get(event.req)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(event)
                    continue
                try:
                    await self._on_event(self, event)
                except Exception:
                    log.exception("handling %s from engine host %s failed",
                                  type(event).__name__, self.pid)
        except protocol.ProtocolError as exc:
            # A host that breaks the protocol cannot be trusted with anything else.
            self.protocol_error = exc
            reason = f"the engine host (pid {self.pid}) sent an unreadable frame: {exc}"
            log.error("%s; killing it", reason)
            self._kill()
        except ConnectionError:
            pass
        finally:
            self._lost(reason)

    def _lost(self, reason: str) -> None:
        """The connection is over: fail every waiting call, once."""
        if self._gone is not None:
            return
        self._gone = reason
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(HostGone(reason))
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None and self._proc.returncode is None and not self.stopping:
            self._kill_timer = asyncio.get_running_loop().call_later(LOST_GRACE, self._kill)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def _watch(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        self.returncode = code
        self._lost(f"the engine host (pid {self.pid}) exited with code {code}")
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self._on_exit is not None:
            try:
                await self._on_exit(self, code)
            except Exception:
                log.exception("handling the exit of engine host %s failed", self.pid)
        self._exited.set()

    # -- stopping ------------------------------------------------------------------------------

    async def stop(self, timeout: float = 20.0) -> int | None:  # noqa: ASYNC109
        """Shutdown (the engine stops its clients), then SIGTERM, then SIGKILL; never hangs."""
        self.stopping = True
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is None:
            deadline = time.monotonic() + timeout
            if self._gone is None:
                with contextlib.suppress(HostGone, TimeoutError):
                    reply = await self.call(protocol.Shutdown(req=0), timeout=timeout)
                    if not reply.ok:
                        log.warning("engine host %s: %s", self.pid, reply.error)
            if not await self._wait_exit(max(1.0, deadline - time.monotonic())):
                log.warning("engine host %s did not exit after Shutdown; terminating it", self.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                if not await self._wait_exit(SIGNAL_GRACE):
                    self._kill()
                    await self._wait_exit(SIGNAL_GRACE)
        if self._tasks:
            # The watcher reports the exit (on_exit) before the tasks are let go.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), SIGNAL_GRACE)
        await self._tasks.close(SIGNAL_GRACE)
        if self._writer is not None:
            self._writer.close()
        return proc.returncode

    async def _wait_exit(self, seconds: float) -> bool:
        assert self._proc is not None
        try:
            await asyncio.wait_for(self._proc.wait(), seconds)
        except TimeoutError:
            return False
        return True


class HostPool:
    """`count` engine hosts; a session always goes to the same one; dead hosts come back."""

    def __init__(
        self,
        count: int,
        engine_name: str,
        options: EngineOptions,
        on_event: OnEvent,
        on_restart: Callable[[int], Awaitable[None]],
        *,
        on_crash: Callable[[int, int | None], Awaitable[None]] | None = None,
        environment: Mapping[str, str] | None = None,
        hello_timeout: float = HELLO_TIMEOUT,
        restart_base: float = 1.0,
        restart_max: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        if count < 1:
            raise ValueError("an engine host pool needs at least one host")
        self.count = count
        self.engine_name = engine_name
        self.options = options
        self._on_event = on_event
        self._on_restart = on_restart
        self._on_crash = on_crash
        self._environment = dict(environment or {})
        self._hello_timeout = hello_timeout
        self._restart_base = restart_base
        self._restart_max = restart_max
        self._healthy_after = healthy_after
        self._hosts = [self._new_host(i) for i in range(count)]
        self._failures = [0] * count  # consecutive quick deaths, per index: the backoff exponent
        self._restarts = BackgroundTasks()
        self._stopping = False

    @property
    def hosts(self) -> tuple[EngineHost, ...]:
        return tuple(self._hosts)

    def index_for(self, session_id: str) -> int:
        return zlib.crc32(session_id.encode()) % self.count

    def host_for(self, session_id: str) -> EngineHost:
        """The session's host right now (a new object after a restart: do not keep it)."""
        return self._hosts[self.index_for(session_id)]

    async def start(self) -> None:
        """Start every host; if one fails, stop the others and raise its error."""
        results = await asyncio.gather(
            *(host.start() for host in self._hosts), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        """Stop every host at once; nothing restarts from now on."""
        self._stopping = True
        await self._restarts.close(SIGNAL_GRACE)
        await asyncio.gather(*(host.stop(timeout) for host in self._hosts))

    def _new_host(self, index: int) -> EngineHost:
        return EngineHost(
            self.engine_name, self.options, self._on_event, self._host_exited,
            index=index, environment=self._environment, hello_timeout=self._hello_timeout,
        )

    async def _host_exited(self, host: EngineHost, code: int | None) -> None:
        if self._stopping or host.stopping or self._hosts[host.index] is not host:
            return
        log.error("engine host %d (pid %s) exited unexpectedly (code %s); restarting it",
                  host.index, host.pid, code)
        if time.monotonic() - host.started_at >= self._healthy_after:
            self._failures[host.index] = 0
        if self._on_crash is not None:
            try:
                await self._on_crash(host.index, code)
            except Exception:
                log.exception("handling the crash of engine host %d failed", host.index)
        self._restarts.start(self._restart(host.index), name=f"engine-host-{host.index}-restart")

    def _backoff(self, index: int) -> float:
        delay = min(self._restart_max, self._restart_base * 2.0 ** self._failures[index])
        self._failures[index] += 1
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret

    async def _restart(self, index: int) -> None:
        while not self._stopping:
            await asyncio.sleep(self._backoff(index))
            host = self._new_host(index)
            try:
                await host.start()
            except Exception as exc:
                log.error("engine host %d did not restart: %s", index, exc)
                continue
            self._hosts[index] = host
            log.info("engine host %d restarted (pid %s)", index, host.pid)
            try:
                await self._on_restart(index)
            except Exception:
                log.exception("resuming the sessions of engine host %d failed", index)
            return
