"""The outbox: which webhooks an event goes to, one shared event id, the exact envelope, written
in (and rolled back with) the caller's transaction, at the cost of one indexed read."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from whatsdex.clock import iso
from whatsdex.errors import BadRequest
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.webhooks import manage, outbox

from .conftest import Hub, Receiver, make_hub, signed_by, verifies


@pytest.mark.parametrize(("filters", "event", "wanted"), [
    (["*"], "message.received", True),
    (["*"], "campaign.finished", True),
    (["message.*"], "message.status", True),
    (["message.*"], "session.status", False),
    (["message.received"], "message.received", True),
    (["message.received"], "message.sent", False),
    (["session.status", "message.sent"], "message.sent", True),
    (["message.*"], "messages.x", False),  # a prefix means the family, not any text
    (["campaign.*"], "campaign.recipient.sent", True),
])
def test_filters(filters: list[str], event: str, wanted: bool) -> None:
    assert outbox.matches(filters, event) is wanted


def test_filters_are_validated() -> None:
    assert outbox.clean_filters([" Message.* ", "message.*", "session.status"]) == [
        "message.*", "session.status"]
    assert outbox.clean_filters(["campaign.recipient_sent"]) == ["campaign.recipient_sent"]
    for bad in (["nope"], ["foo.*"], ["message"], ["message.*.x"], [], ["*", "bad event"]):
        with pytest.raises(BadRequest) as caught:
            outbox.clean_filters(bad)
        assert caught.value.detail["field"] == "events"


@pytest.fixture
async def quiet_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    """A hub without a running dispatcher: these tests only look at the rows."""
    hub = await make_hub(tmp_path / "data")
    yield hub
    await hub.store.aclose()


async def test_one_delivery_per_matching_enabled_webhook(quiet_hub: Hub) -> None:
    hub = quiet_hub
    everything, _ = await hub.webhook("http://127.0.0.1:9/1", ["*"])
    messages, _ = await hub.webhook("http://127.0.0.1:9/2", ["message.*"])
    statuses, _ = await hub.webhook("http://127.0.0.1:9/3", ["session.status"])
    disabled, _ = await hub.webhook("http://127.0.0.1:9/4", ["*"])
    await manage.update_webhook(hub.store, CLI, hub.tenant.id, disabled, enabled=False,
                                allow_private=True, now=hub.clock())
    other_tenant = await tenants.create_tenant(hub.store, CLI, name="Other", plan_id="many",
                                               now=hub.clock())
    await manage.create_webhook(hub.store, hub.keyring, CLI, other_tenant.id,
                                url="http://127.0.0.1:9/b", events=["*"], description="",
                                allow_private=True, now=hub.clock())

    data = {"message_id": "m1", "text": "héllo \u2603", "from": "15551234567"}
    assert await hub.emit("message.received", data) == 2
    rows = await hub.store.fetchall("SELECT * FROM webhook_deliveries ORDER BY id")
    assert {row["webhook_id"] for row in rows} == {everything, messages}
    assert len({row["event_id"] for row in rows}) == 1
    assert rows[0]["event_id"].startswith("msg_")
    stamp = iso(hub.clock())
    for row in rows:
        assert row["tenant_id"] == hub.tenant.id and row["status"] == "pending"
        assert row["next_attempt_at"] == stamp and row["attempts"] == 0
        assert json.loads(row["payload"]) == {"type": "message.received", "timestamp": stamp,
                                              "data": data}
    assert "\u2603" in rows[0]["payload"]  # UTF-8 as is, not \u escapes

    assert await hub.emit("session.status", {"status": "connected"}) == 2
    assert await hub.emit("campaign.finished", {}) == 1
    ids = await hub.store.fetchall(
        "SELECT event_type, count(DISTINCT event_id) AS n FROM webhook_deliveries "
        "GROUP BY event_type")
    assert {row["event_type"]: row["n"] for row in ids} == {
        "message.received": 1, "session.status": 1, "campaign.finished": 1}
    hooks = await hub.store.fetchall(
        "SELECT webhook_id FROM webhook_deliveries WHERE event_type = 'session.status'")
    assert {row[0] for row in hooks} == {everything, statuses}


async def test_nothing_is_queued_when_the_change_rolls_back(quiet_hub: Hub) -> None:
    hub = quiet_hub
    await hub.webhook("http://127.0.0.1:9/1")
    stamp = iso(hub.clock())

    def change_then_fail(conn: sqlite3.Connection) -> None:
        outbox.enqueue(conn, hub.tenant.id, "message.received", {"n": 1}, now=stamp)
        raise RuntimeError("the message insert failed")

    with pytest.raises(RuntimeError):
        await hub.store.write(change_then_fail)
    assert await hub.store.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert await hub.emit("message.received", {"n": 2}) == 1


async def test_no_webhook_costs_one_indexed_read(quiet_hub: Hub) -> None:
    hub = quiet_hub
    await hub.webhook("http://127.0.0.1:9/1", ["message.*"])
    statements: list[str] = []
    stamp = iso(hub.clock())

    def traced(conn: sqlite3.Connection) -> tuple[int, int, list[str]]:
        conn.set_trace_callback(statements.append)
        try:
            none = outbox.enqueue(conn, hub.tenant.id, "session.status", {}, now=stamp)
            one = outbox.enqueue(conn, hub.tenant.id, "message.sent", {}, now=stamp)
        finally:
            conn.set_trace_callback(None)
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, events FROM webhooks "
            "WHERE tenant_id = ? AND enabled = 1", (hub.tenant.id,)).fetchall()
        return none, one, [str(row[-1]) for row in plan]

    none, one, plan = await hub.store.write(traced)
    assert (none, one) == (0, 1)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    assert len(selects) == 2 and len(inserts) == 1  # one read per event, one row per webhook
    assert any("webhooks_tenant" in step for step in plan), plan


async def test_session_status_through_the_outbox_is_delivered(hub: Hub, receiver: Receiver
                                                              ) -> None:
    """What the supervisor's transition write will do: enqueue `session.status` with it."""
    sessions, secret = await hub.webhook(receiver.url + "/sessions", ["session.*"])
    await hub.webhook(receiver.url + "/messages", ["message.*"])
    stamp = iso(hub.clock())
    transition = {"session_id": "wa_1", "status": "connected", "previous": "pairing",
                  "reason": "linked", "at": stamp}

    def transition_write(conn: sqlite3.Connection) -> int:
        # (the supervisor's own UPDATE of wa_sessions would be here, in the same transaction)
        return outbox.enqueue(conn, hub.tenant.id, "session.status", transition, now=stamp)

    assert await hub.store.write(transition_write) == 1
    await hub.run()
    [got] = receiver.to("/sessions")
    assert receiver.to("/messages") == []
    assert got.event == {"type": "session.status", "timestamp": stamp, "data": transition}
    assert verifies(secret, got) and signed_by(secret, got)
    [row] = await hub.deliveries(sessions)
    assert row["status"] == "delivered" and row["event_id"] == got.headers["webhook-id"]
