"""Where a server spends its time under load: py-spy samples, summed by function.

`python -m bench --profile` samples the server of benchmarks 1, 2 and 4 while they load it
(py-spy must be installed: `pip install py-spy`; it needs ptrace rights over the server
process). The samples are of the thread holding the GIL: Python work, not SQLite's own C work
nor waiting. The summary says which thread did the work, which functions were most often on
top (self time) and which product functions most often on the stack (total time).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

RATE = 50  # samples per second: little overhead, enough for a top ten


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Sampler:
    def __init__(self) -> None:
        self.summary: list[str] = []


def _short(frame: str) -> str:
    """`handle (whatsdex/messaging/inbound.py:97)` → `handle (messaging/inbound.py)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "whatsdex/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


def _ours(frame: str) -> bool:
    """A product function, not the command line that started the server."""
    return ("whatsdex/" in frame and "/bench/" not in frame and "whatsdex/cli/" not in frame
            and "whatsdex/entry.py" not in frame and "whatsdex/__main__.py" not in frame)


def _thread_kind(stack: str) -> str:
    """Which of the server's threads a stack belongs to, from its outermost frames."""
    if "_write_loop" in stack:
        return "store writer"
    if "_connection_worker_thread" in stack:
        return "SQLite readers (aiosqlite)"
    if "concurrent/futures/thread.py" in stack:
        return "thread pool (to_thread)"
    return "event loop"


def summarise(raw: Path, top: int = 8) -> list[str]:
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[_short(frames[-1])] += n
        threads[_thread_kind(stack)] += n
        for frame in {f for f in frames if _ours(f)}:
            ours[_short(frame)] += n
    if not total:
        return ["py-spy recorded no samples"]
    lines = ["samples by thread: " + "; ".join(f"{name} {n / total:.0%}"
                                               for name, n in threads.most_common())]
    lines.append("self time: " + "; ".join(f"{name} {n / total:.0%}"
                                           for name, n in own.most_common(top)))
    lines.append("WhatsDeX functions on the stack: " + "; ".join(
        f"{name} {n / total:.0%}" for name, n in ours.most_common(top)))
    return lines


@contextlib.contextmanager
def sampling(pid: int, seconds: float, out: Path, enabled: bool) -> Iterator[Sampler]:
    """Sample `pid` (and its threads) for `seconds` while the body runs."""
    sampler = Sampler()
    exe = _py_spy() if enabled else None
    if not enabled:
        yield sampler
        return
    if exe is None:
        sampler.summary = ["profile skipped: py-spy is not installed (pip install py-spy)"]
        yield sampler
        return
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", str(RATE), "--format", "raw", "--output", str(out), "--nonblocking",
         # Only the thread holding the GIL: Python work, not threads waiting or in SQLite.
         "--gil"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield sampler
    finally:
        try:
            _, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if out.exists():
            sampler.summary = summarise(out)
        else:
            sampler.summary = [f"profile failed: {err.strip()[-300:]}"]
