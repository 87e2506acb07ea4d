"""Running campaigns: one runner task per running campaign, rebuilt from the database at start.

A runner repeatedly decides, per number of its campaign, whether the next recipient may be
queued now (pacing: gap, daily cap and warm-up, send window; at most one message of a paced
campaign in flight per number; for an unpaced one about ten seconds of what the number has
been sending, queued in batches). Queuing is ONE write: the recipients turn `sending`, their
outbox messages are inserted (rendered with the seed `<campaign>:<contact>`, so a retry
would read the same) and each message id is stored on its recipient. The delivery service
then sends the messages, paced per number, API sends first.

Outcomes are followed by polling: the runner reads the messages of its `sending` recipients
(one indexed join) when the bus says a message was sent or failed, and every second while it
has messages in flight; the messaging code needs no hook for campaigns. The messages table
is the truth, so the same step recovers after a crash: a recipient left `sending` takes its
message's outcome (still queued: still in flight) and is never queued a second time. Opt-out
is checked again inside the write that queues each recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from apscheduler.schedulers.base import BaseScheduler

from whatsdex.bus import BusEvent, EventBus
from whatsdex.campaigns import audience as audiences
from whatsdex.campaigns import pacing as pacings
from whatsdex.campaigns import service
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.campaigns.schedule import CampaignSchedule
from whatsdex.clock import Clock, iso, parse_iso
from whatsdex.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LimitReached,
    NotFound,
    WhatsdexError,
)
from whatsdex.identity.principal import Principal
from whatsdex.messaging.outbox import Outbox, SendRequest
from whatsdex.store import Store, plans, wa_sessions
from whatsdex.store import campaigns as rows
from whatsdex.store import messages as message_rows
from whatsdex.store.campaigns import Campaign
from whatsdex.tasks import BackgroundTasks
from whatsdex.templates import syntax

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Unpaced campaigns queue ahead of the delivery, but only about AHEAD_SECONDS of what each
# number has been sending: a pause, a cancel or a STOP reaches the rest within seconds, and a
# slow (paced, disconnected) number does not collect a long backlog.
AHEAD_SECONDS = 10.0
MIN_IN_FLIGHT = 10  # per number, before its sending rate is known
IN_FLIGHT = 500  # per number, at most
BATCH = 250  # recipients of one number queued per write at most
RATE_WINDOW = 10.0  # real seconds of finished sends the rate is measured over
POLL_SECONDS = 1.0  # real seconds between looks at messages in flight, besides bus events
SETTLE_SECONDS = 0.05  # after a wake with messages in flight, let more of them finish first
BLOCKED_SECONDS = 30.0  # a number that refused messages is tried again after this
PROGRESS_SECONDS = 0.5  # real seconds between live progress events of one campaign
ERROR_PAUSE = 5.0
RECIPIENT_FIELDS = ("to", "text")  # a 400 naming these is about one recipient, not the run


@dataclass(slots=True)
class _Number:
    anchor: str | None = None  # the moment the current gap counts from
    gap: float = 0.0
    blocked_until: float = 0.0
    blocked_reason: str = ""
    finished: deque[tuple[float, int]] = field(default_factory=deque)  # (loop time, sends)

    def window(self, now: float) -> int:
        """How many of this number's messages may be in flight: AHEAD_SECONDS of its rate."""
        while self.finished and self.finished[0][0] < now - RATE_WINDOW:
            self.finished.popleft()
        if not self.finished:
            return MIN_IN_FLIGHT
        done = sum(count for _, count in self.finished)
        rate = done / max(1.0, now - self.finished[0][0])
        return max(MIN_IN_FLIGHT, min(IN_FLIGHT, math.ceil(rate * AHEAD_SECONDS)))


@dataclass(eq=False)
class _Runner:
    campaign_id: str
    tenant_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    again: bool = False  # asked to run while it was finishing: go round once more
    flying: bool = False  # it has messages in flight (their outcomes are worth a wake)
    numbers: dict[str, _Number] = field(default_factory=dict)
    template: tuple[str, syntax.Template] | None = None
    reason: str = ""
    all_blocked_until: float = 0.0
    all_blocked_reason: str = ""
    progress_at: float = 0.0

    def number(self, session_id: str) -> _Number:
        return self.numbers.setdefault(session_id, _Number())


