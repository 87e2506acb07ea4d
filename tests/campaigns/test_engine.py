"""The runner at the store level: pacing on a controlled clock (gaps, daily caps with warm-up,
send windows, the plan's daily limit), opt-outs checked right before each send, pause, resume
and cancel, a deleted number, templates with media and typing hints, and counters that always
match the recipient rows."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from messaging.conftest import text

from campaigns.conftest import ACTOR, BODY, Rig, add_contacts, add_template, new_campaign, opt_out
from whatsdex.campaigns import service
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.clock import iso, parse_iso
from whatsdex.sessions import protocol
from whatsdex.store import Store
from whatsdex.store.ids import new_id
from whatsdex.templates import syntax

MakeRig = Callable[..., Awaitable[Rig]]


async def queued_times(store: Store, campaign_id: str) -> dict[str, list[float]]:
    """Per number, when each of the campaign's messages was queued (the clock's reading)."""
    rows = await store.fetchall(
        "SELECT r.session_id, m.created_at FROM campaign_recipients r JOIN messages m "
        "ON m.id = r.message_id WHERE r.campaign_id = ? ORDER BY m.created_at", (campaign_id,))
    found: dict[str, list[float]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(parse_iso(row[1]))
    return found


async def assert_counters(store: Store, campaign_id: str) -> dict[str, int]:
    """The campaign row's counters equal a recount of its recipients."""
    row = await store.fetchone("SELECT targeted, sent, failed, skipped FROM campaigns "
                               "WHERE id = ?", (campaign_id,))
    assert row is not None
    counts = {r[0]: r[1] for r in await store.fetchall(
        "SELECT status, count(*) FROM campaign_recipients WHERE campaign_id = ? GROUP BY status",
        (campaign_id,))}
    assert row[0] == sum(counts.values())
    assert (row[1], row[2], row[3]) == (counts.get("sent", 0), counts.get("failed", 0),
                                        counts.get("skipped", 0))
    return counts


async def test_gaps_between_a_numbers_messages_stay_within_the_range(make_rig: MakeRig) -> None:
    rig = await make_rig(numbers=2, rng=random.Random(7).random)
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 12)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock(), pacing=Pacing(min_gap=30, max_gap=90))
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    times = await queued_times(rig.store, campaign.id)
    assert sorted(len(t) for t in times.values()) == [6, 6], "spread evenly over the numbers"
    # The gap runs from when a number's previous message left the outbox to the next queueing.
    rows = await rig.store.fetchall(
        "SELECT r.session_id, m.created_at, m.sent_at FROM campaign_recipients r "
        "JOIN messages m ON m.id = r.message_id WHERE r.campaign_id = ? ORDER BY m.created_at",
        (campaign.id,))
    sends: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        sends.setdefault(row[0], []).append((parse_iso(row[1]), parse_iso(row[2])))
    gaps = [b[0] - a[1] for t in sends.values() for a, b in itertools.pairwise(t)]
    assert len(gaps) == 10
    assert all(30 - 0.01 <= gap <= 90 + 0.01 for gap in gaps), gaps
    assert len({round(gap, 3) for gap in gaps}) > 5, "the gaps are random, not one fixed value"
    assert await assert_counters(rig.store, campaign.id) == {"sent": 12}


async def test_daily_cap_with_a_warm_up_ramp(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 16)
    template_id = await add_template(rig.store, rig.tenant_id)
    pacing = Pacing(daily_cap=5, warmup_start=2, warmup_increase=1)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock(), pacing=pacing)
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    times = (await queued_times(rig.store, campaign.id))[rig.numbers[0]]
    per_day = Counter(datetime.fromtimestamp(t, UTC).date() for t in times)
    # Warm-up 2, 3, 4 a day, then the cap of 5; a new day starts at midnight, not 24 h later.
    assert [per_day[d] for d in sorted(per_day)] == [2, 3, 4, 5, 2]
    assert all(datetime.fromtimestamp(t, UTC).time().isoformat() == "00:00:00"
               for t in times[2:3])


async def test_nothing_is_sent_outside_the_window(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    tz = ZoneInfo("America/New_York")
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE tenants SET timezone = 'America/New_York' WHERE id = ?", (rig.tenant_id,)))
    # Friday 17:57 in New York: three minutes of the week's window are left.
    rig.clock.now = datetime(2026, 9, 25, 17, 57, tzinfo=tz).timestamp()
    await add_contacts(rig.store, rig.tenant_id, 6)
    template_id = await add_template(rig.store, rig.tenant_id)
    window = Window(days=[0, 1, 2, 3, 4], start="09:00", end="18:00")
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock(), window=window,
                                  pacing=Pacing(min_gap=60, max_gap=60))
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    local = [datetime.fromtimestamp(t, tz) for t in
             (await queued_times(rig.store, campaign.id))[rig.numbers[0]]]
    assert [f"{m:%a %H:%M}" for m in local] == [
        "Fri 17:57", "Fri 17:58", "Fri 17:59", "Mon 09:00", "Mon 09:01", "Mon 09:02"]
    assert all(m.weekday() < 5 and 9 <= m.hour < 18 for m in local)


