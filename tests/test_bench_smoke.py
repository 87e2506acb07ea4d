"""The benchmark suite still runs: `python -m bench --smoke` (seconds per benchmark) ends well.

The full suite (`python -m bench`) takes minutes and writes bench/RESULTS.md; this smoke run
keeps every benchmark's code path alive in CI without judging the figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def test_smoke_run_prints_a_row_for_every_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    header = "| # | Benchmark | Measure | Result | Baseline (same run) | Target | Met |"
    assert header in done.stdout
    for number in range(1, 8):
        row = re.search(rf"^\| {number} \| [^|]+\|", done.stdout, re.MULTILINE)
        assert row, f"no row for benchmark {number}:\n{done.stdout}"
    # Every benchmark either measured something or said clearly why it could not.
    for status in re.findall(r"^### \d+\. .+ — ([a-z ]+), \d+s$", done.stdout, re.MULTILINE):
        assert status in ("ok", "not available"), done.stdout
    assert out.read_text().startswith("# WhatsDeX benchmark results (smoke run)")
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
