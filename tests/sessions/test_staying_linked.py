"""Linked numbers stay linked: a real `whatsdex serve --engine sandbox` process, driven over HTTP
only, restarted cleanly, killed, and robbed of its engine host. Prints the timings it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.store import Store
from whatsdex.store.records import Plan

READY = re.compile(r"WhatsDeX is ready: (http://127\.0\.0\.1:\d+)/")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PHONE = "+15551230001"
SANDBOX_ENV = {
    "WHATSDEX_SANDBOX_QR_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_FIRST_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_TOTAL_SECONDS": "120",
}


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll until true; the seconds it took. Fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Server:
    """One `whatsdex serve` child in a process group of its own (its engine hosts join it)."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whatsdex", "serve", "--data-dir", str(data_dir),
             "--port", "0", "--engine", "sandbox"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()
        self.url = ""
        self.ready_at = 0.0

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-200:])

    def wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"serve exited ({self.proc.wait()}) before it was ready:\n{self.log}")
            if match := READY.search(line):
                self.url, self.ready_at = match.group(1), time.monotonic()
                return self.url
        pytest.fail(f"serve was not ready within {START_TIMEOUT}s:\n{self.log}")

    def engine_hosts(self) -> list[int]:
        """Children of the server running `engine-host`."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == self.pid and b"engine-host" in cmdline:
                found.append(int(entry.name))
        return found

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not stop within {STOP_TIMEOUT}s after SIGTERM:\n{self.log}")

    def kill(self) -> None:
        """SIGKILL the server alone, as the OOM killer would."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)

    def cleanup(self) -> None:
        """Whatever of this server's group is still running goes (hosts included)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15.0
                ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def session(self, session_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.ok("GET", f"/api/v1/sessions/{session_id}")
        return answer

    def status(self, session_id: str) -> str:
        return str(self.session(session_id)["status"])

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(reversed(self.ok("GET", f"/api/v1/sessions/{session_id}/history")))

    def statuses(self) -> dict[str, str]:
        return {s["id"]: s["status"] for s in self.ok("GET", "/api/v1/sessions")}

    def create(self, name: str) -> str:
        return str(self.ok("POST", "/api/v1/sessions", {"name": name})["id"])

    def scan(self, session_id: str, phone: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.ok(
            "POST", f"/api/v1/sandbox/sessions/{session_id}/scan", {"phone": phone})
        return answer

    def wait_status(self, session_id: str, status: str, timeout: float = 20.0) -> float:
        return wait_for(lambda: self.status(session_id) == status, timeout,
                        f"{session_id} {status}; it is {self.session(session_id)}")


class Deployment:
    """A data dir with a tenant and its owner key (made with the CLI), and its servers."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.runtime = root / "run"
        self.runtime.mkdir(mode=0o700)
        home = root / "home"
        home.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "XDG_RUNTIME_DIR": str(self.runtime),
            **SANDBOX_ENV,
        }
        self.servers: list[Server] = []
        created = self.cli("tenant", "create", "Acme")
        match = re.search(r"tenant (ten_\w+) created", created)
        assert match, created
        self.tenant_id = match.group(1)
        self.key = self.cli("apikey", "create", "--tenant", self.tenant_id).strip()
        self.api: Api | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "whatsdex", *args, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, env=self.env, timeout=60, check=False,
        )
        assert done.returncode == 0, f"whatsdex {' '.join(args)}: {done.stderr}"
        return done.stdout

    def allow_numbers(self, count: int) -> None:
        """Put the tenant on a plan with room for `count` numbers (no CLI for plans yet)."""

        async def work() -> None:
            store = Store(self.data_dir / "whatsdex.db", readers=1)
            await asyncio.to_thread(store.open)
            try:
                await tenants.save_plan(store, CLI, Plan(
                    id="bulk", name="Bulk", max_numbers=count, max_messages_per_day=1000,
                    max_contacts=1000, max_active_campaigns=1, max_webhooks=1, created_at="",
                    updated_at=""), now=time.time())
                await tenants.update_tenant(store, CLI, self.tenant_id, plan_id="bulk",
                                            now=time.time())
            finally:
                await store.aclose()

        asyncio.run(work())

    def start(self) -> Api:
        server = Server(self.data_dir, self.env)
        self.servers.append(server)
        self.api = Api(server.wait_ready(), self.key)
        return self.api

    @property
    def server(self) -> Server:
        return self.servers[-1]

    def runtime_files(self) -> list[Path]:
        return sorted(self.runtime.glob("whatsdex-*/*.db"))

    def blob_count(self) -> int:
        with contextlib.closing(sqlite3.connect(self.data_dir / "whatsdex.db")) as db:
            return int(db.execute("SELECT count(*) FROM wa_auth_vault").fetchone()[0])

    def link(self, phone: str = PHONE, name: str = "Sales") -> str:
        """Create a number, show its QR code, scan it: connected."""
        api = self.api
        assert api is not None
        session_id = api.create(name)
        api.wait_status(session_id, "pairing")
        qr = api.ok("GET", f"/api/v1/sessions/{session_id}/qr")
        assert qr["qr"].startswith("2@")
        api.scan(session_id, phone)
        api.wait_status(session_id, "connected")
        return session_id


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    try:
        yield deployment
    finally:
        for server in deployment.servers:
            server.cleanup()


