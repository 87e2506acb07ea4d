"""The engine host: a child process that runs one engine and speaks the protocol on a socket.

The supervisor spawns it with `whatsdex engine-host --fd N ...` over a socketpair. The host says
`Hello`, runs every command in its own task (a slow send never delays a stop) and answers each
with exactly one `Reply`. It exits when told to (`Shutdown`, SIGTERM) or when the supervisor
goes away (the socket closes, or the parent dies: PR_SET_PDEATHSIG), stopping every client first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from whatsdex import logs
from whatsdex.sessions import protocol
from whatsdex.sessions.engine import Engine, EngineError, EngineOptions
from whatsdex.sessions.engines import load_engine

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT = 20.0  # seconds engine.shutdown() may take before the host exits anyway
COMMAND_GRACE = 2.0  # seconds in-flight commands get to finish after the engine shut down
EXECUTOR_THREADS = 256  # neonize pins one executor thread per live client
# Test suites register a small engine under this name; production hosts never read the variable.
TEST_ENGINE = "test"
TEST_ENGINE_ENV = "WHATSDEX_TEST_ENGINE"

EXIT_OK = 0
EXIT_UNCLEAN = 1  # the engine did not shut down cleanly (error or timeout)
EXIT_PROTOCOL = 3  # the supervisor sent something unreadable
EXIT_NO_ENGINE = 4  # the engine could not be loaded

T = TypeVar("T")


async def read_frame(
    reader: asyncio.StreamReader, decode: Callable[[bytes], T]
) -> T | None:
    """The next frame, or None at end of stream (a frame cut short counts as the end)."""
    try:
        header = await reader.readexactly(protocol.HEADER.size)
        body = await reader.readexactly(protocol.frame_length(header))
    except asyncio.IncompleteReadError:
        return None
    return decode(body)


class _Forwarder(logging.Handler):
    """Sends WARNING and above to the supervisor as `Log` frames (stderr gets everything)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.host: _Host | None = None
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        host = self.host
        # A failure while forwarding logs a warning itself: do not loop.
        if host is None or getattr(self._inside, "active", False):
            return
        self._inside.active = True
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message = f"{message}: {type(exc).__name__}: {exc}"
            session = getattr(record, "session", "")
            host.emit(protocol.Log(
                level=record.levelname.lower(),
                message=message,
                session=session if isinstance(session, str) else str(session),
            ))
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
        finally:
            self._inside.active = False