@dataclass(slots=True)
class _Queued:
    queued: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    problems: dict[str, WhatsdexError] = field(default_factory=dict)
    daily_limit: bool = False


@dataclass(slots=True)
class _Plan:
    ready: list[tuple[str, int]] = field(default_factory=list)  # (number, how many now)
    wake_at: float | None = None
    reasons: list[str] = field(default_factory=list)
    flights: bool = False


class CampaignEngine:
    def __init__(self, store: Store, outbox: Outbox, bus: EventBus, clock: Clock,
                 scheduler: BaseScheduler | None = None, *, sleep: Sleep = asyncio.sleep,
                 rng: Callable[[], float] = random.random) -> None:
        self.store = store
        self.outbox = outbox
        self.bus = bus
        self.clock = clock
        self._sleep = sleep  # pacing waits: tests move their own clock
        self._rng = rng
        self.schedule = CampaignSchedule(scheduler, self._fire_job, clock)
        self._runners: dict[str, _Runner] = {}
        self._pending_progress: set[str] = set()
        self._tasks = BackgroundTasks()
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild everything from the database: runners for running campaigns and for any
        with messages in flight, jobs for scheduled ones, and at once those already due."""
        now = self.clock()
        for campaign in await rows.with_status(self.store, ("scheduled", "running")):
            if campaign.status == "running":
                self._ensure(campaign)
                continue
            timezone = await self._timezone(campaign)
            if campaign.next_run_at is None or parse_iso(campaign.next_run_at) <= now:
                self._tasks.start(self._fire(campaign.id), name=f"campaign-fire-{campaign.id}")
            self.schedule.sync(campaign, campaign.id, timezone)
        for campaign_id in await rows.with_sending(self.store):
            if campaign_id not in self._runners:
                found = await rows.get_any(self.store, campaign_id)
                if found is not None:
                    self._ensure(found)

    async def stop(self) -> None:
        self._closing = True
        self.schedule.clear()
        await self._tasks.close()
        self._runners.clear()

    @property
    def running(self) -> list[str]:
        """Campaign ids with a live runner."""
        return [cid for cid, r in self._runners.items() if r.task and not r.task.done()]

    async def _timezone(self, campaign: Campaign) -> str:
        if campaign.timezone:
            return campaign.timezone
        value = await self.store.fetchval("SELECT timezone FROM tenants WHERE id = ?",
                                          (campaign.tenant_id,))
        return str(value or "UTC")

    # -- what people ask for ---------------------------------------------------------------

    async def start_campaign(self, actor: Principal, tenant_id: str, campaign_id: str,
                             ip: str = "") -> Campaign:
        changed = await service.start(self.store, actor, tenant_id, campaign_id,
                                      now=self.clock(), ip=ip)
        await self._after(changed)
        return changed.campaign

    async def pause(self, actor: Principal, tenant_id: str, campaign_id: str, ip: str = ""
                    ) -> Campaign:
        changed = await service.pause(self.store, actor, tenant_id, campaign_id,
                                      now=self.clock(), ip=ip)
        await self._after(changed)
        return changed.campaign

    async def resume(self, actor: Principal, tenant_id: str, campaign_id: str, ip: str = ""
                     ) -> Campaign:
        changed = await service.resume(self.store, actor, tenant_id, campaign_id,
                                       now=self.clock(), ip=ip)
        await self._after(changed)
        return changed.campaign

    async def cancel(self, actor: Principal, tenant_id: str, campaign_id: str, ip: str = ""
                     ) -> Campaign:
        changed = await service.cancel(self.store, actor, tenant_id, campaign_id,
                                       now=self.clock(), ip=ip)
        await self._after(changed)
        return changed.campaign

    async def _after(self, changed: service.Changed | None) -> None:
        """A committed state change: tell the dashboard, fix the job, wake or start runners."""
        if changed is None:
            return
        campaign = changed.campaign
        self._publish_status(campaign, changed.previous)
        self.schedule.sync(campaign, campaign.id, await self._timezone(campaign))
        runner = self._runners.get(campaign.id)
        if campaign.status == "running":
            self._ensure(campaign)
        elif runner is not None:
            runner.wake.set()

    # -- the scheduler's side ----------------------------------------------------------------

    async def _fire_job(self, campaign_id: str) -> None:
        """An APScheduler job: never raises into the scheduler."""
        try:
            await self._fire(campaign_id)
        except Exception:
            log.exception("campaign %s could not start on schedule", campaign_id)

    async def _fire(self, campaign_id: str) -> None:
        if self._closing:
            return
        await self._after(await service.fire(self.store, campaign_id, now=self.clock()))

    # -- runners -----------------------------------------------------------------------------

    def _ensure(self, campaign: Campaign) -> None:
        if self._closing:
            return
        runner = self._runners.get(campaign.id)
        if runner is not None and runner.task is not None and not runner.task.done():
            runner.again = True
            runner.wake.set()
            return
        runner = _Runner(campaign_id=campaign.id, tenant_id=campaign.tenant_id)
        self._runners[campaign.id] = runner
        runner.task = self._tasks.start(self._run(runner), name=f"campaign-{campaign.id}")

    async def _run(self, r: _Runner) -> None:
        listener = asyncio.ensure_future(self._listen(r))
        try:
            while not self._closing:
                try:
                    await self._loop(r)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("campaign %s: unexpected error; retrying shortly",
                                  r.campaign_id)
                    await asyncio.sleep(ERROR_PAUSE)
                    continue
                if not r.again:
                    return  # no await between this check and the runner being forgotten
                r.again = False
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if self._runners.get(r.campaign_id) is r:
                del self._runners[r.campaign_id]

    async def _listen(self, r: _Runner) -> None:
        """Sends finishing (while it has some in flight) and numbers changing state wake the
        runner; a number that connects is tried again at once."""
        async with self.bus.subscribe(r.tenant_id) as events:
            while True:
                event = await events.get()
                if event.type == "session.status":
                    if event.data.get("status") == "connected":
                        r.number(str(event.data.get("id", ""))).blocked_until = 0.0
                    r.wake.set()
                elif (event.type == "message.status" and r.flying
                      and event.data.get("status") in ("sent", "failed")):
                    r.wake.set()

    async def _loop(self, r: _Runner) -> None:
        """Until the campaign is done, or stopped with nothing of it left in flight."""
        while not self._closing:
            campaign = await rows.get_any(self.store, r.campaign_id)
            if campaign is None:
                return
            r.wake.clear()
            flying = await self._reconcile(r, campaign)
            r.flying = any(flying.values())
            if campaign.status != "running":
                if not any(flying.values()):
                    return  # paused or ended: the runner comes back if it resumes
                await self._wait(r, None, flights=True)
                continue
            open_counts = await rows.open_counts(self.store, r.campaign_id)
            if not open_counts:
                if await self._finish(r, campaign):
                    return
                await self._wait(r, None, flights=True)  # someone is still open after all
                continue
            pending = {s: n for (s, status), n in open_counts.items() if status == "pending"}
            pacing, window = self._pacing(campaign)
            plan = await self._plan(r, campaign, pacing, window, pending, flying)
            if plan.ready:
                if not await self._queue(r, campaign, plan.ready):
                    # Nothing was there to take (a read older than the write): look again
                    # after a moment rather than at once.
                    await self._wait(r, None, flights=True)
                continue
            await self._note(r, campaign, "; ".join(
                dict.fromkeys(why for why in plan.reasons if why != "sending")))
            await self._wait(r, plan.wake_at, flights=plan.flights)
            if plan.flights and not pacing.paced:
                # Let several sends finish before looking again: fewer, fuller writes.
                await asyncio.sleep(SETTLE_SECONDS)

    @staticmethod
    def _pacing(campaign: Campaign) -> tuple[Pacing, Window | None]:
        _, pacing, window = service.settings_of(campaign)
        return pacing, window

    async def _wait(self, r: _Runner, wake_at: float | None, *, flights: bool) -> None:
        """Until `wake_at` (on the campaign's clock), a wake (a send finished, a command), or
        for messages in flight a real-time poll interval, whichever comes first."""
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(r.wake.wait())]
        if wake_at is not None:
            waits.append(asyncio.ensure_future(self._sleep(max(0.0, wake_at - self.clock()))))
        if flights or wake_at is None:
            waits.append(asyncio.ensure_future(asyncio.sleep(POLL_SECONDS)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                if not waiting.done():
                    waiting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiting

    # -- following outcomes ------------------------------------------------------------------

    async def _reconcile(self, r: _Runner, campaign: Campaign) -> dict[str, int]:
        """`sending` recipients whose messages finished take their outcome; returns the
        messages still in flight per number."""
        flying, finished = await rows.in_flight(self.store, campaign.id)
        now = asyncio.get_running_loop().time()
        for session_id, count in finished.items():
            if count:
                r.number(session_id).finished.append((now, count))
        if any(finished.values()):
            stamp = iso(self.clock())

            def write(conn: sqlite3.Connection) -> tuple[int, int]:
                sent, failed = rows.reconcile(conn, campaign.id, stamp)
                rows.add_counts(conn, campaign.id, sent=sent, failed=failed, now=stamp)
                return sent, failed

            await self.store.write(write)
            self._publish_progress(r, campaign.id)
        return flying

    async def _finish(self, r: _Runner, campaign: Campaign) -> bool:
        stamp = iso(self.clock())
        timezone = await self._timezone(campaign)
        changed = await self.store.write(
            lambda conn: service.finish(conn, campaign, stamp, timezone))
        if changed is None:
            current = await rows.get_any(self.store, campaign.id)
            return current is None or current.status != "running"
        r.reason = ""
        await self._after(changed)
        return True

    # -- deciding when -----------------------------------------------------------------------

    async def _plan(self, r: _Runner, campaign: Campaign, pacing: Pacing,
                    window: Window | None, pending: dict[str, int], flying: dict[str, int]
                    ) -> _Plan:
        plan = _Plan()
        now = self.clock()
        tz = pacings.zone(await self._timezone(campaign))
        if r.all_blocked_until > now:
            plan.wake_at = r.all_blocked_until
            plan.reasons.append(r.all_blocked_reason)
            plan.flights = any(flying.values())
            return plan
        loop_now = asyncio.get_running_loop().time()
        for session_id, count in pending.items():
            n = r.number(session_id)
            in_flight = flying.get(session_id, 0)
            if in_flight:
                plan.flights = True
            if n.blocked_until > now:
                self._later(plan, n.blocked_until, n.blocked_reason)
                continue
            limit = 1 if pacing.paced else n.window(loop_now)
            # Unpaced: top up once half the window is done, not after every single send.
            if in_flight >= limit or (not pacing.paced and in_flight > limit // 2):
                plan.reasons.append("sending")
                continue
            room = min(BATCH, limit - in_flight)
            at = now
            if pacing.paced:
                at = max(at, await self._gap_end(r, campaign, session_id, pacing))
            at, room, why = await self._limits(session_id, pacing, window, tz, at, room)
            room = min(room, count)
            if at <= now and room > 0:
                plan.ready.append((session_id, room))
            else:
                self._later(plan, at, why)
        return plan

    @staticmethod
    def _later(plan: _Plan, at: float, why: str) -> None:
        plan.wake_at = at if plan.wake_at is None else min(plan.wake_at, at)
        if why:
            plan.reasons.append(why)

    async def _gap_end(self, r: _Runner, campaign: Campaign, session_id: str, pacing: Pacing
                       ) -> float:
        """When the random gap after the number's previous message of this campaign ends:
        counted from when that message left the outbox (or was queued, if later)."""
        queued_at, done_at = await rows.last_of_number(self.store, campaign.id, session_id)
        anchors = [moment for moment in (queued_at, done_at) if moment]
        if not anchors:
            return 0.0
        anchor = max(anchors)
        n = r.number(session_id)
        if n.anchor != anchor:  # a new gap per message, kept until it is used
            n.anchor, n.gap = anchor, pacings.random_gap(pacing, self._rng)
        return parse_iso(anchor) + n.gap

    async def _limits(self, session_id: str, pacing: Pacing, window: Window | None,
                      tz: ZoneInfo, at: float, room: int) -> tuple[float, int, str]:
        """The send window and the number's daily cap: the earliest moment from `at` that
        both allow, how many may go then, and why it waits (or '')."""
        why = ""
        first: str | None = None
        if pacing.warmup_start:
            first = await rows.first_queued(self.store, session_id)
        for _ in range(400):  # bounded: each round moves to a later window or day
            opened = pacings.window_open_at(window, tz, at)
            if opened > at:
                at = opened
                why = f"outside the send window: it opens {pacings.local_text(at, tz)}"
            cap = pacings.daily_cap(pacing, pacings.day_index(
                parse_iso(first) if first else None, at, tz))
            if cap is None:
                return at, room, why
            used = await rows.queued_since(self.store, session_id,
                                           iso(pacings.day_start(at, tz)))
            if used < cap:
                return at, min(room, cap - used), why
            at = pacings.next_day_start(at, tz)
            why = (f"this number sent its daily cap of {cap} campaign messages; it goes on "
                   f"{pacings.local_text(at, tz)}")
        return at, 0, why

    async def _note(self, r: _Runner, campaign: Campaign, reason: str) -> None:
        """Say on the campaign why it waits (only when that changes)."""
        if reason == r.reason and reason == campaign.status_reason:
            return
        r.reason = reason
        stamp = iso(self.clock())
        await self.store.write(lambda conn: rows.set_reason(
            conn, campaign.tenant_id, campaign.id, reason, stamp))
        self._publish_progress(r, campaign.id, force=True)

    # -- queuing -------------------------------------------------------------------------------

    def _template(self, r: _Runner, campaign: Campaign) -> syntax.Template:
        body = str(campaign.message.get("body") or "")
        if r.template is None or r.template[0] != body:
            r.template = (body, syntax.parse(body))
        return r.template[1]

    async def _queue(self, r: _Runner, campaign: Campaign, ready: list[tuple[str, int]]
                     ) -> bool:
        """Queue the recipients the plan made ready; False when nothing changed."""
        template = self._template(r, campaign)
        if template.problems:
            await self._fail(campaign, f"its template has problems: {template.problems[0].problem}")
            return True
        now = self.clock()
        result = await self.store.write(
            lambda conn: self._queue_write(conn, campaign, template, ready, now))
        for session_id, count in result.queued.items():
            if count and self.outbox.on_queued is not None:
                self.outbox.on_queued(campaign.tenant_id, session_id)
        if result.queued or result.skipped:
            r.reason = ""
            self._publish_progress(r, campaign.id)
        if result.daily_limit:
            self._block_all(r, now, "the plan's daily message limit is reached; sending goes "
                                    "on after 00:00 UTC")
        for session_id, problem in result.problems.items():
            await self._problem(r, campaign, session_id, problem, now)
        return bool(any(result.queued.values()) or result.skipped or result.problems
                    or result.daily_limit)

    def _queue_write(self, conn: sqlite3.Connection, campaign: Campaign,
                     template: syntax.Template, ready: list[tuple[str, int]], now: float
                     ) -> _Queued:
        """One transaction: recipients become `sending` with their queued messages (or
        `skipped`, opted out since the run started), per number all or nothing."""
        result = _Queued()
        stamp = iso(now)
        tenant_id = campaign.tenant_id
        # The runner read "running" a moment ago; a pause or cancel may have committed since.
        if rows.status_of(conn, campaign.id) != "running":
            return result
        plan = plans.tenant_plan(conn, tenant_id)
        if plan is None:
            return result
        left = plan.max_messages_per_day - message_rows.accepted_on(conn, tenant_id, stamp[:10])
        message = campaign.message
        kind = str(message.get("media_kind") or "") or "text"
        hints = {"typing_seconds": campaign.typing_seconds} if campaign.typing_seconds else None
        for session_id, room in ready:
            take = min(room, left)
            if take <= 0:
                result.daily_limit = True
                break
            dues = rows.next_pending(conn, tenant_id, campaign.id, session_id, take)
            queued: list[tuple[str, str, str]] = []
            skipped: list[tuple[str, str]] = []
            conn.execute("SAVEPOINT number")
            try:
                for due in dues:
                    if not due.contact:
                        skipped.append((due.contact_id, service.CONTACT_GONE))
                        continue
                    if due.opted_out:
                        skipped.append((due.contact_id, service.OPTED_OUT))
                        continue
                    fields = syntax.contact_fields(due.name, due.phone, due.custom,
                                                   due.push_name)
                    text = syntax.render(template, fields,
                                         seed=f"{campaign.id}:{due.contact_id}")
                    request = SendRequest(
                        session_id=session_id, to=audiences.send_to(due.address), type=kind,
                        text=text, media_id=str(message.get("media_id") or ""),
                        filename=str(message.get("filename") or "") if kind != "text" else "")
                    try:
                        sent = self.outbox.queue_in(conn, tenant_id, request, source="campaign",
                                                    now=now, hints=hints)
                    except BadRequest as exc:
                        if not (isinstance(exc.detail, dict)
                                and exc.detail.get("field") in RECIPIENT_FIELDS):
                            raise
                        skipped.append((due.contact_id, exc.message))
                        continue
                    queued.append((due.contact_id, sent.id,
                                   hashlib.sha256(text.encode()).hexdigest()))
                rows.mark_queued(conn, campaign.id, queued, stamp)
                rows.mark_skipped(conn, campaign.id, skipped, stamp)
                rows.add_counts(conn, campaign.id, skipped=len(skipped), now=stamp)
            except WhatsdexError as exc:
                conn.execute("ROLLBACK TO number")
                conn.execute("RELEASE number")
                result.problems[session_id] = exc
                continue
            conn.execute("RELEASE number")
            left -= len(queued)
            result.queued[session_id] = len(queued)
            result.skipped += len(skipped)
        return result

    def _block_all(self, r: _Runner, now: float, reason: str) -> None:
        r.all_blocked_until = pacings.utc_midnight_after(now)
        r.all_blocked_reason = reason

    async def _problem(self, r: _Runner, campaign: Campaign, session_id: str,
                       problem: WhatsdexError, now: float) -> None:
        """A number's batch was refused as a whole: wait, move its recipients, or give up."""
        n = r.number(session_id)
        if isinstance(problem, LimitReached):
            self._block_all(r, now, problem.message)
        elif isinstance(problem, NotFound) and isinstance(problem.detail, dict) \
                and problem.detail.get("field") == "session_id":
            await self._number_gone(campaign, session_id)
        elif isinstance(problem, Conflict | Forbidden):
            n.blocked_until = now + BLOCKED_SECONDS
            n.blocked_reason = problem.message
        else:
            await self._fail(campaign, problem.message)

    async def _number_gone(self, campaign: Campaign, gone: str) -> None:
        """A deleted number's recipients go to the campaign's other numbers."""
        stamp = iso(self.clock())

        def write(conn: sqlite3.Connection) -> service.Changed | None:
            current = rows.get_sync(conn, campaign.tenant_id, campaign.id)
            if current is None:
                return None
            others = [s for s in current.session_ids if s != gone
                      and wa_sessions.get_sync(conn, campaign.tenant_id, s) is not None]
            if not others:
                return service.fail(conn, current, "none of its numbers exists any more",
                                    stamp)
            moved = rows.reassign(conn, campaign.id, gone, others, stamp)
            log.info("campaign %s: %d recipients of deleted number %s moved to %s",
                     campaign.id, moved, gone, ", ".join(others))
            return None

        await self._after(await self.store.write(write))

    async def _fail(self, campaign: Campaign, reason: str) -> None:
        stamp = iso(self.clock())
        log.warning("campaign %s failed: %s", campaign.id, reason)
        await self._after(await self.store.write(
            lambda conn: service.fail(conn, campaign, reason, stamp)))

    # -- live updates --------------------------------------------------------------------------

    def _publish_status(self, campaign: Campaign, previous: str) -> None:
        self.bus.publish(BusEvent(campaign.tenant_id, "campaign.status", {
            "id": campaign.id, "status": campaign.status, "previous": previous,
            "reason": campaign.status_reason}))

    def _publish_progress(self, r: _Runner, campaign_id: str, *, force: bool = False) -> None:
        """At most every PROGRESS_SECONDS per campaign: a live page re-reads the counters."""
        loop_now = asyncio.get_running_loop().time()
        if not force and loop_now - r.progress_at < PROGRESS_SECONDS:
            self._tasks_later(r, campaign_id, PROGRESS_SECONDS - (loop_now - r.progress_at))
            return
        r.progress_at = loop_now
        self.bus.publish(BusEvent(r.tenant_id, "campaign.progress", {"id": campaign_id}))

    def _tasks_later(self, r: _Runner, campaign_id: str, delay: float) -> None:
        """The last change of a burst is announced too, once the interval has passed."""
        key = f"progress-{campaign_id}"
        if key in self._pending_progress:
            return
        self._pending_progress.add(key)

        def publish() -> None:
            self._pending_progress.discard(key)
            r.progress_at = asyncio.get_running_loop().time()
            self.bus.publish(BusEvent(r.tenant_id, "campaign.progress", {"id": campaign_id}))

        asyncio.get_running_loop().call_later(max(0.0, delay), publish)
