"""Delivery with a fake supervisor and a controlled clock: order, pacing, caps, retries, and
what happens to a message caught in `sending` by a crash."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable

import pytest

from whatsdex.clock import iso
from whatsdex.messaging.delivery import BACKOFF, MAX_ATTEMPTS
from whatsdex.messaging.outbox import SendRequest
from whatsdex.sessions import protocol
from whatsdex.sessions.hosts import HostGone

from .conftest import (
    FakeHost,
    Rig,
    add_webhook,
    make_number,
    make_tenant,
    status_of,
    text,
    webhook_events,
)


async def setup(rig: Rig, status: str = "connected") -> tuple[str, str, FakeHost]:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    host = FakeHost(rig.clock)
    rig.supervisor.add(tenant, number, host, status)
    return tenant, number, host


async def settled(rig: Rig) -> None:
    """Until every worker went idle (nothing left it could send now)."""
    async def idle() -> bool:
        return rig.delivery.active == 0

    await rig.wait(idle, "the delivery workers to go idle")


async def test_api_sends_overtake_campaign_sends(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig, status="reconnecting")
    campaign = [(await rig.outbox.accept(tenant, text(number, body=f"promo {i}"),
                                         source="campaign")).message.id for i in range(3)]
    rig.clock.now += 1
    api = (await rig.outbox.accept(tenant, text(number, body="order shipped"))).message.id
    inbox = (await rig.outbox.accept(tenant, text(number, body="hello"), source="inbox")
             ).message.id

    async def waiting() -> bool:
        return (await status_of(rig.store, api))[1].startswith("waiting for the number")

    await rig.wait(waiting, "the queue to say it waits for the connection")
    assert host.sends() == []
    rig.supervisor.set_status(number, "connected")
    await settled(rig)
    assert [s.outbox_id for s in host.sends()] == [api, inbox, *campaign]
    for message_id in [api, inbox, *campaign]:
        assert (await status_of(rig.store, message_id)) == ("sent", "", 1)


async def test_gaps_between_sends_stay_within_the_pacing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(send_min_gap_seconds=2.0, send_jitter_seconds=3.0,
                   rng=random.Random(7).random)
    tenant, number, host = await setup(rig, status="reconnecting")
    for i in range(8):
        await rig.outbox.accept(tenant, text(number, body=f"m{i}"))
    rig.supervisor.set_status(number, "connected")
    await settled(rig)
    times = [at for at, command in host.calls]
    assert len(times) == 8
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(2.0 <= gap <= 5.0 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.5, "the jitter is random"


async def test_zero_pacing_never_waits(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(send_min_gap_seconds=0.0, send_jitter_seconds=0.0)
    tenant, number, host = await setup(rig)
    for i in range(20):
        await rig.outbox.accept(tenant, text(number, body=f"m{i}"))
    await settled(rig)
    assert len(host.sends()) == 20
    assert rig.clock.sleeps == []


async def test_the_daily_cap_holds_the_rest_until_the_next_utc_day(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(number_daily_cap=3)
    tenant, number, host = await setup(rig, status="reconnecting")
    ids = [(await rig.outbox.accept(tenant, text(number, body=f"m{i}"))).message.id
           for i in range(5)]
    day = iso(rig.clock())[:10]
    sent_at: list[str] = []
    original = host.call

    async def call(command: protocol.Command, timeout: float | None = None) -> protocol.Reply:
        sent_at.append(iso(rig.clock())[:10])
        return await original(command, timeout)

    host.call = call  # type: ignore[method-assign]
    # Hold the first wait (for midnight) to look at the waiting rows.
    real_sleep = rig.clock.sleep
    gate: list[float] = []
    release = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        gate.append(seconds)
        if len(gate) == 1:
            await release.wait()
        await real_sleep(seconds)

    rig.delivery._sleep = held_sleep
    rig.supervisor.set_status(number, "connected")

    async def three_sent() -> bool:
        return len(host.sends()) == 3 and len(gate) >= 1

    await rig.wait(three_sent, "three sends, then a wait")
    status, reason, _ = await status_of(rig.store, ids[3])
    assert status == "queued"
    assert "daily cap of 3" in reason and "00:00 UTC" in reason
    release.set()
    await settled(rig)
    assert len(host.sends()) == 5
    assert sent_at[:3] == [day] * 3
    assert sent_at[3] > day and sent_at[3:] == [sent_at[3]] * 2
    counts = await rig.store.fetchall("SELECT day, sent FROM message_counts ORDER BY day")
    assert [tuple(r) for r in counts] == [(day, 3), (sent_at[3], 2)]


async def test_retryable_failures_back_off_then_succeed(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    await add_webhook(rig.store, tenant)
    failure = protocol.Reply(req=0, ok=False, error="network hiccup", retryable=True)
    host.failures = [failure, failure]
    message_id = (await rig.outbox.accept(tenant, text(number))).message.id
    await settled(rig)
    sends = host.sends()
    assert [s.outbox_id for s in sends] == [message_id] * 3  # one id across every attempt
    assert rig.clock.sleeps[:2] == [BACKOFF[0], BACKOFF[1]]
    row = await rig.store.fetchone(
        "SELECT status, attempts, wa_id, sent_at, status_reason FROM messages WHERE id = ?",
        (message_id,))
    assert (row[0], row[1], row[4]) == ("sent", 3, "")
    assert row[2] == "3EB0" + message_id[-12:].upper() and row[3]
    events = await webhook_events(rig.store, tenant)
    assert [e[0] for e in events] == ["message.sent"]
    assert events[0][1]["id"] == message_id and events[0][1]["wa_id"] == row[2]


async def test_a_message_fails_after_the_last_attempt(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    await add_webhook(rig.store, tenant)
    host.failures = [protocol.Reply(req=0, ok=False, error="timeout", retryable=True)
                     ] * MAX_ATTEMPTS
    message_id = (await rig.outbox.accept(tenant, text(number))).message.id
    await settled(rig)
    status, reason, attempts = await status_of(rig.store, message_id)
    assert (status, attempts) == ("failed", MAX_ATTEMPTS)
    assert f"gave up after {MAX_ATTEMPTS} attempts" in reason
    assert rig.clock.sleeps == list(BACKOFF)
    events = await webhook_events(rig.store, tenant)
    assert events[-1][0] == "message.status"
    assert (events[-1][1]["status"], events[-1][1]["id"]) == ("failed", message_id)


async def test_a_permanent_failure_fails_at_once(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    host.failures = [protocol.Reply(req=0, ok=False, error="not on WhatsApp", retryable=False)]
    failed = (await rig.outbox.accept(tenant, text(number, body="a"))).message.id
    ok = (await rig.outbox.accept(tenant, text(number, body="b"))).message.id
    await settled(rig)
    assert (await status_of(rig.store, failed)) == ("failed", "not on WhatsApp", 1)
    assert (await status_of(rig.store, ok))[0] == "sent"


async def test_a_lost_connection_gives_the_attempt_back(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    original = host.call

    async def drop(command: protocol.Command, timeout: float | None = None) -> protocol.Reply:
        host.call = original  # type: ignore[method-assign]
        rig.supervisor.live[number].status = "reconnecting"
        return protocol.Reply(req=0, ok=False, error="not connected", retryable=True)

    host.call = drop  # type: ignore[method-assign]
    message_id = (await rig.outbox.accept(tenant, text(number))).message.id

    async def waiting() -> bool:
        return (await status_of(rig.store, message_id))[1].startswith("waiting for the number")

    await rig.wait(waiting, "the message to wait for the connection")
    assert (await status_of(rig.store, message_id))[::2] == ("queued", 0)
    rig.supervisor.set_status(number, "connected")
    await settled(rig)
    assert (await status_of(rig.store, message_id)) == ("sent", "", 1)


async def test_an_interrupted_send_is_retried_with_the_same_outbox_id(
        make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    host.failures = [HostGone("the engine host stopped"), TimeoutError()]
    message_id = (await rig.outbox.accept(tenant, text(number))).message.id
    await settled(rig)
    assert [s.outbox_id for s in host.sends()] == [message_id] * 3
    assert (await status_of(rig.store, message_id))[::2] == ("sent", 3)


async def test_sending_rows_left_by_a_crash_are_resent_not_duplicated(
        make_rig: Callable[..., Rig]) -> None:
    first = make_rig()
    tenant, number, _ = await setup(first, status="reconnecting")
    caught = (await first.outbox.accept(tenant, text(number, body="caught"))).message.id
    waiting = (await first.outbox.accept(tenant, text(number, body="waiting"))).message.id
    await first.delivery.stop()
    # The crash: the `sending` mark (attempt 1) was committed, the engine's answer never came.
    await first.store.write(lambda conn: conn.execute(
        "UPDATE messages SET status = 'sending', attempts = 1 WHERE id = ?", (caught,)))
    second = make_rig()
    host = FakeHost(second.clock)
    second.supervisor.add(tenant, number, host)
    await second.delivery.start()
    await settled(second)
    assert [s.outbox_id for s in host.sends()] == [caught, waiting]
    assert (await status_of(second.store, caught)) == ("sent", "", 2)
    assert (await status_of(second.store, waiting)) == ("sent", "", 1)


async def test_workers_stop_when_idle_and_start_on_demand(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    other = await make_number(rig.store, tenant, phone="15550000002")
    other_host = FakeHost(rig.clock)
    rig.supervisor.add(tenant, other, other_host)
    await rig.outbox.accept(tenant, text(number))
    await rig.outbox.accept(tenant, text(other))
    await settled(rig)
    await rig.outbox.accept(tenant, text(number, body="again"))
    await settled(rig)
    assert len(host.sends()) == 2 and len(other_host.sends()) == 1


async def test_replies_and_reactions_carry_whatsapp_ids(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    inbound = protocol.InboundMessage(
        session=number, wa_id="3AINBOUND1", chat=protocol.Person(jid="15559990001@s.whatsapp.net"),
        sender=protocol.Person(jid="15559990001@s.whatsapp.net", phone="15559990001"),
        timestamp_ms=int(rig.clock() * 1000), kind="text", text="question?")
    await rig.ingest.handle(tenant, inbound)
    theirs = await rig.store.fetchval("SELECT id FROM messages WHERE wa_id = '3AINBOUND1'")
    ours = (await rig.outbox.accept(tenant, text(number, body="answer", quoted_id=theirs))
            ).message.id
    await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="reaction", message_id=ours, emoji="✅"))
    await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="location", latitude=52.37,
        longitude=4.89, name="Office"))
    await settled(rig)
    reply, reaction, location = host.sends()
    assert (reply.quoted_id, reply.quoted_sender) == ("3AINBOUND1", "15559990001@s.whatsapp.net")
    assert (reaction.kind, reaction.text, reaction.reaction_from_me) == ("reaction", "✅", True)
    assert reaction.reaction_to == "3EB0" + ours[-12:].upper()
    assert (location.latitude, location.longitude, location.location_name) == (
        52.37, 4.89, "Office")


async def test_media_bytes_go_to_the_engine(make_rig: Callable[..., Rig]) -> None:
    from .test_outbox import PNG

    rig = make_rig()
    tenant, number, host = await setup(rig)
    upload = await rig.media.store_upload(tenant, PNG, "p.png")
    await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", media_id=upload.id, text="look"))
    await settled(rig)
    [send] = host.sends()
    assert send.media is not None
    assert (send.media.data, send.media.mimetype, send.media.caption) == (PNG, "image/png", "look")


@pytest.mark.parametrize("status", ["logged_out", "stopped"])
async def test_messages_wait_while_the_number_is_down(make_rig: Callable[..., Rig], status: str
                                                      ) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)
    rig.supervisor.live[number].status = status
    message_id = (await rig.outbox.accept(tenant, text(number))).message.id

    async def explained() -> bool:
        return status in (await status_of(rig.store, message_id))[1]

    await rig.wait(explained, "the reason on the waiting message")
    assert host.sends() == []
    rig.supervisor.set_status(number, "connected")
    await settled(rig)
    assert (await status_of(rig.store, message_id))[0] == "sent"


async def test_a_typing_hint_pauses_before_the_first_attempt(make_rig: Callable[..., Rig]
                                                            ) -> None:
    rig = make_rig()
    tenant, number, host = await setup(rig)

    def queue(conn: object) -> str:
        return rig.outbox.queue_in(conn, tenant, text(number),  # type: ignore[arg-type]
                                   source="campaign", now=rig.clock(),
                                   hints={"typing_seconds": 3.5}).id

    await rig.store.write(queue)
    rig.delivery.wake(tenant, number)
    await settled(rig)
    [(at, _)] = host.calls
    assert rig.clock.sleeps == [3.5] and at == pytest.approx(rig.clock.now)


async def test_a_wait_that_is_over_leaves_no_stale_reason(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(send_min_gap_seconds=10.0)
    tenant, number, host = await setup(rig, status="reconnecting")
    ids = [(await rig.outbox.accept(tenant, text(number, body=f"m{i}"))).message.id
           for i in range(3)]

    async def explained() -> bool:
        reasons = [(await status_of(rig.store, i))[1] for i in ids]
        return all("waiting for the number" in reason for reason in reasons)

    await rig.wait(explained, "every waiting message to say why")
    release = asyncio.Event()

    async def held(seconds: float) -> None:  # the pacing gap after the first send
        await release.wait()
        await rig.clock.sleep(seconds)

    rig.delivery._sleep = held
    rig.supervisor.set_status(number, "connected")

    async def first_sent() -> bool:
        return (await status_of(rig.store, ids[0]))[0] == "sent"

    await rig.wait(first_sent, "the first send")
    assert [(await status_of(rig.store, i))[:2] for i in ids[1:]] == [("queued", "")] * 2
    release.set()
    await settled(rig)
    assert len(host.sends()) == 3
