"""End to end with the real app and the sandbox network in an engine host child process: sends
reach contacts exactly once (across a send failure, a simulated crash and a real host crash),
receipts move statuses on, inbound messages are committed before they are acknowledged."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import pytest

from whatsdex.messaging import history
from whatsdex.sessions import protocol, sandbox_network

from .conftest import WAIT, RunApp, Running, SkippingClock, add_webhook, text, wait_until

PHONE = "15551230001"
CONTACT = "15559990000"


def statuses(app: Running, *ids: str) -> list[str]:
    return [app.row("SELECT status FROM messages WHERE id = ?", i)[0] for i in ids]


def send(app: Running, tenant: str, session: str, body: str = "hello", **more: Any) -> str:
    accepted = app.call(app.outbox.accept, tenant, text(session, f"+{CONTACT}", body), **more)
    return str(accepted.message.id)


def test_a_backlog_commits_in_few_writes_in_order(run_app: RunApp) -> None:
    """What arrives while a commit runs is committed together, in arrival order."""
    app = run_app()
    tenant = app.tenant()
    app.call(add_webhook, app.store, tenant)
    session = app.link(tenant, PHONE)
    before = app.store.transactions
    result = app.sandbox(tenant, session, action="inbound", sender=CONTACT, text="backlog",
                         count=400)
    stored = app.rows("SELECT wa_id FROM messages WHERE direction = 'in' ORDER BY rowid")
    assert [r[0] for r in stored] == result["wa_ids"]
    assert app.row("SELECT unread, last_preview FROM chats")[:] == (400, "backlog")
    assert app.row("SELECT count(*) FROM webhook_deliveries "
                   "WHERE event_type = 'message.received'")[0] == 400
    assert app.store.transactions - before < 40  # not one transaction per message


def test_an_event_that_cannot_be_stored_holds_back_no_other(run_app: RunApp) -> None:
    """Events committed together are committed one by one when that fails: the one that cannot
    be stored stays unacknowledged (offered again later), the others are stored and acked."""
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    gate = threading.Event()

    def hold_then_refuse(conn: Any, message: Any) -> None:
        gate.wait(WAIT)  # in the writer: later messages queue up meanwhile
        if message.text == "poison":
            raise RuntimeError("cannot store this one")

    app.ingest.after_inbound.append(hold_then_refuse)
    supervisor = app.services.supervisor
    assert supervisor is not None

    def inbound(sender: str, body: str, count: int, recorded: int) -> None:
        app.client.blocking_portal.start_task_soon(functools.partial(
            supervisor.sandbox, tenant, session, action="inbound", sender=sender, text=body,
            count=count))
        wait_until(lambda: len(sandbox_network.inbound_messages(app.network, session))
                   == recorded, what="the network to hold the messages")

    inbound(CONTACT, "first", 1, recorded=1)  # its commit holds the writer
    inbound("15559990001", "poison", 1, recorded=2)  # these two come together next
    inbound("15559990002", "after", 20, recorded=22)
    gate.set()
    wait_until(lambda: app.row("SELECT count(*) FROM messages WHERE direction = 'in'")[0] == 21,
               what="every other message to be stored")
    wait_until(lambda: sum(1 for m in sandbox_network.inbound_messages(app.network, session)
                           if m["acked_at"]) == 21, what="the others to be acknowledged")
    [unacked] = [m for m in sandbox_network.inbound_messages(app.network, session)
                 if not m["acked_at"]]
    assert unacked["text"] == "poison"
    assert app.row("SELECT count(*) FROM messages WHERE text = 'poison'")[0] == 0


def test_a_send_is_delivered_and_read(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    app.call(add_webhook, app.store, tenant)
    session = app.link(tenant, PHONE)
    app.sandbox(tenant, session, action="receipts", delivered_after=0.05, read_after=0.1)
    message_id = send(app, tenant, session, "Your order shipped")
    wait_until(lambda: statuses(app, message_id) == ["read"], what="the message to be read")
    row = app.row("SELECT wa_id, sender_jid, attempts, sent_at, delivered_at, read_at "
                  "FROM messages WHERE id = ?", message_id)
    assert row[0].startswith("3EB0") and row[1] == f"{PHONE}@s.whatsapp.net" and row[2] == 1
    assert row[3] <= row[4] <= row[5]
    [delivery] = sandbox_network.deliveries(app.network, session)
    assert (delivery["outbox_id"], delivery["wa_id"], delivery["text"], delivery["to_jid"]) == (
        message_id, row[0], "Your order shipped", f"{CONTACT}@s.whatsapp.net")
    events = app.rows("SELECT event_type, payload FROM webhook_deliveries "
                      "WHERE event_type LIKE 'message.%' ORDER BY id")
    assert [e[0] for e in events] == ["message.sent", "message.status", "message.status"]
    assert '"status":"read"' in events[2][1]


def test_inbound_messages_are_committed_then_acknowledged(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    app.call(add_webhook, app.store, tenant)
    session = app.link(tenant, PHONE)
    result = app.sandbox(tenant, session, action="inbound", sender=CONTACT, text="Hi there",
                         count=25)
    # The action returns once the last message is committed by this server.
    stored = app.rows("SELECT wa_id, sender_lid, text FROM messages WHERE direction = 'in' "
                      "ORDER BY created_at, rowid")
    assert [r[0] for r in stored] == result["wa_ids"]
    assert all(r[1].endswith("@lid") and r[2] == "Hi there" for r in stored)
    contact = app.row("SELECT phone, jid, lid FROM contacts")
    assert (contact[0], contact[1], contact[2]) == (CONTACT, f"{CONTACT}@s.whatsapp.net",
                                                   stored[0][1])
    assert app.row("SELECT unread FROM chats")[0] == 25
    received = app.row("SELECT count(*) FROM webhook_deliveries "
                       "WHERE event_type = 'message.received'")[0]
    assert received == 25
    wait_until(lambda: all(m["acked_at"] for m in
                           sandbox_network.inbound_messages(app.network, session)),
               what="the network to see every message acknowledged")
    # Reading the chat sends read receipts through the engine.
    chat_id = app.row("SELECT id FROM chats")[0]
    assert app.services.supervisor is not None
    read = app.call(history.mark_read, app.store, app.services.supervisor, app.services.bus,
                    app.services.clock, tenant, chat_id)
    assert read.receipts_sent == 25
    reads = sandbox_network.reads(app.network, session)
    assert sorted(r["message_id"] for r in reads) == sorted(result["wa_ids"])


def test_a_failed_send_is_retried_with_the_same_outbox_id(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    app.call(app.delivery.stop)
    clock = SkippingClock()
    app.new_delivery(clock=clock, sleep=clock.sleep)
    app.sandbox(tenant, session, action="fail_sends", count=2)
    message_id = send(app, tenant, session)
    wait_until(lambda: statuses(app, message_id) in (["sent"], ["delivered"], ["read"]),
               what="the message to be sent after two failures")
    assert app.row("SELECT attempts FROM messages WHERE id = ?", message_id)[0] == 3
    # The backoff waits (5 s, then 30 s) were skipped, not slept.
    assert clock.sleeps[0] == pytest.approx(5.0, abs=0.5)
    assert 34.5 < sum(clock.sleeps) < 36.0
    assert sandbox_network.count_by_outbox(app.network) == {message_id: 1}


def test_a_row_left_sending_by_a_crash_reaches_the_contact_once(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    app.call(app.delivery.stop)  # the server "dies" with this message in flight
    message_id = send(app, tenant, session, "exactly once")
    app.call(app.store.write, lambda conn: conn.execute(
        "UPDATE messages SET status = 'sending', attempts = 1 WHERE id = ?", (message_id,)))
    # The engine had already handed it to the network before the crash.
    assert app.services.supervisor is not None
    host = app.services.supervisor.host_for(tenant, session)
    assert host is not None
    reply = app.call(host.call, protocol.Send(
        req=0, session=session, outbox_id=message_id, to=f"{CONTACT}@s.whatsapp.net",
        kind="text", text="exactly once"))
    assert reply.ok
    app.new_delivery()  # the restart
    wait_until(lambda: statuses(app, message_id)[0] in ("sent", "delivered", "read"),
               what="the reconciled message to be marked sent")
    rows = sandbox_network.deliveries(app.network, session)
    assert [(r["outbox_id"], r["attempts"]) for r in rows] == [(message_id, 2)]
    assert app.row("SELECT wa_id, attempts FROM messages WHERE id = ?", message_id)[:] == (
        reply.result["wa_id"], 2)


def test_an_engine_host_crash_mid_stream_loses_and_repeats_nothing(run_app: RunApp) -> None:
    app = run_app(send_min_gap_seconds=0.05)  # paced, so the crash lands mid-stream
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    ids = [send(app, tenant, session, f"message {i}") for i in range(40)]
    wait_until(lambda: len(sandbox_network.deliveries(app.network, session)) >= 5,
               what="a few sends before the crash")
    app.sandbox(tenant, session, action="crash_host")
    time.sleep(0.2)
    assert len(sandbox_network.deliveries(app.network, session)) < 40
    wait_until(lambda: all(s in ("sent", "delivered", "read") for s in statuses(app, *ids)),
               timeout=60, what="every message sent after the host restarted")
    counts = sandbox_network.count_by_outbox(app.network)
    assert counts == dict.fromkeys(ids, 1)
    texts = [r["text"] for r in sandbox_network.deliveries(app.network, session)]
    assert sorted(texts) == sorted(f"message {i}" for i in range(40))


def test_sends_wait_for_a_disconnected_number(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    assert app.services.supervisor is not None
    app.call(app.services.supervisor.stop_session, tenant, session)
    wait_until(lambda: app.services.supervisor.live[session].status == "stopped",  # type: ignore[union-attr]
               what="stopped")
    message_id = send(app, tenant, session)
    wait_until(lambda: "waiting for the number to connect" in app.row(
        "SELECT status_reason FROM messages WHERE id = ?", message_id)[0],
        what="the reason on the waiting message")
    started = time.monotonic()
    app.call(app.services.supervisor.start_session, tenant, session)
    wait_until(lambda: statuses(app, message_id)[0] in ("sent", "delivered", "read"),
               what="the message sent once the number is back")
    assert time.monotonic() - started < 10
    assert sandbox_network.count_by_outbox(app.network) == {message_id: 1}
