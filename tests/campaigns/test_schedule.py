"""Schedules: crontab weekdays in APScheduler's spelling, send windows in a time zone, jobs
kept in line with the database, recurring runs that reach only new contacts, and the jobs
rebuilt when the server starts again (a campaign due meanwhile runs at once, a later one
when its time comes)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from campaigns.conftest import (
    ACTOR,
    Rig,
    add_contacts,
    add_template,
    build_campaign_env,
    new_campaign,
)
from whatsdex.campaigns import pacing, schedule
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.campaigns.schedule import Schedule
from whatsdex.clock import iso, parse_iso
from whatsdex.errors import BadRequest
from whatsdex.sessions import sandbox_network

MakeRig = Callable[..., Awaitable[Rig]]
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(("field", "days"), [
    ("1-5", "mon,tue,wed,thu,fri"), ("0", "sun"), ("7", "sun"), ("*/2", "sun,tue,thu,sat"),
    ("5-7", "sun,fri,sat"), ("sat,sun", "sun,sat"), ("mon-wed", "mon,tue,wed"),
])
def test_crontab_weekdays_mean_what_crontab_says(field: str, days: str) -> None:
    assert schedule._expand_days(field) == days


def test_cron_fires_in_the_campaigns_time_zone() -> None:
    trigger = schedule.cron_trigger("30 9 * * 1", "Europe/Berlin")
    # Sunday 2026-09-20 noon UTC → Monday 09:30 in Berlin (07:30 UTC, summer time).
    fire = trigger.get_next_fire_time(None, datetime(2026, 9, 20, 12, tzinfo=UTC))
    assert fire is not None
    assert fire.astimezone(UTC) == datetime(2026, 9, 21, 7, 30, tzinfo=UTC)
    assert fire.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 09:30"


@pytest.mark.parametrize(("given", "field"), [
    (Schedule(kind="cron", cron="61 * * * *"), "schedule.cron"),
    (Schedule(kind="cron", cron="0 9 * * 8"), "schedule.cron"),
    (Schedule(kind="cron"), "schedule.cron"),
    (Schedule(kind="at", at="tomorrow"), "schedule.at"),
    (Schedule(kind="now", timezone="Nowhere/City"), "schedule.timezone"),
])
def test_bad_schedules_name_their_field(given: Schedule, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        schedule.clean(given)
    assert caught.value.detail == {"field": field}


def test_a_moment_without_an_offset_is_read_in_the_time_zone() -> None:
    cleaned = schedule.clean(Schedule(kind="at", at="2026-10-01T09:00",
                                      timezone="Europe/Berlin"))
    assert cleaned.at == "2026-10-01T07:00:00.000Z"
    # Without one of its own, the campaign's time zone is the workspace's.
    workspace = schedule.clean(Schedule(kind="at", at="2026-10-01T09:00"),
                               default_timezone="America/New_York")
    assert workspace.at == "2026-10-01T13:00:00.000Z" and workspace.timezone == ""
    offset = schedule.clean(Schedule(kind="at", at="2026-10-01T09:00+01:00"),
                            default_timezone="America/New_York")
    assert offset.at == "2026-10-01T08:00:00.000Z"


def test_windows_in_a_time_zone_including_overnight_ones() -> None:
    office = Window(days=[0, 1, 2, 3, 4], start="09:00", end="18:00")
    friday_evening = datetime(2026, 9, 25, 18, 0, tzinfo=BERLIN).timestamp()
    opens = pacing.window_open_at(office, BERLIN, friday_evening)
    assert datetime.fromtimestamp(opens, BERLIN) == datetime(2026, 9, 28, 9, 0, tzinfo=BERLIN)
    inside = datetime(2026, 9, 28, 12, 0, tzinfo=BERLIN).timestamp()
    assert pacing.window_open_at(office, BERLIN, inside) == inside
    night = Window(days=[5], start="22:00", end="02:00")  # Saturday night into Sunday
    sunday_one = datetime(2026, 9, 27, 1, 0, tzinfo=BERLIN).timestamp()
    assert pacing.in_window(night, BERLIN, sunday_one)
    sunday_three = datetime(2026, 9, 27, 3, 0, tzinfo=BERLIN).timestamp()
    assert datetime.fromtimestamp(pacing.window_open_at(night, BERLIN, sunday_three), BERLIN) \
        == datetime(2026, 10, 3, 22, 0, tzinfo=BERLIN)
    # The day clocks go back has 25 hours; midnight is still midnight.
    autumn = datetime(2026, 10, 25, 12, 0, tzinfo=BERLIN).timestamp()
    assert datetime.fromtimestamp(pacing.next_day_start(autumn, BERLIN), BERLIN) == \
        datetime(2026, 10, 26, 0, 0, tzinfo=BERLIN)


def test_warm_up_caps() -> None:
    ramp = Pacing(daily_cap=50, warmup_start=10, warmup_increase=15)
    assert [pacing.daily_cap(ramp, day) for day in range(5)] == [10, 25, 40, 50, 50]
    assert pacing.daily_cap(Pacing(daily_cap=7), 3) == 7
    assert pacing.daily_cap(Pacing(), 3) is None


async def test_jobs_follow_the_database(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.clock.now = time.time()  # APScheduler runs on the real clock
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.start()
    try:
        engine = rig.new_engine(scheduler=scheduler)
        await add_contacts(rig.store, rig.tenant_id, 3)
        template_id = await add_template(rig.store, rig.tenant_id)

        weekly = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                    now=rig.clock(), schedule=Schedule(
                                        kind="cron", cron="0 9 * * 1", timezone="Europe/Berlin"))
        await engine.start_campaign(ACTOR, rig.tenant_id, weekly.id)
        job = scheduler.get_job(f"campaign:{weekly.id}")
        assert job is not None
        assert job.next_run_time.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 09:00"
        stored = await rig.store.fetchval("SELECT next_run_at FROM campaigns WHERE id = ?",
                                          (weekly.id,))
        assert stored == iso(job.next_run_time.timestamp())
        await engine.cancel(ACTOR, rig.tenant_id, weekly.id)
        assert scheduler.get_job(f"campaign:{weekly.id}") is None
        assert engine.schedule.jobs() == []
    finally:
        scheduler.shutdown(wait=False)


async def test_each_recurring_run_reaches_only_contacts_new_to_it(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 5)
    template_id = await add_template(rig.store, rig.tenant_id)

    weekly = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                now=rig.clock(), schedule=Schedule(kind="cron",
                                                                   cron="0 9 * * *"))
    await rig.engine.start()
    started = await rig.engine.start_campaign(ACTOR, rig.tenant_id, weekly.id)
    assert started.status == "scheduled"
    await rig.engine._fire(weekly.id)  # what the job does at 09:00
    await rig.finished(weekly.id, "scheduled")
    await add_contacts(rig.store, rig.tenant_id, 3, start=100)
    await rig.engine._fire(weekly.id)
    await rig.finished(weekly.id, "scheduled")
    row = await rig.store.fetchone("SELECT runs, targeted, sent, next_run_at FROM campaigns "
                                   "WHERE id = ?", (weekly.id,))
    assert row is not None and (row[0], row[1], row[2]) == (2, 8, 8)
    assert parse_iso(row[3]) > rig.clock()
    assert len(rig.host.sends()) == 8
    assert len({s.to for s in rig.host.sends()}) == 8, "nobody twice"


async def test_a_scheduled_run_fails_cleanly_when_its_template_is_gone(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await add_contacts(rig.store, rig.tenant_id, 2)
    template_id = await add_template(rig.store, rig.tenant_id)

    later = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                               now=rig.clock(), schedule=Schedule(kind="at",
                                                                  at="2099-01-01T00:00:00Z"))
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, later.id)
    await rig.store.write(lambda conn: conn.execute("DELETE FROM message_templates"))
    await rig.engine._fire(later.id)
    row = await rig.store.fetchone("SELECT status, status_reason, targeted FROM campaigns "
                                   "WHERE id = ?", (later.id,))
    assert row is not None and row[0] == "failed" and "template" in row[1] and row[2] == 0


def test_jobs_are_rebuilt_when_the_server_starts_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first_run = build_campaign_env(data_dir)
    env = next(first_run)
    env.contacts(4, prefix="1888")
    now = time.time()
    missed = env.campaign(name="Due while down",
                          schedule={"kind": "at", "at": iso(now + 2)})
    coming = env.campaign(name="Due after the restart",
                          schedule={"kind": "at", "at": iso(now + 12)})
    for created in (missed, coming):
        assert env.act(created["id"], "start")["status"] == "scheduled"
    jobs = {job.id for job in env.services.scheduler.get_jobs()}  # type: ignore[union-attr]
    assert {f"campaign:{missed['id']}", f"campaign:{coming['id']}"} <= jobs
    previous = env
    first_run.close()  # the server stops before either is due
    time.sleep(max(0.0, now + 3 - time.time()))

    second_run = build_campaign_env(data_dir, previous)
    env = next(second_run)
    try:
        scheduler = env.services.scheduler
        assert scheduler is not None
        # Due while the server was down: started at once. Still to come: a job again.
        env.wait_campaign(missed["id"], "running", "completed", timeout=10)
        job = scheduler.get_job(f"campaign:{coming['id']}")
        assert job is not None
        assert abs(job.next_run_time.timestamp() - (now + 12)) < 1
        assert env.get(coming["id"])["status"] == "scheduled"
        done = env.wait_campaign(coming["id"], "completed", timeout=30)
        assert parse_iso(done["started_at"]) >= now + 12 - 0.01
        assert env.wait_campaign(missed["id"], "completed")["sent"] == done["sent"] > 0
        record = env.services.settings.data_dir / "sandbox-network.db"
        counts = sandbox_network.count_by_outbox(record)
        ids = {row[0] for row in env.fetch(
            "SELECT message_id FROM campaign_recipients WHERE message_id IS NOT NULL")}
        assert ids and all(counts.get(i) == 1 for i in ids)
    finally:
        second_run.close()
