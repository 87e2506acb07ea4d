"""Time as the product sees it: a replaceable clock (tests control it) and one text format."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from datetime import datetime

Clock = Callable[[], float]

system_clock: Clock = time.time


def iso(ts: float) -> str:
    """`2026-11-22T02:10:00.123Z`: sorts as text, readable in the database."""
    fraction, whole = math.modf(ts)  # split and rounded as datetime.fromtimestamp does
    micros, seconds = round(fraction * 1e6), int(whole)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    """The date and time of a whole second: one formatting for every stamp within it (a
    busy server writes thousands of stamps per second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
