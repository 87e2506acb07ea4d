"""Benchmark 1: API send acceptance. `POST /api/v1/sessions/{id}/messages` (text, a valid key,
a unique Idempotency-Key each) on 50 keep-alive connections for a fixed time, against a bare
Litestar JSON endpoint of the same shape served the same way, in the same run.

The server is real: sandbox engine, zero pacing, so every accepted message is also delivered
(and receipted) while the load runs, as it would be in production. The load generator's own
ceiling is measured first, against a server that does nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from bench import load
from bench.harness import (
    Api,
    Mode,
    Outcome,
    Server,
    Workspace,
    bench_env,
    cpu_split,
    link_numbers,
    ms,
    provision,
    rate,
    running,
    serve_argv,
)
from bench.profile import sampling

TITLE = "API send acceptance (50 connections)"
BUDGET = 150.0
SMOKE_BUDGET = 45.0
CONCURRENCY = 50
RATIO_TARGET = 0.40
P99_TARGET = 0.050
RECIPIENTS = 200


def send_requests(sessions: list[str], key: str, run: str) -> list[dict[str, Any]]:
    """Send requests over the numbers and a pool of recipients; `{n}` makes each key unique."""
    return [{
        "method": "POST",
        "path": f"/api/v1/sessions/{sessions[i % len(sessions)]}/messages",
        "headers": {"Authorization": f"Bearer {key}", "Idempotency-Key": f"{run}-{{n}}"},
        "body": {"to": f"+4915{i:09d}", "type": "text",
                 "text": "Your order {n} has shipped. Reply STOP to opt out."},
    } for i in range(RECIPIENTS)]


def bare_requests() -> list[dict[str, Any]]:
    return send_requests(["ses_bare"], "wdx_bare", "bare")


def start_bare(work: Path, env: dict[str, str]) -> Server:
    return Server([sys.executable, "-m", "bench.baseline", "bare"], env, work / "bare.log",
                  "bare Litestar")


def start_null(work: Path, env: dict[str, str]) -> Server:
    return Server([sys.executable, "-m", "bench.baseline", "null"], env, work / "null.log",
                  "null server")


def linked_server(work: Path, env: dict[str, str], numbers: int,
                  *, name: str = "serve") -> tuple[Server, Workspace, list[str]]:
    """A fresh data dir, one workspace, a started server with `numbers` linked numbers.

    The caller stops the server (it is started here, so it is stopped if linking fails)."""
    data = work / f"{name}-data"
    [ws] = provision(data, 1)
    server = Server(serve_argv(data), env, work / f"{name}.log")
    try:
        server.wait_ready()

        async def link() -> list[str]:
            async with Api(server.url, ws.key) as api:
                return await link_numbers(api, numbers, first_phone=15_551_000_000)

        sessions = asyncio.run(link())
    except BaseException:
        server.stop()
        raise
    return server, ws, sessions


def outbox_counts(db: Path) -> dict[str, int]:
    """Outbound messages by status, read from the data file (read-only, the server runs on)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT status, count(*) FROM messages WHERE direction = 'out' "
                            "GROUP BY status").fetchall()
    finally:
        conn.close()
    return {str(status): int(n) for status, n in rows}


def run(mode: Mode, work: Path, out: Outcome) -> None:
    duration = mode.pick(15.0, 1.0)
    warmup = mode.pick(2.0, 0.5)
    env = bench_env(work / "home")
    spec: dict[str, Any] = {"concurrency": CONCURRENCY, "duration": duration, "warmup": warmup}

    null = start_null(work, env)
    with running(null):
        ceiling = load.drive({**spec, "base": null.url, "requests": bare_requests()}, work,
                             "ceiling")
        httpx_ceiling = None if mode.smoke else load.drive(
            {**spec, "duration": 4.0, "client": "httpx", "base": null.url,
             "requests": bare_requests()}, work, "ceiling-httpx")
    bare = start_bare(work, env)
    with running(bare):
        cpu = bare.cpu()
        base = load.drive({**spec, "base": bare.url, "requests": bare_requests()}, work, "bare")
        bare_cpu = (bare.cpu() - cpu) / max(1, base["requests"])
        one = load.drive({**spec, "concurrency": 1, "duration": min(duration, 3.0),
                          "base": bare.url, "requests": bare_requests()}, work, "bare-one")

    server, ws, sessions = linked_server(work, env, mode.pick(4, 2))
    with running(server):
        cpu = server.cpu()
        parts = server.cpu_parts()
        started = time.monotonic()
        with sampling(server.pid, warmup + duration, work / "profile.txt",
                      mode.profile) as sampler:
            api = load.drive({**spec, "base": server.url,
                              "requests": send_requests(sessions, ws.key, "b1")}, work, "api")
        api_cpu = (server.cpu() - cpu) / max(1, api["requests"])
        elapsed = time.monotonic() - started
        split = cpu_split(parts, server.cpu_parts())
        counts = outbox_counts(work / "serve-data" / "whatsdex.db")

    ratio = api["ok_rps"] / max(1e-9, base["ok_rps"])
    out.add("Generator ceiling (null server, raw asyncio client)", rate(ceiling["rps"], " req/s"),
            target="well above the figures below")
    out.add("Accepted sends", rate(api["ok_rps"], " req/s"),
            baseline=f"{rate(base['ok_rps'], ' req/s')} bare Litestar")
    out.add("Send rate / bare endpoint rate", f"{ratio:.0%}", target=">= 40%",
            met=ratio >= RATIO_TARGET)
    out.add("Send latency p50", ms(api["p50"]), baseline=ms(base["p50"]))
    out.add("Send latency p99", ms(api["p99"]), baseline=ms(base["p99"]), target="< 50 ms",
            met=api["p99"] < P99_TARGET)
    out.add("Server CPU per accepted send (web + engine host)", ms(api_cpu),
            baseline=f"{ms(bare_cpu)} bare")
    out.add("Bare endpoint, one connection: p50", ms(one["p50"]))
    bad = {k: v for k, v in api["statuses"].items() if not k.startswith("2")}
    out.note(f"Answers: {api['statuses']}; generator errors: {api['errors'] or 'none'}"
             + (f" — non-2xx answers: {bad}" if bad else "") + ".")
    out.note(f"Outbound messages by status when the load stopped ({elapsed:.0f}s after it "
             f"began): {counts}. Delivery (zero pacing, sandbox) runs in the same process "
             "during the load.")
    out.note(f"Load generator: raw asyncio HTTP/1.1 client, {CONCURRENCY} connections, "
             f"{duration:g}s measured after {warmup:g}s warm-up, one process using "
             f"{api['generator_cpu']:.2f} cores during the send run and "
             f"{ceiling['generator_cpu']:.2f} at its ceiling.")
    if httpx_ceiling is not None:
        out.add("Generator ceiling with httpx.AsyncClient (null server)",
                rate(httpx_ceiling["rps"], " req/s"),
                baseline=f"p50 {ms(httpx_ceiling['p50'])}")
        out.note("httpx cannot saturate even the null server with 50 connections (its "
                 "figure above), so the raw asyncio client drives every load.")
    out.note("CPU during the send load (cores busy): " + ", ".join(
        f"{name} {used / elapsed:.2f}" for name, used in split.items()) + ".")
    out.note("The bare endpoint is bound as `whatsdex serve` binds (IPPROTO_TCP, so asyncio "
             "gives each connection TCP_NODELAY; without it a response's body waits ~40 ms for "
             "the client's delayed ACK).")
    for line in sampler.summary:
        out.note(f"Profile of the server under the send load — {line}")
