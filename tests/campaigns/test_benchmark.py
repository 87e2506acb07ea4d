"""How much a campaign costs: 10,000 recipients with no pacing.

The campaign's own bookkeeping (taking the audience, rendering, opt-out checks, queuing each
message in the outbox with its recipient row, following the outcomes) is measured with a
stand-in for the delivery service that marks queued messages sent in bulk, so the figure is
not the delivery's. Target: at most 1 ms of CPU per recipient (process CPU time: every thread,
the store's writer included). A second, smaller run goes through the real delivery service with a
fake engine, for the end-to-end rate. Both print what they measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable

from campaigns.conftest import ACTOR, Rig, add_contacts, add_template, new_campaign
from whatsdex.bus import BusEvent
from whatsdex.clock import iso

RECIPIENTS = 10_000
END_TO_END = 3_000  # the delivery's own cost is measured by the messaging benchmarks
CPU_BUDGET_MS = 1.0


def _mark_sent(conn: sqlite3.Connection, *, stamp: str) -> int:
    return conn.execute("UPDATE messages SET status = 'sent', sent_at = ? WHERE status = 'queued' "
                        "AND source = 'campaign'", (stamp,)).rowcount


async def _sink(rig: Rig, stop: asyncio.Event) -> None:
    """Marks every queued campaign message sent, in bulk, and says so on the bus."""
    while not stop.is_set():
        marked = await rig.store.write(functools.partial(_mark_sent, stamp=iso(rig.clock())))
        if marked:
            rig.supervisor.bus.publish(BusEvent(rig.tenant_id, "message.status",
                                                {"status": "sent"}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def _run(rig: Rig, recipients: int) -> tuple[float, float, str]:
    await add_contacts(rig.store, rig.tenant_id, recipients)
    template_id = await add_template(rig.store, rig.tenant_id)
    campaign = await new_campaign(rig.store, rig.tenant_id, template_id, rig.numbers,
                                  now=rig.clock())
    await rig.engine.start()
    cpu, wall = time.process_time(), time.perf_counter()
    await rig.engine.start_campaign(ACTOR, rig.tenant_id, campaign.id)
    await rig.finished(campaign.id, timeout=120)
    return time.process_time() - cpu, time.perf_counter() - wall, campaign.id


async def test_ten_thousand_recipients_cost_under_a_millisecond_each(
        make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(numbers=2)
    stop = asyncio.Event()
    sink = asyncio.ensure_future(_sink(rig, stop))
    try:
        cpu, wall, campaign_id = await _run(rig, RECIPIENTS)
    finally:
        stop.set()
        await sink
    sent = await rig.store.fetchval("SELECT sent FROM campaigns WHERE id = ?", (campaign_id,))
    messages = await rig.store.fetchval(
        "SELECT count(DISTINCT message_id) FROM campaign_recipients WHERE campaign_id = ?",
        (campaign_id,))
    assert sent == messages == RECIPIENTS
    per_recipient = cpu / RECIPIENTS * 1000
    print(f"\ncampaign bookkeeping, {RECIPIENTS} recipients, 2 numbers, no pacing: "
          f"{RECIPIENTS / wall:.0f} recipients/s, {per_recipient:.3f} ms CPU per recipient "
          f"({cpu:.2f} s CPU, {wall:.2f} s wall, {rig.store.transactions} transactions)")
    assert per_recipient <= CPU_BUDGET_MS


async def test_three_thousand_recipients_through_the_delivery_service(
        make_rig: Callable[..., Awaitable[Rig]]) -> None:
    rig = await make_rig(numbers=2)
    await rig.delivery.start()
    cpu, wall, _ = await _run(rig, END_TO_END)
    assert len({s.outbox_id for s in rig.host.sends()}) == END_TO_END
    assert all(n == 1 for n in rig.host.delivered.values())
    print(f"\nend to end (delivery service, fake engine), {END_TO_END} recipients: "
          f"{END_TO_END / wall:.0f} recipients/s, {cpu / END_TO_END * 1000:.3f} ms CPU per "
          f"recipient, campaign and delivery together")
