"""The delivery worker: reads the webhook outbox and POSTs each event, signed, in order.

Per endpoint, only the oldest pending delivery is ever attempted: the next event waits until
it is delivered or given up, so a receiver sees a webhook's events in the order they happened
(retries included). Different endpoints are served in parallel, at most `max_concurrency` at a
time. New rows are found by a cheap poll (one indexed lookup every `poll_interval`) or at once
when someone calls `wake()` after committing them.

Retries: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h after the failed attempts, then the delivery
is `failed` (8 attempts in about 28 hours). A `Retry-After` (seconds or an HTTP date) may only
slow this down: the wait is the longer of the schedule and the receiver's request, capped at
24 hours, so a receiver can ask for room but never make us retry faster than planned.

An endpoint is disabled at once when it answers 410 Gone, and automatically when every attempt
has failed for 5 days (counted from the first failure of the run, with at least 10 failed
attempts): an audit row, the reason on the webhook, and a `webhook.disabled` bus event. Its
pending deliveries wait, in order, and resume when it is enabled again.

Delivery is at-least-once: a crash during an attempt repeats it after the restart, with the
same `webhook-id`, which receivers use to drop duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC

import httpx

from whatsdex import __version__
from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import Clock, iso, parse_iso
from whatsdex.crypto.aead import DecryptionError
from whatsdex.crypto.keyring import Keyring
from whatsdex.identity import audit
from whatsdex.identity.principal import SYSTEM
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import webhooks as rows
from whatsdex.webhooks.manage import redact_url
from whatsdex.webhooks.signing import signature_header
from whatsdex.webhooks.ssrf import BlockedAddress, GuardedTransport, Resolver, resolve

log = logging.getLogger(__name__)

# Seconds to wait after failed attempt 1, 2, ... 7; attempt 8 is the last.
SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_ATTEMPTS = len(SCHEDULE) + 1
MAX_RETRY_AFTER = 86_400
DISABLE_AFTER = 5 * 86_400
DISABLE_MIN_FAILURES = 10
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 15.0
EXCERPT = 1024
RETENTION = 30 * 86_400  # delivered and failed rows are kept this long for the log and replays
PURGE_EVERY = 3600.0
PURGE_BATCH = 1000
TURN = 100  # deliveries one endpoint sends in a row before the queue is looked at again
USER_AGENT = f"WhatsDeX-Webhooks/{__version__}"
GONE_REASON = "The endpoint answered 410 Gone: it asked for no more events"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt gave: an HTTP status (None when no answer came) and excerpts."""

    status: int | None
    error: str
    request: str
    response: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds until the attempt after `attempt` (1-based), honouring Retry-After as above."""
    scheduled = float(SCHEDULE[attempt - 1])
    if retry_after is None:
        return scheduled
    return min(max(scheduled, retry_after), float(MAX_RETRY_AFTER))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def _clip(text: str) -> str:
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def request_excerpt(url: str, headers: dict[str, str], body: bytes) -> str:
    lines = [f"POST {redact_url(url)}", *(f"{k}: {v}" for k, v in headers.items()), ""]
    return _clip("\n".join(lines) + "\n" + body[:EXCERPT].decode("utf-8", "replace"))


def response_excerpt(response: httpx.Response, body: bytes) -> str:
    lines = [f"HTTP {response.status_code} {response.reason_phrase}".rstrip(),
             *(f"{k}: {v}" for k, v in response.headers.items()), ""]
    return _clip("\n".join(lines) + "\n" + body.decode("utf-8", "replace"))


class WebhookDispatcher:
    """Started and stopped with the services; `wake()` after committing new deliveries."""

    def __init__(self, store: Store, keyring: Keyring, settings: Settings, clock: Clock,
                 bus: EventBus, *, max_concurrency: int = 8, poll_interval: float = 0.5,
                 resolver: Resolver = resolve) -> None:
        self._store = store
        self._keyring = keyring
        self._settings = settings
        self._clock = clock
        self._bus = bus
        self._max = max_concurrency
        self._poll_interval = poll_interval
        self._resolver = resolver
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # webhook id -> its one turn
        self._finishes = 0  # turns finished so far, and when each webhook's last one did
        self._last_finish: dict[str, int] = {}
        self._loop: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._last_purge = 0.0
        self._stopping = False
        self.attempts = 0  # attempts made since start (metrics, tests)

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._loop.done()

    async def start(self) -> None:
        if self._client is None:
            transport = GuardedTransport(allow_private=self._settings.allow_private_webhooks,
                                         resolver=self._resolver)
            self._client = httpx.AsyncClient(
                transport=transport, follow_redirects=False, trust_env=False,
                timeout=httpx.Timeout(TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT),
                headers={"user-agent": USER_AGENT})
        if not self.running:
            self._stopping = False
            self._loop = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop polling, let attempts in flight finish (bounded), close the connections.

        An attempt cut short stays pending with its attempt count unchanged: after the
        restart it is made again with the same webhook-id.
        """
        self._stopping = True  # endpoints finish the attempt they are making, no more
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        tasks = list(self._in_flight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look for due deliveries now instead of at the next poll."""
        self._wake.set()

    async def run_due(self) -> int:
        """Attempt everything that is due now, until nothing due is left and nothing is in
        flight (the order rule still holds). Returns how many attempts were started; raises
        what a delivery task raised."""
        started = 0
        while True:
            started += await self._start_due()
            if not self._in_flight:
                # A head skipped as possibly stale (its turn just ended) is looked at again;
                # the background loop may also have started it meanwhile.
                started += await self._start_due()
                if not self._in_flight:
                    return started
            done, _ = await asyncio.wait(list(self._in_flight.values()))
            await asyncio.sleep(0)  # let the finished tasks' callbacks run
            for task in done:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._start_due()
                await self._purge_if_due()
            except Exception:
                log.exception("webhook dispatcher cycle failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _start_due(self) -> int:
        if self._client is None:
            raise RuntimeError("the webhook dispatcher is not started")
        free = self._max - len(self._in_flight)
        if free <= 0:
            return 0
        now = iso(self._clock())
        if not await rows.any_due(self._store, now):
            return 0
        # A webhook whose turn ends while we read may have changed its rows after our read saw
        # them (stale): skip it now; its task wakes us, and the next read sees what it wrote.
        mark = self._finishes
        heads = await rows.due_heads(self._store, now, free + len(self._in_flight))
        started = 0
        for head in heads:
            if len(self._in_flight) >= self._max:
                break
            if (head.webhook_id in self._in_flight
                    or self._last_finish.get(head.webhook_id, 0) > mark):
                continue
            task = asyncio.create_task(self._work(head), name=f"webhook {head.webhook_id}")
            self._in_flight[head.webhook_id] = task
            task.add_done_callback(functools.partial(self._finished, head.webhook_id))
            started += 1
        return started

    def _finished(self, webhook_id: str, task: asyncio.Task[None]) -> None:
        if self._in_flight.get(webhook_id) is task:
            del self._in_flight[webhook_id]
        self._finishes += 1
        self._last_finish[webhook_id] = self._finishes
        if task.cancelled():
            return
        if task.exception() is not None:
            # The row stays as it was: the next poll tries again (no wake, so no busy loop).
            log.error("webhook delivery to %s failed", webhook_id, exc_info=task.exception())
            return
        self._wake.set()  # this webhook's next delivery may go now

    async def _purge_if_due(self) -> None:
        now = self._clock()
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        cutoff = iso(now - RETENTION)
        for _ in range(50):  # bounded per cycle; the writer stays free for everyone else
            deleted = await self._store.write(
                lambda conn: rows.purge_finished(conn, cutoff, PURGE_BATCH))
            if deleted < PURGE_BATCH:
                return

    # -- one endpoint's turn ----------------------------------------------------------------

    async def _work(self, head: rows.DueDelivery) -> None:
        """Deliver this webhook's due events one after the other (up to `TURN` of them, then
        the others get a look): no round trip through the whole queue between two."""
        for _ in range(TURN):
            await self._deliver(head)
            if self._stopping:
                return
            following = await rows.next_due(self._store, head.webhook_id, iso(self._clock()))
            if following is None:
                return
            head = following

    async def _deliver(self, head: rows.DueDelivery) -> None:
        target = await rows.target(self._store, head.webhook_id)
        if target is None or not target.enabled:
            return
        attempt = head.attempts + 1
        started = self._clock()
        self.attempts += 1
        try:
            secrets = await self._secrets(target, started)
        except DecryptionError:
            outcome = Outcome(None, "The signing secret cannot be opened with this server's key",
                              "")
        else:
            outcome = await self._send(target.url, head, secrets, started)
        finished = self._clock()
        disabled = await self._store.write(
            lambda conn: self._record(conn, head, target, attempt, outcome, finished))
        if disabled:
            self._bus.publish(BusEvent(target.tenant_id, "webhook.disabled", {
                "webhook_id": target.id, "url": redact_url(target.url), "reason": disabled}))

    async def _secrets(self, target: rows.DeliveryTarget, now: float) -> list[str]:
        """The current secret, and the previous one while its rotation window lasts."""
        found = [(await self._keyring.decrypt(target.tenant_id, target.secret, "webhook",
                                              target.id)).decode()]
        if (target.previous_secret is not None and target.rotation_ends_at is not None
                and target.rotation_ends_at > iso(now)):
            found.append((await self._keyring.decrypt(target.tenant_id, target.previous_secret,
                                                      "webhook", target.id)).decode())
        return found

    async def _send(self, url: str, head: rows.DueDelivery, secrets: list[str], now: float
                    ) -> Outcome:
        assert self._client is not None
        timestamp = int(now)
        body = head.payload.encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": head.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, head.event_id, timestamp, body),
            "user-agent": USER_AGENT,
        }
        sent = request_excerpt(url, headers, body)
        try:
            async with asyncio.timeout(TOTAL_TIMEOUT):
                async with self._client.stream("POST", url, content=body,
                                               headers=headers) as response:
                    received = bytearray()
                    async for chunk in response.aiter_raw():
                        received += chunk
                        if len(received) >= EXCERPT:
                            break  # the rest is not kept; closing drops the connection
        except BlockedAddress as exc:
            return Outcome(None, exc.message, sent)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, f"No answer within {TOTAL_TIMEOUT:g} seconds", sent)
        except httpx.HTTPError as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}", sent)
        status = response.status_code
        answer = response_excerpt(response, bytes(received[:EXCERPT]))
        if 200 <= status < 300:
            return Outcome(status, "", sent, answer)
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            error = f"HTTP {status}: redirects are not followed (Location: {location})"
        else:
            error = f"HTTP {status} {response.reason_phrase}".rstrip()
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock())
        return Outcome(status, error, sent, answer, retry_after)

    def _record(self, conn: sqlite3.Connection, head: rows.DueDelivery,
                target: rows.DeliveryTarget, attempt: int, outcome: Outcome, finished: float
                ) -> str | None:
        """Store the attempt; returns the reason when this attempt disabled the webhook."""
        now = iso(finished)
        if outcome.ok:
            assert outcome.status is not None
            if rows.record_success(conn, head.id, attempt, now=now, status=outcome.status,
                                   request=outcome.request, response=outcome.response):
                rows.endpoint_succeeded(conn, target.id)
            return None
        next_at = (None if attempt >= MAX_ATTEMPTS
                   else iso(finished + retry_delay(attempt, outcome.retry_after)))
        if not rows.record_failure(conn, head.id, attempt, now=now, status=outcome.status,
                                   error=outcome.error, request=outcome.request,
                                   response=outcome.response, next_attempt_at=next_at):
            return None
        streak = rows.endpoint_failed(conn, target.id, now)
        reason: str | None = None
        if outcome.status == 410:
            reason = GONE_REASON
        elif (streak is not None and streak[0] >= DISABLE_MIN_FAILURES
              and parse_iso(streak[1]) <= finished - DISABLE_AFTER):
            reason = (f"Every delivery attempt failed for {DISABLE_AFTER // 86_400} days "
                      f"({streak[0]} in a row)")
        if reason is None or not rows.disable(conn, target.id, reason, now):
            return None
        audit.record(conn, SYSTEM, "webhook.disabled", at=now, tenant_id=target.tenant_id,
                     object_type="webhook", object_id=target.id,
                     detail={"reason": reason, "url": redact_url(target.url)})
        return reason