class _Host:
    """One engine on one socket; also the engine's `EngineSink`."""

    def __init__(
        self, fd: int, engine_name: str, engine_class: type[Engine], options: EngineOptions
    ) -> None:
        self.fd = fd
        self.engine_name = engine_name
        self.engine_class = engine_class
        self.options = options
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._writer: asyncio.StreamWriter | None = None
        self._connected = False
        self._ack_seq = 0
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._outgoing: list[bytes] = []
        self._commands: set[asyncio.Task[None]] = set()
        self._stop_reason: asyncio.Future[str] = self.loop.create_future()
        self._shutdown_reqs: list[int] = []
        self._code = EXIT_OK
        self.engine: Engine | None = None

    # -- EngineSink ----------------------------------------------------------------------------

    def emit(self, event: protocol.Base) -> None:
        """Send an event; callable from any thread (engines call it from library threads)."""
        frame = protocol.encode(event)
        if threading.get_ident() == self._loop_thread:
            self._write(frame)
            return
        # A closed loop means the host is exiting: the event has no reader any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._write, frame)

    async def emit_committed(
        self, event: protocol.InboundMessage | protocol.ReceiptEvent
    ) -> None:
        """Send the event with a fresh ack number; return once the supervisor acknowledged it.

        No timeout on purpose: the library must not acknowledge a message to WhatsApp before it
        is committed. If the supervisor goes away the wait is cancelled and the host exits.
        """
        if threading.get_ident() != self._loop_thread:
            raise RuntimeError("emit_committed must be awaited on the engine host's loop")
        if not self._connected:
            raise asyncio.CancelledError("the supervisor is gone")
        self._ack_seq += 1
        ack = self._ack_seq
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._waiters[ack] = waiter
        try:
            self._write(protocol.encode(msgspec.structs.replace(event, ack=ack)))
            await self._drain()
            await waiter
        finally:
            self._waiters.pop(ack, None)

    # -- writing -------------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        """The only writer: whole frames, on the loop thread, so frames never interleave.

        Frames written in one turn of the loop leave together in one send (an engine offering
        a backlog emits hundreds of messages at once)."""
        if not self._outgoing:
            self.loop.call_soon(self._flush)
        self._outgoing.append(frame)

    def _flush(self) -> None:
        frames, self._outgoing = self._outgoing, []
        if (frames and self._connected and self._writer is not None
                and not self._writer.is_closing()):
            self._writer.write(b"".join(frames))

    async def _drain(self) -> None:
        self._flush()
        if self._writer is None:
            return
        # A lost connection is seen by the reader too, which stops the host.
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    # -- main ----------------------------------------------------------------------------------

    async def run(self) -> int:
        sock = socket.socket(fileno=self.fd)
        reader, self._writer = await asyncio.open_connection(sock=sock)
        self._connected = True
        self.loop.add_signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        # Built before Hello: an engine that cannot start is seen as a host that never got ready.
        self.engine = self.engine_class(self, self.options)
        self._write(protocol.encode(protocol.Hello(pid=os.getpid(), engine=self.engine_name)))
        reading = asyncio.create_task(self._read_loop(reader), name="engine-host-reader")
        try:
            reason = await self._stop_reason
            log.info("engine host %s stopping: %s", os.getpid(), reason)
            await self._shutdown_engine()
            await self._finish_commands()
            self._cancel_waiters()
            for req in self._shutdown_reqs:
                ok = self._code == EXIT_OK
                error = "" if ok else "the engine did not shut down cleanly"
                self._write(protocol.encode(protocol.Reply(req=req, ok=ok, error=error)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), 5.0)
        finally:
            reading.cancel()
            self._connected = False
            self._writer.close()
        return self._code

    def _request_stop(self, reason: str) -> None:
        if not self._stop_reason.done():
            self._stop_reason.set_result(reason)

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader, protocol.decode_for_host)
                if message is None:
                    break
                if isinstance(message, protocol.Ack):
                    waiter = self._waiters.get(message.ack)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
                elif isinstance(message, protocol.Shutdown):
                    self._shutdown_reqs.append(message.req)
                    self._request_stop("shutdown requested")
                else:
                    task = asyncio.create_task(self._handle(message), name=type(message).__name__)
                    self._commands.add(task)
                    task.add_done_callback(self._commands.discard)
        except protocol.ProtocolError as exc:
            log.error("the supervisor sent an unreadable frame: %s", exc)
            self._code = EXIT_PROTOCOL
        except ConnectionError:
            pass
        self._connected = False
        self._cancel_waiters()  # nobody can acknowledge them any more
        self._request_stop("the supervisor closed the connection")

    async def _handle(self, command: protocol.Command) -> None:
        """Run one command and send its one reply, whatever happens."""
        try:
            if self._stop_reason.done():
                raise EngineError("the engine host is shutting down", retryable=True)
            result = await self._dispatch(command)
            frame = protocol.encode(protocol.Reply(req=command.req, ok=True, result=result))
        except asyncio.CancelledError:
            self._write(protocol.encode(protocol.Reply(
                req=command.req, ok=False, error="the engine host is shutting down",
                retryable=True,
            )))
            raise
        except EngineError as exc:
            frame = protocol.encode(protocol.Reply(
                req=command.req, ok=False, error=exc.message, retryable=exc.retryable,
            ))
        except Exception as exc:
            log.exception("%s failed in the engine", type(command).__name__)
            error = f"internal engine error: {type(exc).__name__}: {exc}"
            frame = protocol.encode(protocol.Reply(req=command.req, ok=False, error=error))
        self._write(frame)
        await self._drain()

    async def _dispatch(self, command: protocol.Command) -> dict[str, Any]:
        engine = self.engine
        assert engine is not None
        match command:
            case protocol.Start():
                await engine.start(command.session, Path(command.store_path))
            case protocol.PairPhone():
                return {"code": await engine.pair_phone(command.session, command.phone)}
            case protocol.Send():
                return await engine.send(command)
            case protocol.MarkRead():
                await engine.mark_read(command)
            case protocol.Logout():
                await engine.logout(command.session)
            case protocol.Stop():
                await engine.stop(command.session)
            case protocol.SandboxControl():
                return await engine.sandbox(command)
            case _:
                raise EngineError(f"unexpected command {type(command).__name__}")
        return {}

    async def _shutdown_engine(self) -> None:
        assert self.engine is not None
        try:
            await asyncio.wait_for(self.engine.shutdown(), SHUTDOWN_TIMEOUT)
        except TimeoutError:
            log.error("the engine did not shut down within %.0fs", SHUTDOWN_TIMEOUT)
            self._code = self._code or EXIT_UNCLEAN
        except Exception:
            log.exception("the engine failed to shut down")
            self._code = self._code or EXIT_UNCLEAN

    async def _finish_commands(self) -> None:
        """Commands still running after the engine stopped get a short grace, then a reply."""
        if not self._commands:
            return
        _, pending = await asyncio.wait(set(self._commands), timeout=COMMAND_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=COMMAND_GRACE)

    def _cancel_waiters(self) -> None:
        for waiter in self._waiters.values():
            waiter.cancel()


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the supervisor dies, so a host never outlives it."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _engine_class(name: str) -> type[Engine]:
    if name != TEST_ENGINE:
        return load_engine(name)
    # Test-only hook: `module:Class` of an engine that exists only in a test suite.
    spec = os.environ.get(TEST_ENGINE_ENV, "")
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"--engine {TEST_ENGINE} needs {TEST_ENGINE_ENV}=module:Class")
    engine: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return engine


def _configure_logging() -> _Forwarder:
    """stderr (inherited from the server) in the server's format, plus the forwarder."""
    level = os.environ.get("WHATSDEX_LOG_LEVEL", "info").lower()
    fmt = os.environ.get("WHATSDEX_LOG_FORMAT", "text").lower()
    logs.configure(
        level if level in ("debug", "info", "warning", "error") else "info",
        "json" if fmt == "json" else "text",
    )
    forwarder = _Forwarder()
    logging.getLogger().addHandler(forwarder)
    return forwarder


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=5.0))
    loop.run_until_complete(loop.shutdown_asyncgens())