async def test_the_plans_daily_limit_holds_the_rest_until_midnight(make_rig: MakeRig) -> None:
    rig = await make_rig(per_day=5)
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 8)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    times = (await queued_times(rig.store, campaign.id))[rig.numbers[0]]
    days = Counter(iso(t)[:10] for t in times)
    assert sorted(days.values(), reverse=True) == [5, 3]


async def test_opted_out_since_the_start_are_skipped_right_before_sending(
        make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    ids = await add_contacts(rig.store, rig.tenant_id, 10)
    await opt_out(rig.store, rig.tenant_id, ids[:2])  # before the start: left out
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    # The run starts (its audience taken) while no runner is there, as after a crash...
    await service.start(rig.store, ACTOR, rig.tenant_id, campaign.id, now=rig.clock())
    # ...then two more opt out: one directly, one through another row of the same person.
    await opt_out(rig.store, rig.tenant_id, ids[2:3])
    twin = new_id("con")
    stamp = iso(rig.clock())
    await rig.store.write(lambda conn: conn.execute(
        "INSERT INTO contacts (id, tenant_id, phone, jid, lid, opt_status, created_at, "
        "updated_at) SELECT ?, tenant_id, '', jid, '1234567@lid', 'opted_out', ?, ? "
        "FROM contacts WHERE id = ?", (twin, stamp, stamp, ids[3])))
    await rig.engine.start()  # rebuilt from the database: the running campaign resumes
    await rig.finished(campaign.id)
    counts = await assert_counters(rig.store, campaign.id)
    assert counts == {"sent": 6, "skipped": 2}
    skipped = await rig.store.fetchall(
        "SELECT contact_id, reason FROM campaign_recipients WHERE status = 'skipped' "
        "AND campaign_id = ?", (campaign.id,))
    assert {row[0] for row in skipped} == {ids[2], ids[3]}
    assert {row[1] for row in skipped} == {"opted out"}
    sent_to = {s.to for s in rig.host.sends()}
    assert not any(f"+{i}" in sent_to for i in ids[:4])
    row = await rig.store.fetchone("SELECT excluded FROM campaigns WHERE id = ?", (campaign.id,))
    assert row is not None and row[0] == 2


class Gate:
    """A pacing sleep that waits for the test to open it before the clock moves."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.open = asyncio.Event()
        self.waiting = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waiting.set()
        await self.open.wait()
        await self.rig.clock.sleep(seconds)


async def test_pause_stops_queuing_resume_goes_on_cancel_skips_the_rest(
        make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    gate = Gate(rig)
    engine = rig.new_engine()
    engine._sleep = gate.sleep
    await add_contacts(rig.store, rig.tenant_id, 6)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock(), pacing=Pacing(min_gap=10, max_gap=10))
    await engine.start()
    await engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await asyncio.wait_for(gate.waiting.wait(), 10)  # one sent, waiting out the gap
    paused = await engine.pause(ACTOR, rig.tenant_id, campaign.id)
    assert paused.status == "paused"
    await rig.wait(lambda: _no_runner(engine, campaign.id), "the runner to stop")
    gate.open.set()
    await asyncio.sleep(0.2)
    assert len(rig.host.sends()) == 1, "a paused campaign queues nobody"

    await engine.resume(ACTOR, rig.tenant_id, campaign.id)

    async def three_sent() -> bool:
        return len(rig.host.sends()) >= 3

    await rig.wait(three_sent, "sending to go on")
    cancelled = await engine.cancel(ACTOR, rig.tenant_id, campaign.id)
    assert cancelled.status == "cancelled"
    await rig.wait(lambda: _no_runner(engine, campaign.id), "the runner to drain and stop")
    counts = await assert_counters(rig.store, campaign.id)
    sent = len(rig.host.sends())
    assert counts == {"sent": sent, "skipped": 6 - sent}
    reasons = await rig.store.fetchall(
        "SELECT DISTINCT reason FROM campaign_recipients WHERE status = 'skipped' "
        "AND campaign_id = ?", (campaign.id,))
    assert [r[0] for r in reasons] == [service.CANCELLED]
    events = [json.loads(r[0])["type"] for r in await rig.store.fetchall(
        "SELECT payload FROM webhook_deliveries WHERE tenant_id = ? ORDER BY id",
        (rig.tenant_id,))]
    assert events == []  # no webhook configured: nothing queued for nobody
    audit = [r[0] for r in await rig.store.fetchall(
        "SELECT action FROM audit_log WHERE object_id = ? ORDER BY id", (campaign.id,))]
    assert audit == ["campaign.created", "campaign.started", "campaign.paused",
                     "campaign.resumed", "campaign.cancelled"]


async def _no_runner(engine: object, campaign_id: str) -> bool:
    return campaign_id not in engine.running


async def test_a_deleted_numbers_recipients_move_to_the_others(make_rig: MakeRig) -> None:
    rig = await make_rig(numbers=2)
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 10)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await service.start(rig.store, ACTOR, rig.tenant_id, campaign.id, now=rig.clock())
    gone = rig.numbers[1]
    await rig.store.write(lambda conn: conn.execute("DELETE FROM wa_sessions WHERE id = ?",
                                                    (gone,)))
    await rig.engine.start()
    await rig.finished(campaign.id)
    assert await assert_counters(rig.store, campaign.id) == {"sent": 10}
    assert {s.session for s in rig.host.sends()} == {rig.numbers[0]}


async def test_messages_render_with_the_recipient_seed_media_and_typing(
        make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    ids = await add_contacts(rig.store, rig.tenant_id, 5)
    media_id = new_id("med")
    stamp = iso(rig.clock())
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
    await rig.store.write(lambda conn: conn.execute(
        "INSERT INTO media (id, tenant_id, sha256, mimetype, size, filename, origin, data, "
        "created_at, last_used_at) VALUES (?, ?, ?, 'image/png', ?, 'offer.png', 'upload', ?, "
        "?, ?)", (media_id, rig.tenant_id, hashlib.sha256(png).hexdigest(), len(png), png,
                  stamp, stamp)))
    template_id = await add_template(rig.store, rig.tenant_id)
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE message_templates SET media_id = ?, media_kind = 'image', filename = 'offer.png'"
        " WHERE id = ?", (media_id, template_id)))
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock(), typing=3.5)
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    template = syntax.parse(BODY)
    rows = await rig.store.fetchall(
        "SELECT r.contact_id, r.text_hash, m.kind, m.text, m.payload, c.name, c.phone, c.custom "
        "FROM campaign_recipients r JOIN messages m ON m.id = r.message_id "
        "JOIN contacts c ON c.id = r.contact_id WHERE r.campaign_id = ?", (campaign.id,))
    assert {row[0] for row in rows} == set(ids)
    for row in rows:
        expected = syntax.render(template, syntax.contact_fields(row[5], row[6], row[7]),
                                 seed=f"{campaign.id}:{row[0]}")
        assert row[3] == expected
        assert row[1] == hashlib.sha256(expected.encode()).hexdigest()
        assert row[2] == "image"
        payload = json.loads(row[4])
        assert payload["media"]["media_id"] == media_id
        assert payload["hints"] == {"typing_seconds": 3.5}
    assert all(s.kind == "image" and s.media is not None for s in rig.host.sends())


async def test_a_failed_send_fails_its_recipient_with_the_reason(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    rig.host.failures.append(protocol.Reply(req=0, ok=False, error="not on WhatsApp",
                                            retryable=False))
    await add_contacts(rig.store, rig.tenant_id, 4)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id)
    assert await assert_counters(rig.store, campaign.id) == {"sent": 3, "failed": 1}
    reason = await rig.store.fetchval(
        "SELECT reason FROM campaign_recipients WHERE status = 'failed' AND campaign_id = ?",
        (campaign.id,))
    assert reason == "not on WhatsApp"


@pytest.mark.parametrize("numbers", [1, 3])
async def test_recipients_spread_over_the_numbers_and_keep_them(make_rig: MakeRig,
                                                                numbers: int) -> None:
    rig = await make_rig(numbers=numbers)
    await add_contacts(rig.store, rig.tenant_id, 10)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await service.start(rig.store, ACTOR, rig.tenant_id, campaign.id, now=rig.clock())
    rows = await rig.store.fetchall(
        "SELECT session_id, count(*) FROM campaign_recipients WHERE campaign_id = ? "
        "GROUP BY session_id", (campaign.id,))
    sizes = sorted(row[1] for row in rows)
    assert sum(sizes) == 10 and sizes[-1] - sizes[0] <= 1 and len(sizes) == numbers


async def test_api_sends_overtake_queued_campaign_messages(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.delivery.start()
    await add_contacts(rig.store, rig.tenant_id, 60)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await rig.engine.start()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)

    async def started() -> bool:
        return len(rig.host.sends()) >= 1

    await rig.wait(started, "the campaign's first send")
    accepted = await rig.outbox.accept(rig.tenant_id, text(rig.numbers[0], to="+15559990042",
                                                           body="Your order is ready"))
    await rig.finished(campaign.id)

    async def api_sent() -> bool:
        return any(s.outbox_id == accepted.message.id for s in rig.host.sends())

    await rig.wait(api_sent, "the API message to be sent")
    order = [s.outbox_id for s in rig.host.sends()]
    queued_before = {row[0] for row in await rig.store.fetchall(
        "SELECT id FROM messages WHERE source = 'campaign' AND rowid < "
        "(SELECT rowid FROM messages WHERE id = ?)", (accepted.message.id,))}
    overtaken = queued_before & set(order[order.index(accepted.message.id) + 1:])
    assert overtaken, "campaign messages queued before the API send went after it"
