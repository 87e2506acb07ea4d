"""Benchmark 6: backup under load. While benchmark 1's send load runs (50 connections), back up
the >= 1 GiB data file of benchmark 3 twice: with `whatsdex backup` (another process) and, in
the full run, the server's own scheduled backup (a thread of the web process). Each backup's
duration and the slowest API answer while it ran, against the same load just before it.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import load
from bench.b1_send import CONCURRENCY, send_requests
from bench.data import shared_dataset
from bench.harness import (
    SERVE_FLAGS,
    Api,
    BenchError,
    Mode,
    Outcome,
    Server,
    bench_env,
    link_numbers,
    mb,
    ms,
    percentile,
    running,
    serve_argv,
)

TITLE = "Backup of a >= 1 GiB file under the send load"
BUDGET = 480.0
SMOKE_BUDGET = 60.0
DURATION_TARGET = 15.0
LATENCY_TARGET = 0.250
WRITTEN = re.compile(r"scheduled backup written: \S+ \((\d+) bytes, ([\d.]+)s\)")
SKIPPED = re.compile(r"scheduled backup skipped")


def _window(samples: list[tuple[float, float, int]], start: float, end: float
            ) -> tuple[float, int]:
    """(slowest answer, how many) of the requests in flight at some time in [start, end]."""
    during = [lat for began, lat, _ in samples if began <= end and began + lat >= start]
    return (max(during) if during else 0.0), len(during)


def _before(samples: list[tuple[float, float, int]], start: float, end: float
            ) -> tuple[float, float]:
    """(p99, max) of the requests that began and ended in [start, end]."""
    inside = [lat for began, lat, _ in samples if began >= start and began + lat <= end]
    return percentile(inside, 99), (max(inside) if inside else 0.0)


def _cli_backup(data_dir: Path, env: dict[str, str]) -> tuple[int, str, dict[str, float]]:
    """Run `whatsdex backup`; (exit code, what it said, when each stage began)."""
    proc = subprocess.Popen([sys.executable, "-m", "whatsdex", "backup", "--data-dir",
                             str(data_dir)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    stages: dict[str, float] = {}
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.strip())
        # Progress lines: "backup: copying:   0% (...)", "backup: verifying: 100% (...)".
        if "copying:   0%" in line:
            stages.setdefault("copying", time.monotonic())
        elif "verifying:   0%" in line:
            stages.setdefault("verifying", time.monotonic())
        elif "verifying: 100%" in line:
            stages.setdefault("verified", time.monotonic())
    return proc.wait(timeout=300), "\n".join(lines), stages


def _flags(scheduled: bool) -> list[str]:
    flags = list(SERVE_FLAGS)
    if scheduled:
        flags[flags.index("--backup-interval-minutes") + 1] = "1"
    return flags


def run(mode: Mode, work: Path, out: Outcome) -> None:
    shared = shared_dataset(work.parent, mode.smoke,
                            lambda line: print(f"[bench]   data set: {line}", flush=True))
    size = (shared.data_dir / "whatsdex.db").stat().st_size
    scheduled = not mode.smoke
    env = bench_env(work / "home")
    samples_file = work / "samples.bin"
    stop_file = work / "stop-load"
    ws = shared.workspaces[0]
    server = Server(serve_argv(shared.data_dir, flags=_flags(scheduled)), env,
                    work / "serve.log")
    with running(server):

        async def link() -> list[str]:
            async with Api(server.url, ws.key) as api:
                return await link_numbers(api, 2, first_phone=15_553_000_000)

        sessions = asyncio.run(link())
        warmup = mode.pick(2.0, 0.5)
        quiet = mode.pick(8.0, 1.0)  # load alone, before the first backup: the baseline
        running_load = load.start({
            "base": server.url, "requests": send_requests(sessions, ws.key, "b6"),
            "concurrency": CONCURRENCY, "duration": 600.0, "warmup": warmup,
            "samples_file": str(samples_file), "stop_file": str(stop_file)}, work, "load")
        try:
            loaded = time.monotonic() + warmup
            time.sleep(warmup + quiet)
            quiet_end = time.monotonic()
            started = time.monotonic()
            code, said, stages = _cli_backup(shared.data_dir, env)
            cli_end = time.monotonic()
            if code != 0:
                raise BenchError(f"whatsdex backup failed: {said[-400:]}")
            sched: tuple[float, float, int] | None = None
            if scheduled:
                # The first scheduled backup starts a minute after the server did.
                deadline = server.started + 180
                while sched is None:
                    found = server.wait_for_line(WRITTEN, max(1.0, deadline - time.monotonic()))
                    if found is None:
                        raise BenchError("no scheduled backup was written within 3 minutes of "
                                         "the start")
                    seconds = float(found.group(2))
                    ended = time.monotonic()
                    sched = (ended - seconds, ended, int(found.group(1)))
            time.sleep(1.0)
        finally:
            stop_file.touch()
            summary = running_load.finish(timeout=120)
    samples = load.read_samples(samples_file)
    quiet_p99, quiet_max = _before(samples, loaded, quiet_end)
    cli_worst, cli_n = _window(samples, started, cli_end)
    cli_seconds = cli_end - started
    out.add(f"`whatsdex backup` of {mb(size)} (a separate process) while sends run",
            f"{cli_seconds:.1f} s", target="< 15 s", met=cli_seconds < DURATION_TARGET)
    out.add(f"Slowest send answer during it ({cli_n:,} requests)", ms(cli_worst),
            baseline=f"p99 {ms(quiet_p99)}, max {ms(quiet_max)} before it",
            target="< 250 ms", met=cli_worst < LATENCY_TARGET)
    if sched is not None:
        s_start, s_end, s_bytes = sched
        s_worst, s_n = _window(samples, s_start, s_end)
        out.add(f"Scheduled backup of {mb(s_bytes)} (a thread of the server) while sends run",
                f"{s_end - s_start:.1f} s", target="< 15 s",
                met=s_end - s_start < DURATION_TARGET)
        out.add(f"Slowest send answer during it ({s_n:,} requests)", ms(s_worst),
                baseline=f"p99 {ms(quiet_p99)}, max {ms(quiet_max)} before it",
                target="< 250 ms", met=s_worst < LATENCY_TARGET)
    out.note(f"Send load during the whole benchmark: {summary['ok_rps']:.0f} accepted/s, "
             f"p99 {ms(summary['p99'])}, answers {summary['statuses']}. The backup copies with "
             "SQLite's backup API, checks the copy (quick_check) and hashes it (sha256) "
             "before it is kept.")
    copying, verifying = stages.get("copying"), stages.get("verifying")
    if copying is not None and verifying is not None:
        out.note(f"`whatsdex backup` stages: Python start and lock {copying - started:.1f}s, "
                 f"copy (backup API) {verifying - copying:.1f}s, quick_check and sha256 "
                 f"{stages.get('verified', cli_end) - verifying:.1f}s, the rest "
                 f"{cli_end - stages.get('verified', cli_end):.1f}s.")