def reasons(api: Api, session_id: str) -> list[str]:
    return [h["reason"] for h in api.history(session_id)]


def test_a_clean_restart_keeps_the_number_linked(deployment: Deployment) -> None:
    api = deployment.start()
    session = deployment.link()
    before = api.session(session)
    assert deployment.server.terminate() == 0, deployment.server.log
    assert deployment.runtime_files() == [], "a clean stop deletes the runtime files"

    api = deployment.start()
    # No stale "connected": the server says it is connecting until the engine says otherwise.
    first = api.session(session)
    assert first["status"] in ("connecting", "connected")
    if first["status"] == "connecting":
        assert first["reason"] == "resuming after a restart"
    took = api.wait_status(session, "connected")
    server = deployment.server
    total = time.monotonic() - server.launched_at
    print(f"\nSIGTERM restart: connected {total:.2f}s after the new server was launched "
          f"({server.ready_at - server.launched_at:.2f}s to ready, then {took:.2f}s)")
    after = api.session(session)
    assert {k: after[k] for k in ("phone", "jid", "lid", "push_name")} == {
        k: before[k] for k in ("phone", "jid", "lid", "push_name")}
    history = api.history(session)
    assert [h["status"] for h in history[-2:]] == ["connecting", "connected"]
    assert history[-2]["reason"] == "resuming after a restart"
    assert "pairing" not in [h["status"] for h in history[3:]], "no new scan was needed"


def test_a_killed_server_resumes_from_its_leftover_runtime_file(deployment: Deployment) -> None:
    api = deployment.start()
    session = deployment.link()
    hosts = deployment.server.engine_hosts()
    assert len(hosts) == 1
    deployment.server.kill()
    # The engine host follows its supervisor (it must never run on alone).
    wait_for(lambda: not alive(hosts[0]), 10, "the orphaned engine host to exit")
    leftover = deployment.runtime_files()
    assert [p.stem for p in leftover] == [session]
    # Without the blob only the leftover file can bring the number back without a scan.
    with contextlib.closing(sqlite3.connect(deployment.data_dir / "whatsdex.db")) as db, db:
        db.execute("DELETE FROM wa_auth_vault")

    api = deployment.start()
    took = api.wait_status(session, "connected")
    server = deployment.server
    print(f"\nSIGKILL restart: connected {time.monotonic() - server.launched_at:.2f}s after the "
          f"new server was launched ({took:.2f}s after it was ready)")
    assert reasons(api, session)[-2] == "resuming after a restart"
    assert deployment.blob_count() == 1, "the leftover file is snapshotted at once"
    assert api.session(session)["jid"] == f"{PHONE[1:]}@s.whatsapp.net"


