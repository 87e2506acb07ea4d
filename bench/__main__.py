"""`python -m bench`: run every benchmark and write `bench/RESULTS.md`.

    python -m bench               # the full suite (about 10-15 minutes on 2 cores)
    python -m bench --smoke       # seconds per benchmark: does every benchmark still run?
    python -m bench --only 1,5    # some of them
    python -m bench --profile     # also sample the server with py-spy during benchmarks 1, 2

The full run writes the table to `bench/RESULTS.md` (or `--out`); a smoke run only prints it
unless `--out` is given. Exits 1 when a benchmark failed to produce its figures (a missed
target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench.harness import BenchError, Mode, NotAvailable, Outcome, OutOfTime, hard_limit

MODULES = {
    1: "bench.b1_send",
    2: "bench.b2_ingest",
    3: "bench.b3_dashboard",
    4: "bench.b4_campaign",
    5: "bench.b5_scale",
    6: "bench.b6_backup",
    7: "bench.b7_executable",
}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
GRACE = 30.0  # beyond a benchmark's own budget, for stopping its servers


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model}), {ram / 2**30:.1f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def load_average() -> str:
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_one(number: int, mode: Mode, work: Path) -> Outcome:
    module: ModuleType = importlib.import_module(MODULES[number])
    out = Outcome(number, module.TITLE)
    budget = float(module.SMOKE_BUDGET if mode.smoke else module.BUDGET)
    folder = work / f"b{number}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"[bench] {number}. {out.title} (budget {budget:.0f}s)", file=sys.stderr, flush=True)
    try:
        with hard_limit(budget + GRACE):
            module.run(mode, folder, out)
    except NotAvailable as exc:
        out.status = "not available"
        out.note(str(exc))
    except OutOfTime as exc:
        out.status = "out of time"
        out.note(str(exc))
    except BenchError as exc:
        out.status = "failed"
        out.note(f"failed: {exc}")
    except Exception as exc:
        out.status = "failed"
        out.note(f"failed: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    out.seconds = time.monotonic() - started
    if out.seconds > budget and out.status == "ok":
        out.note(f"ran {out.seconds:.0f}s, over its {budget:.0f}s budget")
    print(f"[bench] {number}. {out.status} in {out.seconds:.0f}s", file=sys.stderr, flush=True)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: list[Outcome]) -> str:
    lines = ["| # | Benchmark | Measure | Result | Baseline (same run) | Target | Met |",
             "|---|---|---|---|---|---|---|"]
    for out in outcomes:
        if not out.rows:
            lines.append(f"| {out.number} | {_cell(out.title)} | — | **{out.status}** | | | |")
            continue
        for i, row in enumerate(out.rows):
            met = {True: "yes", False: "**no**", None: ""}[row.met]
            title = _cell(out.title) if i == 0 else ""
            status = "" if out.status == "ok" or i else f" ({out.status})"
            lines.append(f"| {out.number if i == 0 else ''} | {title}{status} | "
                         f"{_cell(row.measure)} | {_cell(row.result)} | {_cell(row.baseline)} | "
                         f"{_cell(row.target)} | {met} |")
    return "\n".join(lines)


def report(outcomes: list[Outcome], mode: Mode, started: datetime, seconds: float,
           load_before: str, command: str) -> str:
    parts = [
        "# WhatsDeX benchmark results" + (" (smoke run)" if mode.smoke else ""),
        "",
        f"- Date: {started:%Y-%m-%d} (run started {started:%H:%M} UTC, took "
        f"{seconds / 60:.1f} min)",
        f"- Machine: {machine()}",
        f"- Load average when the run started: {load_before} (other work on the machine "
        "shares the cores; every figure has its baseline from the same run for that reason)",
        f"- Command: `{command}`",
        "",
        table(outcomes),
        "",
        "## Notes",
    ]
    for out in outcomes:
        parts += ["", f"### {out.number}. {out.title} — {out.status}, {out.seconds:.0f}s", ""]
        parts += [f"- {note}" for note in out.notes] or ["- (no notes)"]
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds per benchmark")
    parser.add_argument("--only", default="", help="comma-separated benchmark numbers")
    parser.add_argument("--out", type=Path, help="where to write the Markdown results")
    parser.add_argument("--profile", action="store_true",
                        help="sample the server with py-spy (benchmarks 1, 2 and 4)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    numbers = sorted(MODULES)
    if args.only:
        numbers = [int(n) for n in args.only.split(",") if n.strip()]
        unknown = set(numbers) - set(MODULES)
        if unknown:
            parser.error(f"no benchmark {', '.join(map(str, sorted(unknown)))}")
    mode = Mode(smoke=args.smoke, profile=args.profile)
    work = Path(tempfile.mkdtemp(prefix="whatsdex-bench-"))
    started = datetime.now(UTC)
    load_before = load_average()
    clock = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        for number in numbers:
            outcomes.append(run_one(number, mode, work))
    finally:
        if args.keep:
            print(f"[bench] work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    command = "python -m bench" + "".join(f" {a}" for a in sys.argv[1:])
    text = report(outcomes, mode, started, time.monotonic() - clock, load_before, command)
    out_path = args.out or (None if mode.smoke or args.only else RESULTS)
    if out_path is not None:
        out_path.write_text(text)
        print(f"[bench] results written to {out_path}", file=sys.stderr)
    print(text)
    failed = [o for o in outcomes if o.status in ("failed", "out of time")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
