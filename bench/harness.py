"""What every benchmark shares: real server processes, their memory and CPU, workspaces and API
keys, linked sandbox numbers, time budgets and the shape of a result.

Servers are started in their own process group, so a benchmark that fails or runs out of time
still takes its server and the server's engine hosts down with it (`Server.kill`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"(?:WhatsDeX is ready|bench server ready): (http://127\.0\.0\.1:(\d+))/")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

T = TypeVar("T")


class BenchError(Exception):
    """A benchmark could not produce its figure (the message says why)."""


class NotAvailable(BenchError):
    """What a benchmark measures does not exist in this build (yet)."""


class OutOfTime(BenchError):
    """A benchmark ran past its hard time budget."""


# -- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table."""

    measure: str
    result: str
    baseline: str = ""
    target: str = ""
    met: bool | None = None  # None: no target for this line


@dataclass
class Outcome:
    number: int
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "ok"  # ok, not available, not built, failed, out of time
    seconds: float = 0.0

    def add(self, measure: str, result: str, baseline: str = "", target: str = "",
            met: bool | None = None) -> None:
        self.rows.append(Row(measure, result, baseline, target, met))

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass(frozen=True)
class Mode:
    """Full run or smoke run; `pick` chooses a size or a duration for the current one."""

    smoke: bool
    profile: bool = False

    def pick(self, full: T, smoke: T) -> T:
        return smoke if self.smoke else full


# -- numbers -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds * 1000:.0f} ms"


def mb(size: float) -> str:
    return f"{size / 1_048_576:.1f} MB"


def rate(value: float, unit: str = "/s") -> str:
    return f"{value:,.0f}{unit}"


# -- processes ---------------------------------------------------------------------------------


def bench_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A scrubbed environment: no WHATSDEX_* or proxy settings leak in from the shell."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.update(extra or {})
    return env


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # the name may hold spaces and parentheses


def descendants(pid: int) -> list[int]:
    """The process and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * PAGE_SIZE


def cpu_seconds(pid: int) -> float:
    """User + system CPU time one process has used so far."""
    try:
        fields = _stat_fields(pid)
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


def cpu_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU used between two `Server.cpu_parts()` readings, largest first."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return dict(sorted(((k, v) for k, v in used.items() if v > 0.005), key=lambda kv: -kv[1]))


class Server:
    """A child process that announces its URL on stderr (`whatsdex serve` or a baseline)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 name: str = "server") -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
            start_new_session=True,  # its own group: `kill` reaches the engine hosts too
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        self.url = ""

    def _pump(self, stream: IO[str]) -> None:
        with self.log_path.open("a") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self.lines.append(line.rstrip("\n"))
                self._queue.put(line)
        self._queue.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        if self.url:
            return self.url
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise BenchError(f"{self.name} exited ({self.proc.wait()}) before it was ready:"
                                 f"\n{self.tail()}")
            if match := READY.search(line):
                self.url = match.group(1)
                return self.url
        raise BenchError(f"{self.name} was not ready within {timeout:.0f}s:\n{self.tail()}")

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first log line from now on matching `pattern`, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            if match := pattern.search(line):
                return match
        return None

    def processes(self) -> list[int]:
        return descendants(self.pid) if self.proc.poll() is None else []

    def rss(self) -> int:
        """Resident memory of the server and every process it started (engine hosts)."""
        return sum(rss_bytes(pid) for pid in self.processes())

    def rss_by_process(self) -> dict[int, int]:
        return {pid: rss_bytes(pid) for pid in self.processes()}

    def cpu(self) -> float:
        """CPU seconds used so far by the server and the processes it runs now."""
        return sum(cpu_seconds(pid) for pid in self.processes())

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far of the web process and of its children (the engine hosts)."""
        parts = {"web process": cpu_seconds(self.pid)}
        for pid in self.processes():
            if pid != self.pid:
                parts[f"engine host {pid}"] = cpu_seconds(pid)
        return parts

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (a clean stop); kill the whole group if it does not end in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """The server's whole process group, at once (nothing it started outlives it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)


SERVE_FLAGS = (
    "--engine", "sandbox", "--port", "0",
    "--send-min-gap-seconds", "0", "--send-jitter-seconds", "0",
    "--allow-private-webhooks",
    # Benchmarks send far more than a real number may per day; the cap would park the rest.
    "--number-daily-cap", "100000000",
    # Scheduled backups would land in the middle of other figures; benchmark 6 asks for one.
    "--backup-interval-minutes", "0",
)


def serve_argv(data_dir: Path, *extra: str, probe_file: Path | None = None,
               flags: Sequence[str] = SERVE_FLAGS) -> list[str]:
    """`whatsdex serve` for a benchmark; with `probe_file`, under the event-loop probe."""
    head = [sys.executable, "-m", "whatsdex"]
    if probe_file is not None:
        head = [sys.executable, "-m", "bench.probe", "--lag-file", str(probe_file), "--"]
    return [*head, "serve", "--data-dir", str(data_dir), *flags, *extra]


