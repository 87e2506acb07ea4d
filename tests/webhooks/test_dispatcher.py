"""The dispatcher against a real HTTP receiver on 127.0.0.1, with the clock moved by hand so the
retry schedule (hours, days) runs in moments."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sqlite3
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from whatsdex.clock import iso, parse_iso
from whatsdex.identity.principal import CLI
from whatsdex.store import webhooks as rows
from whatsdex.webhooks import dispatcher as dispatching
from whatsdex.webhooks import manage
from whatsdex.webhooks.dispatcher import (
    DISABLE_AFTER,
    EXCERPT,
    MAX_ATTEMPTS,
    SCHEDULE,
    parse_retry_after,
    retry_delay,
)
from whatsdex.webhooks.ssrf import IPAddress

from .conftest import Hub, Receiver, make_hub, signed_by, verifies


async def next_due(hub: Hub, webhook_id: str) -> float:
    pending = [d for d in await hub.deliveries(webhook_id) if d["status"] == "pending"]
    return parse_iso(pending[0]["next_attempt_at"])


# -- The schedule, as numbers ------------------------------------------------------------------

def test_retry_schedule_and_retry_after_rules() -> None:
    assert [retry_delay(n) for n in range(1, MAX_ATTEMPTS)] == [5, 300, 1800, 7200, 18000,
                                                              36000, 36000]
    assert MAX_ATTEMPTS == 8
    assert retry_delay(1, 120) == 120  # the receiver asks for longer: it gets it
    assert retry_delay(3, 60) == 1800  # never sooner than the schedule
    assert retry_delay(1, 7 * 86_400) == 86_400  # capped at 24 hours
    now = 1_800_000_000.0
    assert parse_retry_after("120", now) == 120
    http_date = format_datetime(datetime.fromtimestamp(now + 3600, UTC), usegmt=True)
    assert parse_retry_after(http_date, now) == 3600
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0  # in the past: now
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- Delivery, retries and order ---------------------------------------------------------------

async def test_retries_keep_the_order_and_deliver_each_event_once(hub: Hub, receiver: Receiver
                                                                  ) -> None:
    hook, secret = await hub.webhook(receiver.url + "/crm")
    receiver.script("/crm", 503, 503)  # the first event needs two retries
    for n in range(1, 6):
        assert await hub.emit("message.received", {"n": n}) == 1
    first_try = hub.clock()

    await hub.run()
    assert len(receiver.to("/crm")) == 1, "event 2 must wait for event 1"
    assert await next_due(hub, hook) == pytest.approx(first_try + 5, abs=0.01)
    hub.advance(4)
    await hub.run()
    assert len(receiver.to("/crm")) == 1, "not before the 5 s retry"
    hub.advance(1)
    await hub.run()
    assert len(receiver.to("/crm")) == 2
    hub.advance(300)
    await hub.run()

    got = receiver.to("/crm")
    assert [r.status for r in got] == [503, 503, 200, 200, 200, 200, 200]
    assert [r.event["data"]["n"] for r in got] == [1, 1, 1, 2, 3, 4, 5]
    ids = [r.headers["webhook-id"] for r in got]
    assert ids[0] == ids[1] == ids[2], "a retry carries the same webhook-id"
    assert len(set(ids)) == 5
    delivered = receiver.delivered("/crm")
    assert [r.event["data"]["n"] for r in delivered] == [1, 2, 3, 4, 5]
    assert len({r.headers["webhook-id"] for r in delivered}) == 5, "each id succeeds once"
    # Each attempt is stamped and signed at its own time; the library verifies every one.
    stamps = [int(r.headers["webhook-timestamp"]) for r in got[:3]]
    assert stamps == [int(first_try), int(first_try + 5), int(first_try + 305)]
    assert all(signed_by(secret, r) for r in got)
    assert verifies(secret, got[0])  # within the real 5-minute tolerance as well
    for r in got:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"].startswith("WhatsDeX-Webhooks/")
        assert r.event["type"] == "message.received"

    deliveries = await hub.deliveries(hook)
    assert [d["status"] for d in deliveries] == ["delivered"] * 5
    assert [d["attempts"] for d in deliveries] == [3, 1, 1, 1, 1]
    assert deliveries[0]["last_status"] == 200 and deliveries[0]["last_error"] == ""
    assert (await hub.hook_row(hook))["consecutive_failures"] == 0


async def test_endpoints_run_in_parallel_but_one_attempt_at_a_time_each(
        hub: Hub, receiver: Receiver) -> None:
    hooks = {}
    for path in ("/a", "/b", "/c"):
        receiver.delays[path] = 0.2
        hooks[path] = (await hub.webhook(receiver.url + path))[0]
    for n in range(3):
        await hub.emit("message.sent", {"n": n})
    started = time.monotonic()
    await hub.run()
    elapsed = time.monotonic() - started
    for path in hooks:
        assert [r.event["data"]["n"] for r in receiver.delivered(path)] == [0, 1, 2]
        assert receiver.max_in_flight[path] == 1, "never two at once to one endpoint"
    assert receiver.max_total >= 2, "endpoints are served in parallel"
    assert elapsed < 9 * 0.2, elapsed  # 9 requests of 0.2 s, not one after the other


async def test_concurrency_is_bounded(tmp_path: Path, receiver: Receiver) -> None:
    hub = await make_hub(tmp_path / "data")
    await hub.start(max_concurrency=2)
    try:
        for n in range(5):
            path = f"/p{n}"
            receiver.delays[path] = 0.15
            await hub.webhook(receiver.url + path)
        await hub.emit("message.sent", {})
        await hub.run()
        assert len(receiver.requests) == 5
        assert receiver.max_total == 2
    finally:
        await hub.stop()
        await hub.store.aclose()


async def test_retry_after_is_honoured(hub: Hub, receiver: Receiver) -> None:
    hook, _ = await hub.webhook(receiver.url + "/busy")
    receiver.script("/busy", (429, {"Retry-After": "120"}))
    await hub.emit("message.received", {})
    await hub.run()
    [row] = await hub.deliveries(hook)
    assert row["status"] == "pending" and row["last_status"] == 429
    assert parse_iso(row["next_attempt_at"]) == pytest.approx(hub.clock() + 120, abs=0.01)
    assert "429" in row["last_error"] and "retry-after: 120" in row["response_excerpt"].lower()
    hub.advance(5)  # the schedule alone would retry now
    await hub.run()
    assert len(receiver.to("/busy")) == 1
    hub.advance(115)
    await hub.run()
    assert [r.status for r in receiver.to("/busy")] == [429, 200]

    # An HTTP date works too.
    later = datetime.fromtimestamp(hub.clock() + 600, UTC)
    receiver.script("/busy", (503, {"Retry-After": format_datetime(later, usegmt=True)}))
    await hub.emit("message.received", {})
    await hub.run()
    pending = [d for d in await hub.deliveries(hook) if d["status"] == "pending"]
    assert parse_iso(pending[0]["next_attempt_at"]) == pytest.approx(hub.clock() + 600, abs=1)


async def test_gone_disables_the_webhook_at_once(hub: Hub, receiver: Receiver) -> None:
    hook, _ = await hub.webhook(receiver.url + "/gone")
    receiver.script("/gone", 410)
    await hub.emit("message.received", {"n": 1})
    await hub.emit("message.received", {"n": 2})
    async with hub.bus.subscribe(hub.tenant.id) as events:
        await hub.run()
        event = events.get_nowait()
    assert event.type == "webhook.disabled" and event.data["webhook_id"] == hook
    assert "410" in event.data["reason"]
    row = await hub.hook_row(hook)
    assert row["enabled"] == 0 and "410 Gone" in row["disabled_reason"]
    audit = await hub.store.fetchall(
        "SELECT actor_type, action, detail FROM audit_log WHERE object_id = ? ORDER BY id",
        (hook,))
    assert audit[-1]["actor_type"] == "system" and audit[-1]["action"] == "webhook.disabled"
    assert "410" in json.loads(audit[-1]["detail"])["reason"]
    # Nothing more is attempted; new events skip a disabled webhook; what waited is kept.
    hub.advance(3600)
    await hub.run()
    assert len(receiver.to("/gone")) == 1
    assert await hub.emit("message.received", {"n": 3}) == 0
    assert [d["status"] for d in await hub.deliveries(hook)] == ["pending", "pending"]
    # Enabled again: the waiting events go out, in order, at once.
    await manage.update_webhook(hub.store, CLI, hub.tenant.id, hook, enabled=True,
                                allow_private=True, now=hub.clock())
    await hub.run()
    assert [r.event["data"]["n"] for r in receiver.delivered("/gone")] == [1, 2]
    row = await hub.hook_row(hook)
    assert row["enabled"] == 1 and row["disabled_reason"] == ""


async def test_a_delivery_is_given_up_after_the_last_attempt(hub: Hub, receiver: Receiver
                                                             ) -> None:
    hook, _ = await hub.webhook(receiver.url + "/down")
    receiver.script("/down", *([500] * MAX_ATTEMPTS))
    await hub.emit("message.received", {"n": 1})
    await hub.emit("message.received", {"n": 2})
    started = hub.clock()
    for _ in range(MAX_ATTEMPTS + 2):
        await hub.run()
        first = (await hub.deliveries(hook))[0]
        if first["status"] != "pending":
            break
        hub.now[0] = max(hub.clock(), parse_iso(first["next_attempt_at"]))
    first, second = await hub.deliveries(hook)
    assert first["status"] == "failed" and first["attempts"] == MAX_ATTEMPTS
    assert first["last_status"] == 500
    assert hub.clock() - started == pytest.approx(sum(SCHEDULE), abs=1)  # about 28 hours
    # Given up, the next event went at once (and succeeded: the script was used up).
    assert second["status"] == "delivered" and second["attempts"] == 1
    [ok] = receiver.delivered("/down")
    assert ok.headers["webhook-id"] == second["event_id"] and ok.event["data"] == {"n": 2}
    assert len(receiver.to("/down")) == MAX_ATTEMPTS + 1
    assert (await hub.hook_row(hook))["enabled"] == 1  # one day of failures does not disable


async def test_five_days_of_failures_disable_the_webhook(hub: Hub, receiver: Receiver) -> None:
    hook, _ = await hub.webhook(receiver.url + "/dead")
    receiver.script("/dead", *([503] * 200))
    for n in range(8):
        await hub.emit("message.received", {"n": n})
    started = hub.clock()
    async with hub.bus.subscribe(hub.tenant.id) as events:
        for _ in range(100):
            await hub.run()
            if not (await hub.hook_row(hook))["enabled"]:
                break
            hub.now[0] = max(hub.clock(), await next_due(hub, hook))
        disabled = events.get_nowait()
    row = await hub.hook_row(hook)
    assert row["enabled"] == 0
    assert "failed for 5 days" in row["disabled_reason"]
    assert disabled.type == "webhook.disabled" and disabled.data["reason"] == row["disabled_reason"]
    assert hub.clock() - started >= DISABLE_AFTER
    assert hub.clock() - started < DISABLE_AFTER + 10 * 3600  # at the first attempt after 5 days
    assert row["consecutive_failures"] == len(receiver.to("/dead")) >= 10
    assert [a["action"] for a in await hub.store.fetchall(
        "SELECT action FROM audit_log WHERE object_id = ? AND actor_type = 'system'", (hook,))
    ] == ["webhook.disabled"]
    # Some deliveries were given up on the way; the rest wait for the webhook to come back.
    statuses = [d["status"] for d in await hub.deliveries(hook)]
    assert "failed" in statuses and statuses[-1] == "pending"


async def test_a_success_resets_the_failure_count(hub: Hub, receiver: Receiver) -> None:
    hook, _ = await hub.webhook(receiver.url + "/flaky")
    receiver.script("/flaky", 500, 500)
    await hub.emit("message.received", {})
    await hub.run()
    hub.advance(5)
    await hub.run()
    row = await hub.hook_row(hook)
    assert row["consecutive_failures"] == 2 and row["failing_since"] is not None
    hub.advance(300)
    await hub.run()
    row = await hub.hook_row(hook)
    assert row["consecutive_failures"] == 0 and row["failing_since"] is None


async def test_redirects_are_failures_and_not_followed(hub: Hub, receiver: Receiver) -> None:
    hook, _ = await hub.webhook(receiver.url + "/moved")
    receiver.script("/moved", (302, {"Location": receiver.url + "/elsewhere"}))
    await hub.emit("message.received", {})
    await hub.run()
    [row] = await hub.deliveries(hook)
    assert row["status"] == "pending" and row["last_status"] == 302
    assert "redirects are not followed" in row["last_error"]
    assert receiver.to("/elsewhere") == []


async def test_excerpts_are_short_and_never_hold_the_secret(hub: Hub, receiver: Receiver
                                                           ) -> None:
    hook, secret = await hub.webhook(receiver.url + "/big")
    receiver.script("/big", (500, {"Content-Type": "text/plain"}, b"x" * 50_000))
    await hub.emit("message.received", {"text": "y" * 5000})
    await hub.run()
    [row] = await hub.deliveries(hook)
    assert len(row["request_excerpt"]) <= EXCERPT and len(row["response_excerpt"]) <= EXCERPT
    assert row["request_excerpt"].startswith(f"POST {receiver.url}/big\n")
    assert "webhook-id: msg_" in row["request_excerpt"]
    assert row["response_excerpt"].startswith("HTTP 500")
    stored = json.dumps(row) + json.dumps(await hub.hook_row(hook), default=str)
    assert secret not in stored and secret.removeprefix("whsec_") not in stored


async def test_rotation_signs_with_both_secrets_for_a_day(hub: Hub, receiver: Receiver) -> None:
    hook, old = await hub.webhook(receiver.url + "/rot")
    new, until = await manage.rotate_secret(hub.store, hub.keyring, CLI, hub.tenant.id, hook,
                                            now=hub.clock())
    assert new != old and parse_iso(until) == pytest.approx(hub.clock() + 86_400, abs=0.01)
    await hub.emit("message.received", {"n": 1})
    await hub.run()
    [during] = receiver.to("/rot")
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verifies(new, during) and verifies(old, during)
    hub.advance(86_401)
    await hub.emit("message.received", {"n": 2})
    await hub.run()
    after = receiver.to("/rot")[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert signed_by(new, after) and not signed_by(old, after)


async def test_pending_deliveries_survive_a_restart(hub: Hub, receiver: Receiver) -> None:
    hook, secret = await hub.webhook(receiver.url + "/restart")
    receiver.script("/restart", 503)
    await hub.emit("message.received", {"n": 1})
    await hub.run()  # attempt 1 fails; the retry is due in 5 s
    await hub.stop()
    await hub.emit("message.received", {"n": 2})  # queued while nothing delivers
    await hub.reopen()
    await hub.start()
    hub.advance(5)
    await hub.run()
    assert [r.event["data"]["n"] for r in receiver.delivered("/restart")] == [1, 2]
    assert all(signed_by(secret, r) for r in receiver.to("/restart"))
    assert [d["status"] for d in await hub.deliveries(hook)] == ["delivered", "delivered"]


async def test_the_loop_delivers_by_itself_when_woken(hub: Hub, receiver: Receiver) -> None:
    await hub.webhook(receiver.url + "/live")
    await hub.emit("message.received", {})
    assert hub.dispatcher is not None
    hub.dispatcher.wake()
    for _ in range(100):
        if receiver.delivered("/live"):
            break
        await asyncio.sleep(0.02)
    assert len(receiver.delivered("/live")) == 1


async def test_new_rows_are_found_by_the_poll(tmp_path: Path, receiver: Receiver) -> None:
    hub = await make_hub(tmp_path / "data")
    await hub.start(poll_interval=0.05)
    try:
        await hub.webhook(receiver.url + "/poll")
        await hub.emit("message.received", {})  # nobody calls wake()
        for _ in range(100):
            if receiver.delivered("/poll"):
                break
            await asyncio.sleep(0.02)
        assert len(receiver.delivered("/poll")) == 1
    finally:
        await hub.stop()
        await hub.store.aclose()


async def test_a_name_rebound_to_loopback_is_refused_at_delivery(tmp_path: Path,
                                                                 receiver: Receiver) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])

    async def public_then_loopback(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    hub = await make_hub(tmp_path / "data", allow_private=False)
    await hub.start(resolver=public_then_loopback)
    try:
        async def public(host: str, port: int) -> list[IPAddress]:
            return [ipaddress.ip_address("93.184.216.34")]

        hook, _ = await manage.create_webhook(
            hub.store, hub.keyring, CLI, hub.tenant.id, url=f"http://hooks.example:{port}/x",
            events=["*"], description="", allow_private=False, now=hub.clock(),
            resolver=public)
        await hub.emit("message.received", {})
        await hub.run()
        [row] = await hub.deliveries(hook.id)
        assert row["status"] == "pending" and row["last_status"] is None
        assert "loopback" in row["last_error"] and "127.0.0.1" in row["last_error"]
        assert receiver.requests == []
    finally:
        await hub.stop()
        await hub.store.aclose()


async def test_old_finished_rows_are_purged(hub: Hub) -> None:
    hook, _ = await hub.webhook("http://127.0.0.1:9/never")
    await manage.update_webhook(hub.store, CLI, hub.tenant.id, hook, enabled=False,
                                allow_private=True, now=hub.clock())
    old, recent = iso(hub.clock() - 40 * 86_400), iso(hub.clock())

    def seed(conn: sqlite3.Connection) -> None:
        for status, at in (("delivered", old), ("failed", old), ("pending", old),
                           ("delivered", recent)):
            conn.execute(
                "INSERT INTO webhook_deliveries (event_id, tenant_id, webhook_id, event_type, "
                "payload, status, next_attempt_at, created_at) "
                "VALUES (?, ?, ?, 'x', '{}', ?, ?, ?)",
                (f"msg_{status}{at}", hub.tenant.id, hook, status, at, at))

    await hub.store.write(seed)
    cutoff = iso(hub.clock() - dispatching.RETENTION)
    assert await hub.store.write(lambda conn: rows.purge_finished(conn, cutoff, 1000)) == 2
    left = await hub.deliveries(hook)
    assert sorted((d["status"], d["created_at"] == old) for d in left) == [
        ("delivered", False), ("pending", True)]
