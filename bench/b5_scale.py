"""Benchmark 5: what idle numbers cost. RSS (web process plus engine hosts) and event-loop
latency with 0, 100, 200 and 500 linked sandbox numbers; the time from `serve` until all of
them are connected again; and the memory of offline neonize clients (0, 25, 50).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.harness import (
    Api,
    BenchError,
    Mode,
    Outcome,
    Server,
    Workspace,
    bench_env,
    link_numbers,
    mb,
    ms,
    percentile,
    provision,
    running,
    serve_argv,
    statuses,
    wait_until,
)
from bench.probe import read_lags

TITLE = "Scale of numbers: memory and event-loop latency"
BUDGET = 300.0
SMOKE_BUDGET = 60.0
RSS_TARGET = 400 * 1_048_576
LAG_TARGET = 0.020
RECONNECT_TARGET = 10.0


async def _link_spread(url: str, workspaces: list[Workspace], have: list[int], want: int,
                       first_phone: int) -> None:
    """Link numbers round-robin over the workspaces until they hold `want` in total."""
    adds = [0] * len(workspaces)
    for i in range(want - sum(have)):
        adds[(sum(have) + i) % len(workspaces)] += 1

    async def one(index: int) -> None:
        if not adds[index]:
            return
        async with Api(url, workspaces[index].key) as api:
            await link_numbers(api, adds[index], timeout=180.0, parallel=4,
                               first_phone=first_phone + index * 100_000 + have[index])
        have[index] += adds[index]

    await asyncio.gather(*(one(i) for i in range(len(workspaces))))


async def _connected(url: str, workspaces: list[Workspace]) -> int:
    total = 0
    for ws in workspaces:
        async with Api(url, ws.key, timeout=10.0) as api:
            total += sum(1 for s in (await statuses(api)).values() if s == "connected")
    return total


def _sandbox(mode: Mode, work: Path, out: Outcome) -> None:
    steps = mode.pick([0, 100, 200, 500], [0, 4])
    window = mode.pick(10.0, 1.0)
    settle = mode.pick(4.0, 0.5)
    data = work / "sandbox-data"
    workspaces = provision(data, mode.pick(10, 2))
    env = bench_env(work / "home")
    lag_file = work / "lag.bin"
    first_phone = 15_550_000_000
    have = [0] * len(workspaces)
    figures: list[tuple[int, int, int, float, float]] = []
    server = Server(serve_argv(data, probe_file=lag_file), env, work / "serve.log")
    with running(server):
        for count in steps:
            started = time.monotonic()
            asyncio.run(_link_spread(server.url, workspaces, have, count, first_phone))
            link_seconds = time.monotonic() - started
            time.sleep(settle)
            begin = time.monotonic()
            peak = 0
            web = 0
            while time.monotonic() - begin < window:
                by_pid = server.rss_by_process()
                if sum(by_pid.values()) > peak:
                    peak, web = sum(by_pid.values()), by_pid.get(server.pid, 0)
                time.sleep(0.25)
            lags = read_lags(lag_file, begin, time.monotonic())
            if not lags:
                raise BenchError("the event-loop probe recorded nothing")
            figures.append((count, peak, web, percentile(lags, 99), max(lags)))
            if count:
                out.note(f"Linking {count - (figures[-2][0] if len(figures) > 1 else 0)} "
                         f"numbers took {link_seconds:.1f}s ({count} linked now).")
        total_linked = steps[-1]
    _, idle_rss, _, idle_p99, _ = figures[0]
    for count, peak, web, p99, worst in figures:
        big = count == steps[-1]
        out.add(f"RSS, {count} idle numbers (web {mb(web)} + hosts {mb(peak - web)})", mb(peak),
                baseline=f"{mb(idle_rss)} with 0" if count else "",
                target="< 400 MB" if big else "", met=(peak < RSS_TARGET) if big else None)
        out.add(f"Event-loop timer p99, {count} idle numbers (max {ms(worst)})", ms(p99),
                baseline=f"{ms(idle_p99)} with 0" if count else "",
                target="< 20 ms" if big else "", met=(p99 < LAG_TARGET) if big else None)

    last_count, last_rss = figures[-1][0], figures[-1][1]
    if last_count:
        out.add(f"RSS per idle sandbox number (0 → {last_count})",
                f"{(last_rss - idle_rss) / last_count / 1024:.0f} KB")

    # A restart: every linked number must come back by itself.
    server = Server(serve_argv(data, probe_file=lag_file), env, work / "serve-restart.log")
    with running(server):
        ready = time.monotonic() - server.started

        async def all_back() -> bool:
            return await _connected(server.url, workspaces) >= total_linked

        asyncio.run(wait_until(all_back, mode.pick(120.0, 30.0), "all numbers reconnected",
                               every=0.1))
        back_at = time.monotonic()
        back = back_at - server.started
        time.sleep(settle)
        rss_after = server.rss()
        storm = read_lags(lag_file, server.started, back_at)
    out.add(f"`serve` → all {total_linked} numbers connected (ready after {ready:.1f}s)",
            f"{back:.1f} s", target="< 10 s", met=back < RECONNECT_TARGET)
    out.add(f"RSS after the restart, {total_linked} numbers", mb(rss_after))
    if storm:
        out.add(f"Event-loop timer p99 while {total_linked} numbers reconnect (max "
                f"{ms(max(storm))})", ms(percentile(storm, 99)))


def _neonize(mode: Mode, work: Path, out: Outcome) -> None:
    """Offline neonize clients: each number starts connecting and fails (no network here)."""
    steps = mode.pick([0, 25, 50], [0, 1, 2])
    settle = mode.pick(8.0, 1.5)
    data = work / "neonize-data"
    [ws] = provision(data, 1)
    env = bench_env(work / "home")
    flags = ("--engine", "neonize", "--port", "0", "--backup-interval-minutes", "0")
    figures: list[tuple[int, int, int]] = []
    server = Server(serve_argv(data, flags=flags), env, work / "serve-neonize.log")
    with running(server):
        made = 0

        async def add(n: int) -> None:
            async with Api(server.url, ws.key) as api:
                for i in range(n):
                    await api.call("POST", "/api/v1/sessions", {"name": f"Offline {made + i}"})

        for count in steps:
            asyncio.run(add(count - made))
            made = count
            time.sleep(settle)
            by_pid = server.rss_by_process()
            figures.append((count, sum(by_pid.values()), by_pid.get(server.pid, 0)))
    for count, total, web in figures:
        out.add(f"RSS, {count} offline neonize clients (web {mb(web)} + hosts {mb(total - web)})",
                mb(total), baseline=f"{mb(figures[0][1])} with 0" if count else "")
    if len(figures) >= 3:
        (c1, r1, _), (c2, r2, _) = figures[-2], figures[-1]
        out.add(f"RSS per offline neonize client ({c1} → {c2})", mb((r2 - r1) / (c2 - c1)))
    out.note("Offline neonize clients fail to resolve WhatsApp's address and retry with "
             f"backoff; memory is read {settle:.0f}s after each step is created.")


def run(mode: Mode, work: Path, out: Outcome) -> None:
    _sandbox(mode, work, out)
    _neonize(mode, work, out)
