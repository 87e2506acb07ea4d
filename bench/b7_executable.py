"""Benchmark 7: the executable. Time from exec to a 200 on `/readyz`, and memory once started,
for the one-file build (`bash packaging/build.sh` → `build/dist/whatsdex`), against the same
server started from the Python environment in the same run.

The one-file program unpacks its libraries into a temporary directory at every start, so each
start pays that; "first start" also creates the data dir, the master key and the schema.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.harness import (
    ROOT,
    BenchError,
    Mode,
    NotAvailable,
    Outcome,
    Server,
    bench_env,
    mb,
    running,
)

TITLE = "The executable: cold start and memory"
BUDGET = 120.0
SMOKE_BUDGET = 60.0
TARGET = 3.0
EXE = ROOT / "build" / "dist" / "whatsdex"
FLAGS = ("--engine", "sandbox", "--port", "0", "--backup-interval-minutes", "0")


def _start(argv: list[str], env: dict[str, str], log: Path, settle: float
           ) -> tuple[float, int]:
    """(seconds from exec until /readyz answered 200, RSS of the process tree `settle` s
    later)."""
    server = Server(argv, env, log, name=argv[0])
    with running(server):
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=5) as client:
            while True:
                try:
                    if client.get(server.url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"{argv[0]}: /readyz not 200 within 60s")
                time.sleep(0.01)
        ready = time.monotonic() - server.started
        time.sleep(settle)
        return ready, server.rss()


def _series(argv_for: list[str], runs: int, again_runs: int, settle: float, work: Path,
            name: str) -> tuple[list[float], list[float], int]:
    """First starts on fresh data dirs, then restarts on the first one."""
    env = bench_env(work / "home", {"TMPDIR": str(work / "tmp")})
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    first: list[float] = []
    again: list[float] = []
    rss = 0
    for i in range(runs):
        data = work / f"{name}-data-{i}"
        seconds, rss = _start([*argv_for, "serve", "--data-dir", str(data), *FLAGS], env,
                              work / f"{name}-{i}.log", settle)
        first.append(seconds)
    for i in range(again_runs):
        seconds, _ = _start([*argv_for, "serve", "--data-dir", str(work / f"{name}-data-0"),
                             *FLAGS], env, work / f"{name}-again-{i}.log", settle)
        again.append(seconds)
    return first, again, rss


def run(mode: Mode, work: Path, out: Outcome) -> None:
    runs = mode.pick(3, 1)
    again = mode.pick(3, 0)
    settle = mode.pick(2.0, 0.5)
    base_first, base_again, base_rss = _series([sys.executable, "-m", "whatsdex"], runs, again,
                                               settle, work, "python")
    if not EXE.exists():
        out.add("Executable", "not built", target="< 3 s")
        raise NotAvailable(f"{EXE.relative_to(ROOT)} is not built: run "
                           "`bash packaging/build.sh` first (baseline: `python -m whatsdex` "
                           f"reached /readyz in {statistics.median(base_first):.2f}s)")
    exe_first, exe_again, exe_rss = _series([str(EXE)], runs, again, settle, work, "exe")
    worst = max(exe_first)
    out.add(f"Start to /readyz 200, fresh data dir (median of {runs}; worst {worst:.2f}s)",
            f"{statistics.median(exe_first):.2f} s",
            baseline=f"{statistics.median(base_first):.2f} s from Python", target="< 3 s",
            met=worst < TARGET)
    if exe_again:
        out.add(f"Start to /readyz 200, existing data dir (median of {again})",
                f"{statistics.median(exe_again):.2f} s",
                baseline=f"{statistics.median(base_again):.2f} s from Python", target="< 3 s",
                met=max(exe_again) < TARGET)
    out.add(f"RSS {settle:.1f}s after ready (bootloader + server)", mb(exe_rss),
            baseline=f"{mb(base_rss)} from Python")
    out.note(f"Executable: {EXE.relative_to(ROOT)}, {mb(EXE.stat().st_size)}, built "
             f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(EXE.stat().st_mtime))} UTC. "
             "Each start unpacks it into $TMPDIR (a fresh directory per start).")
