"""Delivering queued messages: one paced worker per number, exactly once across crashes.

A number's worker starts when it has something to send and stops when its queue is empty. It
takes the most urgent message (API and inbox before campaigns, then oldest), waits out the
pacing gap, commits the `sending` mark, then hands the message to the number's engine host with
the message id as `outbox_id`. A crash between the mark and the answer leaves the row in
`sending`; the next start sends it again with the same outbox id, which the network recognises
as the same message, so the contact never sees it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import Clock, iso, parse_iso
from whatsdex.errors import NotFound
from whatsdex.messaging import event_data
from whatsdex.sessions import protocol
from whatsdex.sessions.hosts import HostGone
from whatsdex.sessions.supervisor import Supervisor
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import media as media_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.messages import Due, Message
from whatsdex.tasks import BackgroundTasks
from whatsdex.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

# Seconds before the next try after the n-th failed attempt; one more failure after the last
# of these and the message fails for good.
BACKOFF = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
MAX_ATTEMPTS = len(BACKOFF) + 1
SEND_TIMEOUT = 180.0  # a large video is uploaded inside the send
CONNECT_POLL = 5.0  # seconds between looks at a disconnected number (besides its events)
EXPLAIN_EVERY = 60.0  # seconds between rewrites of the same waiting reason (new rows get it)
NOT_YET_DELAY = 5.0  # a reply whose quoted message is still queued waits this long
ERROR_PAUSE = 5.0  # after an unexpected error (the database closing, a bug) before going on

Sleep = Callable[[float], Awaitable[None]]


class _Permanent(Exception):
    """The message can never be sent as it is."""


class _NotYet(Exception):
    """The message depends on another one that is not sent yet."""


@dataclass(eq=False)
class _Worker:
    tenant_id: str
    session_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    next_send_at: float | None = None  # pacing: the earliest clock() for the next send
    day: str = ""
    sent_today: int = 0
    explained: str = ""  # the reason last written on the waiting rows
    explained_at: float = 0.0


class DeliveryService:
    def __init__(
        self, store: Store, supervisor: Supervisor, bus: EventBus, settings: Settings,
        clock: Clock, *, sleep: Sleep = asyncio.sleep, rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.supervisor = supervisor
        self.bus = bus
        self.settings = settings
        self.clock = clock
        self._sleep = sleep  # pacing and backoff waits (tests control time)
        self._rng = rng
        self._workers: dict[str, _Worker] = {}
        self._tasks = BackgroundTasks()
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every number with queued messages, `sending` ones (a crash) included."""
        for tenant_id, session_id in await message_rows.sessions_with_queue(self.store):
            self.wake(tenant_id, session_id)

    async def stop(self) -> None:
        self._closing = True
        await self._tasks.close()
        self._workers.clear()

    def wake(self, tenant_id: str, session_id: str) -> None:
        """Something was queued for this number: start its worker, or nudge it."""
        if self._closing:
            return
        worker = self._workers.get(session_id)
        if worker is not None:
            worker.wake.set()
            return
        worker = _Worker(tenant_id=tenant_id, session_id=session_id)
        self._workers[session_id] = worker
        worker.task = self._tasks.start(self._run(worker), name=f"delivery-{session_id}")

    @property
    def active(self) -> int:
        """Numbers with a running worker."""
        return len(self._workers)

    # -- one number's worker -----------------------------------------------------------------

    async def _run(self, w: _Worker) -> None:
        try:
            while not self._closing:
                try:
                    if not await self._step(w):
                        return  # idle: `finally` forgets the worker before anyone can wake it
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("delivery for %s: unexpected error; retrying shortly",
                                  w.session_id)
                    await asyncio.sleep(ERROR_PAUSE)
        finally:
            if self._workers.get(w.session_id) is w:
                del self._workers[w.session_id]

    async def _step(self, w: _Worker) -> bool:
        """Send (or wait for) the number's next message; False when there is nothing left."""
        # The gap comes first, so a message queued during it (an API send overtaking a
        # campaign) is the one taken next.
        await self._pace(w)
        w.wake.clear()
        now = self.clock()
        due, later = await message_rows.next_due(self.store, w.tenant_id, w.session_id,
                                                 iso(now))
        if due is None:
            if later is None:
                return w.wake.is_set()
            await self._wait(w, parse_iso(later) - now)
            return True
        status = self._status(w)
        if status is None:
            return False  # the number is gone (its messages went with it)
        if status != "connected":
            await self._wait_connected(w, status)
        elif not await self._capped(w, now):
            if w.explained:
                await self._unexplain(w)
            typing = float((due.message.payload.get("hints") or {}).get("typing_seconds", 0))
            if typing > 0 and due.message.attempts == 0:
                # A human-like pause before the message (a campaign's setting). The engine
                # protocol has no "typing…" presence yet, so the contact sees only the pause.
                await self._sleep(typing)
            await self._attempt(w, due)
        return True

    def _status(self, w: _Worker) -> str | None:
        live = self.supervisor.live.get(w.session_id)
        return None if live is None or live.tenant_id != w.tenant_id else live.status

    async def _wait(self, w: _Worker, seconds: float) -> None:
        """Sleep up to `seconds`, cut short when something new is queued."""
        if seconds <= 0:
            return
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(w.wake.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (sleeper, waker):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pending

    async def _explain(self, w: _Worker, reason: str) -> None:
        """Write why the number's messages wait, on each of them (once per change or minute)."""
        now = self.clock()
        if reason == w.explained and now - w.explained_at < EXPLAIN_EVERY:
            return
        w.explained, w.explained_at = reason, now
        await self.store.write(lambda conn: message_rows.explain_queue(
            conn, w.tenant_id, w.session_id, reason))

    async def _unexplain(self, w: _Worker) -> None:
        reason, w.explained = w.explained, ""
        await self.store.write(lambda conn: message_rows.clear_reason(
            conn, w.tenant_id, w.session_id, reason))

    async def _wait_connected(self, w: _Worker, status: str) -> None:
        """Until the number says it is connected (its bus event), checking now and then."""
        await self._explain(w, f"waiting for the number to connect (it is {status})")
        async with self.bus.subscribe(w.tenant_id) as events:
            while not self._closing:
                current = self._status(w)
                if current is None or current == "connected":
                    return
                try:
                    event = await asyncio.wait_for(events.get(), CONNECT_POLL)
                except TimeoutError:
                    continue
                if (event.type == "session.status" and event.data.get("id") == w.session_id
                        and event.data.get("status") == "connected"):
                    return

    async def _capped(self, w: _Worker, now: float) -> bool:
        """At the number's daily cap, wait for the next UTC day (messages stay queued)."""
        day = iso(now)[:10]
        if w.day != day:
            w.day = day
            w.sent_today = await message_rows.sent_on(self.store, w.tenant_id, w.session_id,
                                                      day)
        cap = self.settings.number_daily_cap
        if w.sent_today < cap:
            return False
        await self._explain(
            w, f"this number sent its daily cap of {cap} messages; the rest wait until "
               "00:00 UTC")
        await self._wait(w, _until_midnight(now))
        return True

    async def _pace(self, w: _Worker) -> None:
        """Wait out the gap after the number's last send."""
        if w.next_send_at is not None:
            wait = w.next_send_at - self.clock()
            if wait > 0:
                await self._sleep(wait)

    def _sent_now(self, w: _Worker) -> None:
        """An engine call just ended: the next may start after a minimum gap plus jitter."""
        gap = self.settings.send_min_gap_seconds
        jitter = self.settings.send_jitter_seconds
        if jitter > 0:
            gap += self._rng() * jitter
        w.next_send_at = self.clock() + gap if gap > 0 else None

    # -- one message -------------------------------------------------------------------------

    async def _attempt(self, w: _Worker, due: Due) -> None:
        message = due.message
        try:
            command = await self._command(w, due)
        except _Permanent as exc:
            await self._fail(w, message, str(exc))
            return
        except _NotYet as exc:
            retry_at, why = iso(self.clock() + NOT_YET_DELAY), str(exc)
            await self.store.write(lambda conn: message_rows.requeue(
                conn, w.tenant_id, message.id, reason=why, next_attempt_at=retry_at))
            return
        attempts = await self.store.write(
            lambda conn: message_rows.mark_sending(conn, w.tenant_id, message.id))
        if attempts is None:
            return  # no longer sendable (deleted meanwhile)
        try:
            host = self.supervisor.host_for(w.tenant_id, w.session_id)
        except NotFound:
            return
        if host is None:
            await self._requeue(w, message, "waiting for the number's engine host",
                                refund=True)
            return
        try:
            reply = await host.call(command, timeout=SEND_TIMEOUT)
        except (HostGone, TimeoutError) as exc:
            # The engine may or may not have sent it: the retry carries the same outbox id, so
            # the network shows it once either way.
            reason = ("no answer from the engine in time" if isinstance(exc, TimeoutError)
                      else "the engine host stopped during the send")
            await self._retry_later(w, message, attempts, f"{reason}; retrying")
            return
        finally:
            self._sent_now(w)
        if reply.ok:
            await self._sent(w, due, reply.result)
        elif not reply.retryable:
            await self._fail(w, message, reply.error or "the engine refused the message")
        elif self._status(w) != "connected":
            # Lost the connection under us: not the message's fault, the attempt is given back.
            await self._requeue(w, message, f"not sent, the number disconnected: {reply.error}",
                                refund=True)
        else:
            await self._retry_later(w, message, attempts, reply.error or "send failed")

    async def _command(self, w: _Worker, due: Due) -> protocol.Send:
        """The engine command for a message, quoted or reacted-to messages resolved to the
        WhatsApp ids they got when they were sent."""
        message = due.message
        kind = message.kind
        fields: dict[str, Any] = {}
        if message.quoted_id:
            wa_id, sender, _ = await self._target(w, message.quoted_id, due.session_jid,
                                                  "quoted")
            fields.update(quoted_id=wa_id, quoted_sender=sender)
        if kind == "reaction":
            reaction = message.payload.get("reaction") or {}
            wa_id, sender, from_me = await self._target(w, str(reaction.get("message_id", "")),
                                                        due.session_jid, "reacted-to")
            fields.update(reaction_to=wa_id, reaction_from_me=from_me, quoted_sender=sender,
                          text=str(reaction.get("emoji", "")))
        elif kind == "location":
            location = message.payload.get("location") or {}
            fields.update(latitude=location.get("latitude"), longitude=location.get("longitude"),
                          location_name=str(location.get("name") or ""))
        elif kind in ("image", "video", "audio", "document"):
            meta = message.payload.get("media") or {}
            data = await media_rows.data(self.store, w.tenant_id, str(meta.get("media_id", "")))
            if data is None:
                raise _Permanent("its media is no longer kept")
            fields["media"] = protocol.MediaPayload(
                data=data, mimetype=str(meta.get("mimetype", "")),
                filename=str(meta.get("filename", "")), caption=message.text,
                voice_note=bool(meta.get("voice_note", False)))
        else:
            fields["text"] = message.text
        return protocol.Send(req=0, session=w.session_id, outbox_id=message.id, to=due.chat_jid,
                             kind=kind,  # type: ignore[arg-type]
                             **fields)

    async def _target(self, w: _Worker, message_id: str, session_jid: str, what: str
                      ) -> tuple[str, str, bool]:
        """(WhatsApp id, its sender's JID, sent by us) of a message pointed at."""
        row = await message_rows.target_for_send_async(self.store, w.tenant_id, message_id)
        if row is None:
            raise _Permanent(f"the {what} message no longer exists")
        if not row["wa_id"]:
            if row["status"] in ("queued", "sending"):
                raise _NotYet(f"waiting for the {what} message to be sent first")
            raise _Permanent(f"the {what} message was never sent")
        from_me = row["direction"] == "out"
        return str(row["wa_id"]), session_jid if from_me else str(row["sender_jid"]), from_me

    async def _sent(self, w: _Worker, due: Due, result: dict[str, Any]) -> None:
        message = due.message
        stamp = iso(self.clock())
        wa_id = str(result.get("wa_id") or "")
        timestamp_ms = result.get("timestamp_ms")
        wa_timestamp = iso(timestamp_ms / 1000) if isinstance(timestamp_ms, int) else stamp
        sent = msgspec.structs.replace(
            message, status="sent", wa_id=wa_id, sender_jid=due.session_jid, sent_at=stamp,
            wa_timestamp=wa_timestamp, status_reason="", next_attempt_at=None)
        data = event_data(sent, chat_jid=due.chat_jid, session_jid=due.session_jid)

        def write(conn: sqlite3.Connection) -> bool:
            if not message_rows.mark_sent(conn, w.tenant_id, message.id,
                                          session_id=w.session_id, wa_id=wa_id,
                                          sender_jid=due.session_jid, sent_at=stamp,
                                          wa_timestamp=wa_timestamp):
                return False
            message_rows.count_sent(conn, w.tenant_id, w.session_id, stamp[:10])
            webhook_outbox.enqueue(conn, w.tenant_id, "message.sent", data, now=stamp)
            return True

        if await self.store.write(write):
            if w.day == stamp[:10]:
                w.sent_today += 1
            self.bus.publish(BusEvent(w.tenant_id, "message.status", {
                "id": message.id, "session_id": w.session_id, "chat_id": message.chat_id,
                "status": "sent", "wa_id": wa_id, "at": stamp}))

    async def _retry_later(self, w: _Worker, message: Message, attempts: int, reason: str
                           ) -> None:
        if attempts >= MAX_ATTEMPTS:
            await self._fail(w, message, f"{reason} (gave up after {attempts} attempts)")
            return
        delay = BACKOFF[min(attempts, len(BACKOFF)) - 1]
        retry_at = iso(self.clock() + delay)
        await self.store.write(lambda conn: message_rows.requeue(
            conn, w.tenant_id, message.id, reason=f"{reason}; attempt {attempts} of "
            f"{MAX_ATTEMPTS}, next at {retry_at}", next_attempt_at=retry_at))

    async def _requeue(self, w: _Worker, message: Message, reason: str, *, refund: bool) -> None:
        await self.store.write(lambda conn: message_rows.requeue(
            conn, w.tenant_id, message.id, reason=reason, next_attempt_at=None,
            refund_attempt=refund))

    async def _fail(self, w: _Worker, message: Message, reason: str) -> None:
        stamp = iso(self.clock())
        data = {"id": message.id, "session_id": w.session_id, "chat_id": message.chat_id,
                "status": "failed", "previous": message.status, "reason": reason, "at": stamp}

        def write(conn: sqlite3.Connection) -> bool:
            if not message_rows.mark_failed(conn, w.tenant_id, message.id, reason=reason,
                                            at=stamp):
                return False
            webhook_outbox.enqueue(conn, w.tenant_id, "message.status", data, now=stamp)
            return True

        if await self.store.write(write):
            log.info("message %s failed: %s", message.id, reason)
            self.bus.publish(BusEvent(w.tenant_id, "message.status", data))


def _until_midnight(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(0.001, (midnight - moment).total_seconds())