@contextlib.contextmanager
def running(server: Server, ready_timeout: float = START_TIMEOUT) -> Iterator[Server]:
    """A started server that is stopped (and its group killed) whatever happens."""
    try:
        server.wait_ready(ready_timeout)
        yield server
    finally:
        server.stop()


# -- workspaces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    tenant_id: str
    key: str  # an owner API key


BENCH_PLAN = "bench"


def provision(data_dir: Path, count: int) -> list[Workspace]:
    """Tenants on an unlimited plan, each with an owner API key, through the identity domain
    (what `whatsdex tenant create` and `whatsdex apikey create` do), before the server starts."""
    from whatsdex.identity import apikeys, tenants
    from whatsdex.identity.principal import CLI
    from whatsdex.store import Store
    from whatsdex.store.records import Plan

    async def main() -> list[Workspace]:
        store = Store(data_dir / "whatsdex.db", readers=1)
        await asyncio.to_thread(store.open)
        try:
            now = time.time()
            huge = 10**9
            await tenants.save_plan(store, CLI, Plan(
                id=BENCH_PLAN, name="Benchmark", max_numbers=huge, max_messages_per_day=huge,
                max_contacts=huge, max_active_campaigns=huge, max_webhooks=50,
                created_at="", updated_at=""), now=now)
            made = []
            for i in range(count):
                tenant = await tenants.create_tenant(store, CLI, name=f"Bench tenant {i}",
                                                     plan_id=BENCH_PLAN, now=now)
                _, secret = await apikeys.create_key(store, CLI, tenant.id, name="bench",
                                                     now=now)
                made.append(Workspace(tenant.id, secret))
            return made
        finally:
            await store.aclose()

    return asyncio.run(main())


# -- the HTTP API ------------------------------------------------------------------------------


class Api:
    """A tenant's view of a running server (async), for setting a benchmark up."""

    def __init__(self, base: str, key: str, timeout: float = 60.0) -> None:
        self.client = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
            limits=httpx.Limits(max_connections=16))

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, body: Any = None,
                   expect: Iterable[int] = (200, 201, 202)) -> Any:
        response = await self.client.request(method, path, json=body)
        if response.status_code not in set(expect):
            raise BenchError(f"{method} {path}: HTTP {response.status_code} {response.text[:300]}")
        return response.json() if response.content else None

    async def status(self, path: str) -> int:
        return (await self.client.get(path)).status_code


async def gather_limited(jobs: Iterable[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run the jobs with at most `limit` at a time, results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await job()

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     every: float = 0.05) -> float:
    """Poll until `check()` is true; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise BenchError(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - started


async def statuses(api: Api) -> dict[str, str]:
    """Every number of the workspace → its status."""
    return {row["id"]: row["status"] for row in await api.call("GET", "/api/v1/sessions")}


async def link_numbers(api: Api, count: int, *, first_phone: int, timeout: float = 120.0,
                       parallel: int = 8) -> list[str]:
    """Add `count` numbers and link each with a simulated phone (sandbox scan route)."""

    async def one(i: int) -> str:
        created = await api.call("POST", "/api/v1/sessions", {"name": f"Bench number {i}"})
        session_id: str = created["id"]

        async def offering_qr() -> bool:
            row = await api.call("GET", f"/api/v1/sessions/{session_id}")
            if row["status"] in ("failed", "stopped", "logged_out"):
                raise BenchError(f"{session_id} is {row['status']}: {row['reason']}")
            return bool(row["status"] == "pairing")

        await wait_until(offering_qr, timeout, f"{session_id} offering a QR code")
        await api.call("POST", f"/api/v1/sandbox/sessions/{session_id}/scan",
                       {"phone": f"+{first_phone + i}"})
        return session_id

    ids = await gather_limited([lambda i=i: one(i) for i in range(count)], parallel)  # type: ignore[misc]

    async def all_connected() -> bool:
        now = await statuses(api)
        return all(now.get(s) == "connected" for s in ids)

    await wait_until(all_connected, timeout, f"{count} numbers connected", every=0.2)
    return ids


# -- time budgets ------------------------------------------------------------------------------


class _Alarm:
    """SIGALRM as an exception in the main thread: a hard stop for a benchmark that hangs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._previous: Any = None

    def _fire(self, signum: int, frame: object) -> None:
        raise OutOfTime(f"stopped after its time budget of {self.seconds:.0f}s")

    def __enter__(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)


def hard_limit(seconds: float) -> contextlib.AbstractContextManager[None]:
    return _Alarm(seconds)
