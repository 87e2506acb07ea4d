"""A campaign through a real server process killed with SIGKILL three times.

`serve --engine sandbox` (no send pacing) runs a 2,000-recipient campaign over two numbers.
At random points of the run the server is killed (as the OOM killer would: no clean stop) and
started again; while it is down, a few recipients still waiting opt out. The sandbox network's
record (its own SQLite file, written before each send is answered) must then show every
eligible recipient messaged exactly once and nobody opted out messaged, and the campaign's
statistics must say the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from campaigns.conftest import add_contacts, add_template
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.sessions import sandbox_network
from whatsdex.store import Store
from whatsdex.store.records import Plan

READY = re.compile(r"WhatsDeX is ready: (http://127\.0\.0\.1:\d+)/")
TESTS_DIR = Path(__file__).resolve().parent.parent
RECIPIENTS = 2000
OPTED_OUT_BEFORE = 40
OPTED_OUT_PER_KILL = 10
KILLS = 3


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Server:
    """`whatsdex serve` with campaigns wired in, in a process group of its own."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campaigns.serve_wired", "serve", "--data-dir",
             str(data_dir), "--port", "0", "--engine", "sandbox", "--send-min-gap-seconds",
             "0", "--send-jitter-seconds", "0", "--number-daily-cap", "100000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env, start_new_session=True)
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stderr is not None
        threading.Thread(target=self._pump, args=(self.proc.stderr,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-80:])

    def wait_ready(self) -> str:
        deadline = time.monotonic() + 60
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"serve exited ({self.proc.wait()}) before it was ready:\n{self.log}")
            if match := READY.search(line):
                return match.group(1)
        pytest.fail(f"serve was not ready within 60s:\n{self.log}")

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    if ppid == self.proc.pid:
                        found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the server alone; its engine host follows by itself."""
        hosts = self.children()
        self.proc.kill()
        self.proc.wait(30)
        wait_for(lambda: not any(alive(h) for h in hosts), 15, "the engine host to follow")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path, data=None if body is None else json.dumps(body).encode(),
            method=method, headers={"Authorization": f"Bearer {self.key}",
                                    "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        assert 200 <= status < 300, f"{method} {path}: {status} {answer}"
        return answer

    def link(self, name: str, phone: str) -> str:
        session_id = str(self.ok("POST", "/api/v1/sessions", {"name": name})["id"])
        wait_for(lambda: self.ok("GET", f"/api/v1/sessions/{session_id}")["status"]
                 == "pairing", 30, "pairing")
        self.ok("POST", f"/api/v1/sandbox/sessions/{session_id}/scan", {"phone": phone})
        wait_for(lambda: self.ok("GET", f"/api/v1/sessions/{session_id}")["status"]
                 == "connected", 30, "connected")
        return session_id


class Deployment:
    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        runtime = root / "run"
        runtime.mkdir(mode=0o700)
        home = root / "home"
        home.mkdir()
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "LANG": "C.UTF-8", "XDG_RUNTIME_DIR": str(runtime),
                    "PYTHONPATH": str(TESTS_DIR), "CAMPAIGN_TEST_IN_FLIGHT": "60"}
        self.servers: list[Server] = []
        created = self.cli("tenant", "create", "Acme")
        match = re.search(r"tenant (ten_\w+) created", created)
        assert match, created
        self.tenant_id = match.group(1)
        self.key = self.cli("apikey", "create", "--tenant", self.tenant_id).strip()
        self.template_id = ""
        self.contacts: list[str] = []
        self.opted_out: list[str] = []

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "whatsdex", *args, "--data-dir",
                               str(self.data_dir)], capture_output=True, text=True,
                              env=self.env, timeout=60, check=False)
        assert done.returncode == 0, f"whatsdex {' '.join(args)}: {done.stderr}"
        return done.stdout

    def prepare(self) -> None:
        """The plan, contacts and template, written while no server runs."""

        async def work() -> None:
            store = Store(self.data_dir / "whatsdex.db", readers=1)
            await asyncio.to_thread(store.open)
            try:
                await tenants.save_plan(store, CLI, Plan(
                    id="bulk", name="Bulk", max_numbers=5, max_messages_per_day=100_000,
                    max_contacts=100_000, max_active_campaigns=2, max_webhooks=1,
                    created_at="", updated_at=""), now=time.time())
                await tenants.update_tenant(store, CLI, self.tenant_id, plan_id="bulk",
                                            now=time.time())
                self.contacts = await add_contacts(store, self.tenant_id, RECIPIENTS,
                                                   prefix="1444")
                self.opted_out = await add_contacts(store, self.tenant_id, OPTED_OUT_BEFORE,
                                                    prefix="1445", opt_status="opted_out")
                self.template_id = await add_template(store, self.tenant_id)
            finally:
                await store.aclose()

        asyncio.run(work())

    def start(self) -> Api:
        server = Server(self.data_dir, self.env)
        self.servers.append(server)
        return Api(server.wait_ready(), self.key)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.data_dir / "whatsdex.db", timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def record(self) -> Path:
        return self.data_dir / "sandbox-network.db"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    try:
        yield deployment
    finally:
        for server in deployment.servers:
            server.cleanup()


def test_sigkill_three_times_during_a_campaign_and_nobody_gets_it_twice(
        deployment: Deployment) -> None:
    rng = random.Random(4242)
    deployment.prepare()
    began = time.monotonic()
    api = deployment.start()
    numbers = [api.link("Sales", "+15551230001"), api.link("Support", "+15551230002")]
    campaign = api.ok("POST", "/api/v1/campaigns", {
        "name": "Two thousand", "template_id": deployment.template_id, "session_ids": numbers,
        "audience": {"tags_any": ["customers"]}})
    assert api.ok("POST", f"/api/v1/campaigns/{campaign['id']}/start")["status"] == "running"

    opted_later: set[str] = set()
    delivered = lambda: len(sandbox_network.count_by_outbox(deployment.record()))  # noqa: E731
    for share in sorted(rng.uniform(0.1, 0.85) for _ in range(KILLS)):
        wait_for(lambda share=share: delivered() >= share * RECIPIENTS, 60,  # type: ignore[misc]
                 f"{share:.0%} of the campaign sent")
        time.sleep(rng.uniform(0.0, 0.3))
        deployment.servers[-1].kill()
        with contextlib.closing(deployment.db()) as db, db:
            waiting = [row[0] for row in db.execute(
                "SELECT contact_id FROM campaign_recipients WHERE status = 'pending' "
                "ORDER BY random() LIMIT ?", (OPTED_OUT_PER_KILL,))]
            db.executemany("UPDATE contacts SET opt_status = 'opted_out', "
                           "opt_source = 'keyword' WHERE id = ?", [(c,) for c in waiting])
        assert waiting, "killed before the end, with recipients still waiting"
        opted_later.update(waiting)
        api = deployment.start()

    deadline = time.monotonic() + 90
    while (done := api.ok("GET", f"/api/v1/campaigns/{campaign['id']}"))["status"] != \
            "completed":
        assert time.monotonic() < deadline, f"the campaign did not complete: {done}"
        time.sleep(0.2)
    took = time.monotonic() - began
    stats = api.ok("GET", f"/api/v1/campaigns/{campaign['id']}/stats")
    assert deployment.servers[-1].terminate() == 0, deployment.servers[-1].log

    with contextlib.closing(deployment.db()) as db:
        recipients = db.execute(
            "SELECT r.contact_id, r.status, r.message_id, c.phone FROM campaign_recipients r "
            "JOIN contacts c ON c.id = r.contact_id WHERE r.campaign_id = ?",
            (campaign["id"],)).fetchall()
        phones = dict(db.execute("SELECT id, phone FROM contacts").fetchall())
        per_chat = {n for (n,) in db.execute(
            "SELECT count(*) FROM messages WHERE source = 'campaign' GROUP BY chat_id")}
    assert len(recipients) == RECIPIENTS
    messages = {row[2] for row in recipients if row[2]}
    deliveries = [d for d in sandbox_network.deliveries(deployment.record())
                  if d["outbox_id"] in messages]
    received = Counter(d["to_jid"].split("@")[0] for d in deliveries)
    counts = sandbox_network.count_by_outbox(deployment.record())
    never = {phones[c] for c in (*deployment.opted_out, *opted_later)}
    eligible = {phones[c] for c in deployment.contacts} - never
    assert set(received) == eligible, "every eligible recipient got it"
    assert max(received.values()) == 1, "nobody got it twice"
    assert not never & set(received), "nobody opted out got it"
    assert all(counts[m] == 1 for m in messages)
    assert per_chat == {1}, "one message row per recipient: no crash queued a second one"
    assert {row[0] for row in recipients if row[1] == "skipped"} == opted_later
    assert stats["sent"] == len(deliveries) == len(eligible)
    assert stats["skipped"] == stats["opted_out"] == len(opted_later)
    assert stats["excluded"] == OPTED_OUT_BEFORE and stats["failed"] == 0
    assert stats["targeted"] == RECIPIENTS
    print(f"\n{RECIPIENTS} recipients, {KILLS} SIGKILLs and restarts: completed in {took:.1f}s; "
          f"{len(eligible)} messaged once each, {len(never)} opted out never messaged")
