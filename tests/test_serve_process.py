"""`python -m whatsdex serve` as a real process: ready line, probes, modes, lock, port, signals."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

READY = re.compile(r"WhatsDeX is ready: (http://127\.0\.0\.1:(\d+))/")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class Serve:
    """One `whatsdex serve` child; stderr is read by a thread so waits stay bounded."""

    def __init__(self, data_dir: Path, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whatsdex", "serve", "--data-dir", str(data_dir), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink, q in (
            (self.proc.stderr, self.stderr, self._lines),
            (self.proc.stdout, self.stdout, None),
        ):
            threading.Thread(target=self._pump, args=(stream, sink, q), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], sink: list[str], lines: queue.Queue[str | None] | None) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # end of stream: the process is gone

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def wait_ready(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"serve exited ({self.proc.wait()}) before it was ready:\n{self.log}")
            if match := READY.search(line):
                return match.group(1), int(match.group(2))
        pytest.fail(f"serve was not ready within {START_TIMEOUT}s:\n{self.log}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve did not exit within {timeout}s:\n{self.log}")
        time.sleep(0.1)  # let the reader threads take the last lines
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A scrubbed environment: no WHATSDEX_* or proxy settings leak in from the shell."""
    home = tmp_path / "home"
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
    }


@pytest.fixture
def serve(env: dict[str, str]) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(data_dir: Path, *args: str) -> Serve:
        server = Serve(data_dir, env, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_serve_lifecycle_and_sigterm(serve: Callable[..., Serve], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = serve(data_dir, "--port", "0", "--engine", "sandbox")
    url, port = server.wait_ready()

    status, body = _get(url + "/readyz")
    assert status == 200
    assert b'"ready"' in body
    assert _get(url + "/healthz")[0] == 200
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for name in ("whatsdex.db", "whatsdex.lock"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name

    # A second server on the same data dir stops at the lock, before touching anything.
    second = serve(data_dir, "--port", "0", "--engine", "sandbox")
    assert second.wait_exit() != 0
    assert "in use" in second.log
    assert f"pid {server.proc.pid}" in second.log
    assert "Traceback" not in second.log

    # A server on another data dir but the same port says it cannot listen.
    busy = serve(tmp_path / "other", "--port", str(port), "--engine", "sandbox")
    assert busy.wait_exit() != 0
    assert "cannot listen" in busy.log
    assert "Traceback" not in busy.log

    assert _get(url + "/readyz")[0] == 200, "the first server is unaffected"
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0, server.log
    assert "WhatsDeX stopped" in server.log
    assert "Traceback" not in server.log


def test_sigint_stops_cleanly_with_json_logs(serve: Callable[..., Serve], tmp_path: Path) -> None:
    server = serve(tmp_path / "data", "--port", "0", "--engine", "sandbox", "--log-format", "json")
    url, _ = server.wait_ready()
    assert _get(url + "/healthz")[0] == 200
    server.proc.send_signal(signal.SIGINT)
    assert server.wait_exit() == 0, server.log
    assert "Traceback" not in server.log
    assert "interrupted" not in server.log

    # Every log line is one JSON object (the ready line is the CLI talking, not the log).
    entries = [json.loads(line) for line in server.stderr if not READY.search(line)]
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert any(
        e["logger"] == "whatsdex.app" and e["message"] == "WhatsDeX stopped" for e in entries
    )


def test_restart_keeps_the_data(serve: Callable[..., Serve], tmp_path: Path) -> None:
    """The second start finds the lock released and the migrations already applied."""
    data_dir = tmp_path / "data"
    for round_ in range(2):
        server = serve(data_dir, "--port", "0", "--engine", "sandbox")
        url, _ = server.wait_ready()
        assert _get(url + "/readyz")[0] == 200
        applied = "applied migrations" in server.log
        assert applied == (round_ == 0), server.log
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit() == 0