def _threads_stuck(timeout: float) -> bool:
    """Whether non-daemon threads (e.g. one still blocked in Go) would keep the process alive."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            return True
    return False


def run_host(fd: int, engine_name: str, options: EngineOptions) -> int:
    """Run the engine host on the inherited socket `fd` until told to stop; the exit code."""
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the supervisor decides when hosts stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine_class = _engine_class(engine_name)
    except Exception as exc:
        sys.stderr.write(f"engine host: cannot load the {engine_name} engine: {exc}\n")
        return EXIT_NO_ENGINE
    # After the engine's import: neonize calls logging.basicConfig when imported.
    forwarder = _configure_logging()
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=EXECUTOR_THREADS, thread_name_prefix="engine")
    loop.set_default_executor(executor)

    async def main() -> int:
        host = _Host(fd, engine_name, engine_class, options)
        forwarder.host = host
        try:
            return await host.run()
        finally:
            forwarder.host = None

    code = EXIT_UNCLEAN
    try:
        code = loop.run_until_complete(main())
    except Exception:
        log.exception("the engine host failed")
    finally:
        _cancel_leftovers(loop)
        loop.close()
        executor.shutdown(wait=False, cancel_futures=True)
    if _threads_stuck(5.0):
        # Python would wait forever at exit for a thread blocked in native code.
        log.warning("engine host %s: threads still busy at exit; leaving anyway", os.getpid())
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code



def main(argv: list[str]) -> int:
    """`whatsdex engine-host ...`: parsed here, without loading the web stack (Litestar, the
    CLI), so each host costs tens of megabytes less and starts in a fraction of the time."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="whatsdex engine-host", description="Run one engine host (started by the server)."
    )
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the server")
    parser.add_argument("--engine", required=True, help="neonize or sandbox")
    parser.add_argument("--data-dir", type=Path, required=True, help="the server's data dir")
    parser.add_argument("--sandbox-record", type=Path, default=None,
                        help="sandbox: the record of deliveries")
    args = parser.parse_args(argv)
    options = EngineOptions(data_dir=args.data_dir, sandbox_record=args.sandbox_record)
    return run_host(args.fd, args.engine, options)
