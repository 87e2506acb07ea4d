"""When a number may send its next campaign message: random gaps, a daily cap that ramps up
for new numbers (warm-up), and a weekly send window in the campaign's time zone.

Pure functions of the clock reading they are given, so the runner (and tests, with a clock
they move themselves) get the same answers at any speed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from whatsdex.errors import BadRequest

MAX_GAP = 86_400.0  # a day between two messages of one number is the most that makes sense
MAX_CAP = 1_000_000
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class Pacing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Seconds between two messages of one number (random in [min_gap, max_gap]); at most
    `daily_cap` messages per number and day (0: no cap); a new number starts at
    `warmup_start` per day and may send `warmup_increase` more each day (0: no warm-up)."""

    min_gap: float = 0.0
    max_gap: float = 0.0
    daily_cap: int = 0
    warmup_start: int = 0
    warmup_increase: int = 0

    @property
    def paced(self) -> bool:
        return self.max_gap > 0


class Window(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Sends only on these days (0 = Monday … 6 = Sunday) between `start` and `end` (HH:MM,
    local time); an `end` before `start` runs past midnight into the next day."""

    days: list[int] = msgspec.field(default_factory=lambda: [0, 1, 2, 3, 4])
    start: str = "09:00"
    end: str = "18:00"


def clean_pacing(p: Pacing) -> Pacing:
    def number(value: float, field: str, top: float) -> float:
        if not 0 <= value <= top:
            raise BadRequest(f"`pacing.{field}` must be between 0 and {top:g}",
                             {"field": f"pacing.{field}"})
        return float(value)

    def count(value: int, field: str) -> int:
        if not 0 <= value <= MAX_CAP:
            raise BadRequest(f"`pacing.{field}` must be between 0 and {MAX_CAP}",
                             {"field": f"pacing.{field}"})
        return int(value)

    low, high = number(p.min_gap, "min_gap", MAX_GAP), number(p.max_gap, "max_gap", MAX_GAP)
    if high < low:
        raise BadRequest("`pacing.max_gap` must be at least `pacing.min_gap`",
                         {"field": "pacing.max_gap"})
    increase = count(p.warmup_increase, "warmup_increase")
    start = count(p.warmup_start, "warmup_start")
    if increase and not start:
        raise BadRequest("`pacing.warmup_start` is the first day's cap: set it to warm up",
                         {"field": "pacing.warmup_start"})
    return Pacing(min_gap=low, max_gap=high, daily_cap=count(p.daily_cap, "daily_cap"),
                  warmup_start=start, warmup_increase=increase)


def _minutes(text: str, field: str) -> int:
    match = _HHMM.match(text.strip())
    if match is None or (match.group(1) == "24" and match.group(2) != "00"):
        raise BadRequest(f"`window.{field}` must be a time HH:MM (00:00 to 24:00)",
                         {"field": f"window.{field}"})
    return int(match.group(1)) * 60 + int(match.group(2))


def clean_window(w: Window | None) -> Window | None:
    if w is None:
        return None
    days = sorted(set(w.days))
    if not days or any(not 0 <= d <= 6 for d in days):
        raise BadRequest("`window.days`: choose one or more days, 0 (Monday) to 6 (Sunday)",
                         {"field": "window.days"})
    start, end = _minutes(w.start, "start"), _minutes(w.end, "end")
    if start == end or (start, end) == (0, 24 * 60):
        raise BadRequest("`window.end` must differ from `window.start` (no window: leave it "
                         "out)", {"field": "window.end"})
    return Window(days=days, start=f"{start // 60:02d}:{start % 60:02d}",
                  end=f"{end // 60:02d}:{end % 60:02d}")


def window_from(stored: dict[str, object]) -> Window | None:
    return msgspec.convert(stored, Window) if stored else None


def describe_window(w: Window | None) -> str:
    if w is None:
        return "any time"
    days = ", ".join(DAY_NAMES[d] for d in w.days)
    return f"{days} {w.start} to {w.end}"


def zone(name: str, field: str = "schedule.timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"`{field}`: {name!r} is not a time zone (e.g. Europe/Berlin)",
                         {"field": field}) from None


def random_gap(p: Pacing, rng: Callable[[], float]) -> float:
    return p.min_gap + (p.max_gap - p.min_gap) * rng()


# -- Days in the campaign's time zone -------------------------------------------------------------

def _at(day: date, minutes: int, tz: ZoneInfo) -> float:
    """The moment a local wall-clock time happens (24:00 is the next day's midnight)."""
    moment = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(minutes=minutes)
    return moment.timestamp()


def local_day(t: float, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(t, tz).date()


def day_start(t: float, tz: ZoneInfo) -> float:
    return _at(local_day(t, tz), 0, tz)


def next_day_start(t: float, tz: ZoneInfo) -> float:
    return _at(local_day(t, tz) + timedelta(days=1), 0, tz)


def day_index(first: float | None, t: float, tz: ZoneInfo) -> int:
    """Days since a number's first campaign day (0 on that day, and before there was one)."""
    if first is None:
        return 0
    return max(0, (local_day(t, tz) - local_day(first, tz)).days)


def daily_cap(p: Pacing, index: int) -> int | None:
    """Most messages per number on warm-up day `index`; None when uncapped."""
    caps: list[int] = []
    if p.warmup_start:
        caps.append(p.warmup_start + p.warmup_increase * index)
    if p.daily_cap:
        caps.append(p.daily_cap)
    return min(caps) if caps else None


def window_open_at(w: Window | None, tz: ZoneInfo, t: float) -> float:
    """The earliest moment at or after `t` inside the window (`t` itself when inside)."""
    if w is None:
        return t
    start, end = _minutes(w.start, "start"), _minutes(w.end, "end")
    overnight = end <= start
    today = local_day(t, tz)
    for offset in range(-1, 9):  # yesterday's window may run past midnight into today
        day = today + timedelta(days=offset)
        if day.weekday() not in w.days:
            continue
        closes = _at(day + timedelta(days=1) if overnight else day, end, tz)
        if closes <= t:
            continue
        return max(t, _at(day, start, tz))
    raise AssertionError("a window with days opens within a week")


def in_window(w: Window | None, tz: ZoneInfo, t: float) -> bool:
    return window_open_at(w, tz, t) <= t


def local_text(t: float, tz: ZoneInfo) -> str:
    """`Mon 09:00` style, for reasons shown to people."""
    moment = datetime.fromtimestamp(t, tz)
    return f"{DAY_NAMES[moment.weekday()]} {moment:%Y-%m-%d %H:%M} ({tz.key})"


def utc_midnight_after(t: float) -> float:
    moment = datetime.fromtimestamp(t, UTC)
    return (moment.date() + timedelta(days=1) - date(1970, 1, 1)).days * 86400.0
