"""An HTTP load generator: N keep-alive connections, each sending its next request as soon as
the previous answer arrived (closed loop), for a fixed time.

Two clients: `raw` speaks HTTP/1.1 on asyncio streams with pre-built requests (the default: it
costs a fraction of httpx's CPU per request, which matters when the generator shares two cores
with the server), and `httpx` for comparison. `ceiling` in the results says how many requests
per second the generator itself can make against a server that does nothing.

Runs in its own process (`python -m bench.load SPEC.json`), so its CPU use is its own and is
reported (`generator_cpu`: cores busy). Prints one JSON object.

A spec: {"base": "http://127.0.0.1:8000", "requests": [{"method", "path", "headers", "body"}],
"concurrency": 50, "duration": 10, "warmup": 1, "client": "raw", "samples_file": null}.
Requests are used round-robin; `{n}` in a path, header value or body becomes a number unique to
the run (unique idempotency keys). `max_requests` stops after that many; `stop_file` stops
when that file appears. With `samples_file`, every request's start time (monotonic),
latency and status are written there as doubles, for latencies during a window (benchmark 6).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class Template:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    numbered: bool  # holds `{n}`

    def render(self, n: int, host: str) -> bytes:
        """The whole request, ready for the socket."""
        path, body, headers = self.path, self.body, self.headers
        if self.numbered:
            text = str(n)
            path = path.replace("{n}", text)
            body = body.replace(b"{n}", text.encode())
            headers = {k: v.replace("{n}", text) for k, v in headers.items()}
        lines = [f"{self.method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def templates(spec: dict[str, Any]) -> list[Template]:
    found = []
    for raw in spec["requests"]:
        body = raw.get("body", "")
        body_bytes = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = dict(raw.get("headers", {}))
        if isinstance(body, dict | list):
            headers.setdefault("Content-Type", "application/json")
        numbered = "{n}" in raw["path"] or b"{n}" in body_bytes or any(
            "{n}" in v for v in headers.values())
        found.append(Template(raw.get("method", "GET"), raw["path"], headers, body_bytes,
                              numbered))
    return found


class Recorder:
    def __init__(self) -> None:
        self.starts = array.array("d")
        self.latencies = array.array("d")
        self.statuses = array.array("d")
        self.errors: Counter[str] = Counter()

    def add(self, start: float, latency: float, status: int) -> None:
        self.starts.append(start)
        self.latencies.append(latency)
        self.statuses.append(float(status))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep the connection) after reading one whole response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    keep = True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            keep = False
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length > 0:
        await reader.readexactly(length)
    elif length < 0:
        await reader.read()  # until close
        keep = False
    return status, keep


class Deadline:
    """When to stop: at a time (moved earlier when the stop file appears), or after
    `limit` requests were started."""

    def __init__(self, at: float, limit: int | None = None) -> None:
        self.at = at
        self.left = limit

    def open(self) -> bool:
        return time.monotonic() < self.at and (self.left is None or self.left > 0)

    def take(self) -> bool:
        """Claim one request; False once the limit is used up."""
        if self.left is None:
            return True
        self.left -= 1
        return self.left >= 0


async def _watch_stop_file(path: Path, deadline: Deadline) -> None:
    while deadline.open():
        if path.exists():
            deadline.at = time.monotonic()
            return
        await asyncio.sleep(0.05)


async def _raw_worker(host: str, port: int, host_header: str, plan: list[Template],
                      counter: itertools.count[int], deadline: Deadline, rec: Recorder) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while deadline.open():
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                        CONNECT_TIMEOUT)
            assert reader is not None and writer is not None
            if not deadline.take():
                break
            n = next(counter)
            request = plan[n % len(plan)].render(n, host_header)
            start = time.monotonic()
            try:
                writer.write(request)
                status, keep = await asyncio.wait_for(_read_response(reader), READ_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                rec.errors[type(exc).__name__] += 1
                rec.add(start, time.monotonic() - start, 0)
                writer.close()
                reader = writer = None
                continue
            rec.add(start, time.monotonic() - start, status)
            if not keep:
                writer.close()
                reader = writer = None
    finally:
        if writer is not None:
            writer.close()


async def _httpx_workers(base: str, concurrency: int, plan: list[Template],
                         counter: itertools.count[int], deadline: Deadline,
                         rec: Recorder) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=READ_TIMEOUT) as client:

        async def worker() -> None:
            while deadline.open() and deadline.take():
                n = next(counter)
                t = plan[n % len(plan)]
                text = str(n)
                headers = {k: v.replace("{n}", text) for k, v in t.headers.items()}
                body = t.body.replace(b"{n}", text.encode()) if t.numbered else t.body
                start = time.monotonic()
                try:
                    response = await client.request(t.method, t.path.replace("{n}", text),
                                                    headers=headers, content=body or None)
                except httpx.HTTPError as exc:
                    rec.errors[type(exc).__name__] += 1
                    rec.add(start, time.monotonic() - start, 0)
                    continue
                rec.add(start, time.monotonic() - start, response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(ordered: list[float], p: float) -> float:
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Drive the load described by `spec`; a summary of the measured part (after warm-up)."""
    base = spec["base"]
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    concurrency = int(spec.get("concurrency", 50))
    duration = float(spec.get("duration", 10))
    warmup = float(spec.get("warmup", 1))
    client = spec.get("client", "raw")
    plan = templates(spec)
    counter = itertools.count(int(spec.get("first_n", 0)))
    rec = Recorder()
    started = time.monotonic()
    measure_from = started + warmup
    stop_at = measure_from + duration
    loop = asyncio.get_running_loop()
    cpu_mark: list[float] = []
    loop.call_at(loop.time() + warmup, lambda: cpu_mark.append(_cpu()))
    limit = spec.get("max_requests")
    deadline = Deadline(stop_at, int(limit) if limit else None)
    watcher = None
    if spec.get("stop_file"):
        watcher = asyncio.ensure_future(_watch_stop_file(Path(spec["stop_file"]), deadline))
    if client == "httpx":
        await _httpx_workers(base, concurrency, plan, counter, deadline, rec)
    else:
        await asyncio.gather(*(
            _raw_worker(host, port, parts.netloc, plan, counter, deadline, rec)
            for _ in range(concurrency)))
    if watcher is not None:
        watcher.cancel()
    ended = time.monotonic()
    stop_at = min(stop_at, deadline.at)
    duration = max(1e-9, stop_at - measure_from)
    cpu_used = _cpu() - (cpu_mark[0] if cpu_mark else 0.0)
    measured = [i for i, s in enumerate(rec.starts) if s >= measure_from]
    # Requests started in the measured window (the last ones may finish just after it).
    window = duration
    latencies = sorted(rec.latencies[i] for i in measured)
    statuses = Counter(int(rec.statuses[i]) for i in measured)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    samples_file = spec.get("samples_file")
    if samples_file:
        out = array.array("d")
        for i in range(len(rec.starts)):
            out.extend((rec.starts[i], rec.latencies[i], rec.statuses[i]))
        Path(samples_file).write_bytes(out.tobytes())
    return {
        "client": client,
        "concurrency": concurrency,
        "duration": duration,
        "requests": len(measured),
        "ok": ok,
        "rps": len(measured) / window,
        "ok_rps": ok / window,
        "p50": _percentile(latencies, 50),
        "p90": _percentile(latencies, 90),
        "p95": _percentile(latencies, 95),
        "p99": _percentile(latencies, 99),
        "max": latencies[-1] if latencies else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(rec.errors),
        "generator_cpu": cpu_used / max(1e-9, ended - measure_from),
        "window": [measure_from, stop_at],
        "last_n": next(counter),
    }


