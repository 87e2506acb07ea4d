"""When campaigns start: now, once at a moment, or on a cron schedule, in a time zone.

The database is the only record of schedules. APScheduler jobs are derived from it: rebuilt
when the server starts and replaced after every change of a campaign (`sync`), so a job never
holds anything the database does not. A campaign has a job exactly while it is `scheduled`.

A recurring (cron) campaign keeps one row per contact like any other: each run sends to the
contacts that match its audience then and have not had it yet, so nobody receives it twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import msgspec
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from whatsdex.campaigns.pacing import zone
from whatsdex.clock import iso, parse_iso
from whatsdex.errors import BadRequest
from whatsdex.store.campaigns import Campaign

log = logging.getLogger(__name__)

Kind = Literal["now", "at", "cron"]
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_CRON = 100


class Schedule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`now` (when started), `at` a moment (ISO 8601; without an offset it is read in
    `timezone`), or `cron`: five crontab fields (minute hour day month weekday, 0 or 7 =
    Sunday) in `timezone`. An empty `timezone` is the workspace's."""

    kind: Kind = "now"
    at: str | None = None
    cron: str = ""
    timezone: str = ""


class Cleaned(msgspec.Struct, kw_only=True):
    kind: str
    at: str | None  # UTC
    cron: str
    timezone: str


def _expand_days(field: str) -> str:
    """Crontab's weekday field in APScheduler 3's spelling: it numbers Monday 0, crontab
    numbers Sunday 0 (and 7); names mean the same in both, so numbers become names."""
    days: set[int] = set()
    for item in field.lower().split(","):
        spec, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in {item!r}")
        if spec == "*":
            low, high = 0, 6
        else:
            first, dash, last = spec.partition("-")
            low = _day_number(first)
            high = _day_number(last) if dash else (6 if step else low)
        span = range(low, high + 1, step or 1)
        if not span:
            raise ValueError(f"empty range {item!r}")
        days.update(d % 7 for d in span)
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def _day_number(text: str) -> int:
    if text in _DAY_NAMES:
        return _DAY_NAMES.index(text)
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text)
    raise ValueError(f"unknown weekday {text!r}")


def cron_trigger(expression: str, timezone: str) -> CronTrigger:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError("a cron expression has five fields: minute hour day month weekday")
    if fields[4] != "*":
        fields[4] = _expand_days(fields[4])
    return CronTrigger.from_crontab(" ".join(fields), timezone=zone(timezone))


def _parse_at(text: str, timezone: str) -> float:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest("`schedule.at` must be a date and time like 2026-05-01T09:30 "
                         "(ISO 8601)", {"field": "schedule.at"}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(timezone))
    return moment.timestamp()


def clean(schedule: Schedule, *, default_timezone: str = "UTC") -> Cleaned:
    """Validated; `at` in UTC (read in the campaign's time zone, else `default_timezone`, the
    workspace's, when it has no offset). A moment already past runs once started."""
    timezone = schedule.timezone.strip()
    if timezone:
        zone(timezone)
    if schedule.kind == "at":
        if not schedule.at:
            raise BadRequest("`schedule.at` is required to start at a moment",
                             {"field": "schedule.at"})
        return Cleaned(kind="at", at=iso(_parse_at(schedule.at, timezone or default_timezone)),
                       cron="", timezone=timezone)
    if schedule.kind == "cron":
        expression = " ".join(schedule.cron.split())
        if not expression or len(expression) > MAX_CRON:
            raise BadRequest("`schedule.cron` is required: five fields like `0 9 * * 1` "
                             "(09:00 every Monday)", {"field": "schedule.cron"})
        try:
            cron_trigger(expression, timezone or default_timezone)
        except ValueError as exc:
            raise BadRequest(f"`schedule.cron` is not a cron expression: {exc}",
                             {"field": "schedule.cron"}) from None
        return Cleaned(kind="cron", at=None, cron=expression, timezone=timezone)
    return Cleaned(kind="now", at=None, cron="", timezone=timezone)


def next_run(campaign: Campaign, timezone: str, after: float) -> str | None:
    """When a scheduled campaign should (next) start, in UTC; None for `now`."""
    if campaign.schedule_kind == "at":
        return campaign.schedule_at
    if campaign.schedule_kind == "cron":
        trigger = cron_trigger(campaign.schedule_cron, timezone)
        fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(after, UTC))
        return None if fire is None else iso(fire.timestamp())
    return None


Fire = Callable[[str], Awaitable[None]]


class CampaignSchedule:
    """The APScheduler side: one job per `scheduled` campaign, named after it."""

    def __init__(self, scheduler: BaseScheduler | None, fire: Fire, clock: Callable[[], float]
                 ) -> None:
        self.scheduler = scheduler
        self.fire = fire
        self.clock = clock
        self._jobs: set[str] = set()

    @staticmethod
    def job_id(campaign_id: str) -> str:
        return f"campaign:{campaign_id}"

    def sync(self, campaign: Campaign | None, campaign_id: str, timezone: str = "UTC") -> None:
        """Replace the campaign's job by what the database says now (no job unless
        `scheduled`; a moment already past is the caller's to run at once)."""
        job_id = self.job_id(campaign_id)
        self._remove(job_id)
        if self.scheduler is None or campaign is None or campaign.status != "scheduled":
            return
        if campaign.schedule_kind == "cron":
            trigger: CronTrigger | DateTrigger = cron_trigger(
                campaign.schedule_cron, campaign.timezone or timezone)
        elif campaign.next_run_at is not None and parse_iso(campaign.next_run_at) > self.clock():
            trigger = DateTrigger(run_date=datetime.fromtimestamp(
                parse_iso(campaign.next_run_at), UTC))
        else:
            return
        self.scheduler.add_job(
            self.fire, trigger, args=[campaign_id], id=job_id, name=f"campaign {campaign.name}",
            replace_existing=True, coalesce=True, max_instances=1, misfire_grace_time=None)
        self._jobs.add(job_id)

    def _remove(self, job_id: str) -> None:
        self._jobs.discard(job_id)
        if self.scheduler is None:
            return
        with contextlib.suppress(JobLookupError):  # a one-shot job is gone once it ran
            self.scheduler.remove_job(job_id)

    def jobs(self) -> list[str]:
        """Ids of the campaign jobs this schedule keeps (for tests and diagnostics)."""
        if self.scheduler is None:
            return []
        return [job.id for job in self.scheduler.get_jobs() if job.id in self._jobs]

    def clear(self) -> None:
        for job_id in list(self._jobs):
            self._remove(job_id)
