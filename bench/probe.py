"""`whatsdex serve` with an event-loop probe: a 10 ms timer whose lateness is recorded.

`python -m bench.probe --lag-file F -- serve ...` runs the unchanged CLI; once uvicorn is
started, a task on the server's own loop sleeps 10 ms again and again and appends
(monotonic time, how late the wake-up was) to F as doubles, flushed twice a second. Monotonic
time is the same clock in every process, so a benchmark can pick any window from the file.
The probe wraps uvicorn's `Server.startup` (a library method) and touches no product code.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

PERIOD = 0.010
FLUSH_EVERY = 0.5


async def watch(path: Path) -> None:
    pending = array.array("d")
    last_flush = time.monotonic()
    with path.open("ab", buffering=0) as out:
        while True:
            before = time.monotonic()
            await asyncio.sleep(PERIOD)
            woke = time.monotonic()
            pending.extend((woke, max(0.0, woke - before - PERIOD)))
            if woke - last_flush >= FLUSH_EVERY:
                out.write(pending.tobytes())
                pending = array.array("d")
                last_flush = woke


def read_lags(path: Path, start: float = 0.0, end: float = float("inf")) -> list[float]:
    """The lateness of every wake-up between `start` and `end` (monotonic seconds)."""
    if not path.exists():
        return []
    values = array.array("d")
    raw = path.read_bytes()
    values.frombytes(raw[: len(raw) - len(raw) % 16])
    return [values[i + 1] for i in range(0, len(values), 2) if start <= values[i] <= end]


def install(path: Path) -> None:
    import uvicorn

    original = uvicorn.Server.startup
    tasks: list[asyncio.Task[None]] = []

    async def startup(self: uvicorn.Server, sockets: Any = None) -> None:
        await original(self, sockets)
        tasks.append(asyncio.get_running_loop().create_task(watch(path), name="bench-probe"))

    uvicorn.Server.startup = startup  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    parser.add_argument("--lag-file", type=Path, required=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- and the whatsdex arguments")
    args = parser.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    install(args.lag_file)
    sys.argv = ["whatsdex", *rest]
    from whatsdex.entry import main as whatsdex_main

    whatsdex_main()


if __name__ == "__main__":
    main()