class Load:
    """Requests in a loop from another thread: what a client sees during an outage."""

    def __init__(self, api: Api, path: str) -> None:
        self.api = api
        self.path = path
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status, _ = self.api.request("GET", self.path, timeout=10)
            except OSError:
                status = 0
            self.results.append((time.monotonic() - started, status))
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def summary(self) -> str:
        latencies = sorted(t for t, _ in self.results)
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return (f"{len(latencies)} requests, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                f"max {latencies[-1] * 1000:.1f} ms")


def crash_and_recover(deployment: Deployment, session: str, crash: Callable[[], None]
                      ) -> tuple[float, Load]:
    api = deployment.api
    assert api is not None
    old = deployment.server.engine_hosts()
    assert len(old) == 1
    with Load(api, f"/api/v1/sessions/{session}") as load:
        time.sleep(0.2)
        started = time.monotonic()
        crash()
        wait_for(lambda: any("engine host stopped unexpectedly" in r
                             for r in reasons(api, session)), 10, "the crash reported")
        api.wait_status(session, "connected", timeout=15)
        took = time.monotonic() - started
        time.sleep(0.2)
    new = deployment.server.engine_hosts()
    assert len(new) == 1 and new != old
    assert not alive(old[0])
    failed = [status for _, status in load.results if status != 200]
    assert load.results and not failed, f"requests failed during the outage: {failed}"
    history = api.history(session)
    assert [h["status"] for h in history[-3:]] == ["reconnecting", "reconnecting", "connected"]
    return took, load


def test_the_api_answers_while_the_engine_host_is_killed(deployment: Deployment) -> None:
    deployment.start()
    session = deployment.link()
    host = deployment.server.engine_hosts()[0]
    took, load = crash_and_recover(deployment, session, lambda: os.kill(host, signal.SIGKILL))
    print(f"\nengine host SIGKILL: connected again after {took:.2f}s; API during the outage: "
          f"{load.summary()}")


def test_the_crash_host_fault_is_survived_the_same_way(deployment: Deployment) -> None:
    api = deployment.start()
    session = deployment.link()

    def crash() -> None:
        api.ok("POST", f"/api/v1/sandbox/sessions/{session}/faults", {"kind": "crash_host"})

    took, load = crash_and_recover(deployment, session, crash)
    print(f"\ncrash_host fault: connected again after {took:.2f}s; API during the outage: "
          f"{load.summary()}")


def link_many(deployment: Deployment, first: int, count: int) -> list[str]:
    """`count` numbers created, shown their QR codes and scanned, all connected."""
    api = deployment.api
    assert api is not None
    ids = [api.create(f"Number {first + i}") for i in range(count)]
    wait_for(lambda: all(api.statuses().get(i) == "pairing" for i in ids), 60,
             "every new number offering QR codes")
    for n, session_id in enumerate(ids):
        api.scan(session_id, f"+1555{first + n:07d}")
    wait_for(lambda: all(api.statuses().get(i) == "connected" for i in ids), 60,
             "every scanned number connected")
    return ids


def memory(deployment: Deployment) -> str:
    server = deployment.server
    hosts = server.engine_hosts()
    assert hosts
    return (f"web process {rss_mb(server.pid):.0f} MB, engine host "
            f"{sum(rss_mb(h) for h in hosts):.0f} MB")


def test_200_numbers_come_back_after_a_restart(deployment: Deployment) -> None:
    deployment.allow_numbers(250)
    api = deployment.start()
    started = time.monotonic()
    ids = link_many(deployment, 0, 100)
    print(f"\nlinked 100 numbers over HTTP in {time.monotonic() - started:.1f}s; "
          f"RSS with 100 linked: {memory(deployment)}")
    ids += link_many(deployment, 100, 100)
    print(f"RSS with 200 linked: {memory(deployment)}")
    assert len(set(ids)) == 200

    stopping = time.monotonic()
    assert deployment.server.terminate() == 0, deployment.server.log
    print(f"clean stop with 200 numbers (final snapshots included): "
          f"{time.monotonic() - stopping:.2f}s")
    assert deployment.runtime_files() == []

    api = deployment.start()
    server = deployment.server
    took = wait_for(lambda: list(api.statuses().values()).count("connected") == 200, 60,
                    "all 200 numbers connected after the restart")
    print(f"restart with 200 numbers: all connected {time.monotonic() - server.launched_at:.2f}s "
          f"after the server was launched ({server.ready_at - server.launched_at:.2f}s to ready, "
          f"then {took:.2f}s); RSS: {memory(deployment)}")
    assert deployment.blob_count() == 200