def read_samples(path: Path) -> list[tuple[float, float, int]]:
    """(start, latency, status) of every request, as `samples_file` holds them."""
    values = array.array("d")
    values.frombytes(path.read_bytes())
    return [(values[i], values[i + 1], int(values[i + 2])) for i in range(0, len(values), 3)]


class Running:
    """A load generator process started with `start`; `finish` waits for its summary."""

    def __init__(self, spec: dict[str, Any], workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        spec_file = workdir / f"{name}.json"
        spec_file.write_text(json.dumps(spec))
        self.limit = float(spec.get("warmup", 1)) + float(spec.get("duration", 10)) + 60
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load", str(spec_file)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            cwd=Path(__file__).resolve().parent.parent)

    def finish(self, timeout: float | None = None) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout or self.limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("the load generator did not finish in time") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        if self.proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"the load generator failed ({self.proc.returncode}): "
                               f"{err.strip()[-800:]}")
        result: dict[str, Any] = json.loads(out)
        return result


def start(spec: dict[str, Any], workdir: Path, name: str = "load") -> Running:
    """Start one load in its own process (see the module doc)."""
    return Running(spec, workdir, name)


def drive(spec: dict[str, Any], workdir: Path, name: str = "load") -> dict[str, Any]:
    """Run one load in its own process and return its summary."""
    return start(spec, workdir, name).finish()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("spec", type=Path, help="the load to make (JSON, see the module doc)")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(run(spec))
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
