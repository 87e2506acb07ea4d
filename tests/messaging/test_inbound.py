"""Inbound messages and receipts: one write each, deduplicated, forward-only statuses."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from whatsdex.messaging.inbound import Inbound
from whatsdex.sessions import protocol

from .conftest import Rig, add_webhook, make_number, make_tenant, text, webhook_events

PHONE = "15559990001"
JID = f"{PHONE}@s.whatsapp.net"
LID = "230000000000001@lid"
_seq = iter(range(1, 1_000_000))


def inbound(session: str, body: str = "hello", *, wa_id: str | None = None, **more: Any
            ) -> protocol.InboundMessage:
    person = protocol.Person(jid=JID, lid=LID, phone=PHONE)
    values: dict[str, Any] = {
        "session": session, "wa_id": wa_id or f"3A{next(_seq):018d}", "chat": person,
        "sender": person, "timestamp_ms": 1_790_000_000_000 + next(_seq), "kind": "text",
        "text": body, "push_name": "Ana",
    }
    values.update(more)
    return protocol.InboundMessage(**values)


def receipt(session: str, ids: list[str], status: str) -> protocol.ReceiptEvent:
    person = protocol.Person(jid=JID, lid=LID, phone=PHONE)
    return protocol.ReceiptEvent(session=session, chat=person, sender=person, message_ids=ids,
                                 status=status,  # type: ignore[arg-type]
                                 timestamp_ms=1_790_000_100_000 + next(_seq))


@pytest.fixture
async def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def setup(rig: Rig) -> tuple[str, str]:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    await add_webhook(rig.store, tenant)
    return tenant, number


async def one(rig: Rig, sql: str, *params: Any) -> sqlite3.Row:
    row = await rig.store.fetchone(sql, params)
    assert row is not None, sql
    return row


async def test_a_message_stores_contact_chat_message_and_event(rig: Rig) -> None:
    tenant, number = await setup(rig)
    media = {"type": "image", "mimetype": "image/jpeg", "size": 2048, "sha256": "ab" * 32,
             "message": "c2VjcmV0"}
    async with rig.bus.subscribe(tenant) as bus:
        await rig.ingest.handle(tenant, inbound(number, "Is my order ready?", wa_id="3AONE",
                                                kind="image", media=media))
        published = bus.get_nowait()
    contact = await one(rig, "SELECT id, phone, jid, lid, push_name FROM contacts")
    assert tuple(contact)[1:] == (PHONE, JID, LID, "Ana")
    chat = await one(rig, "SELECT id, jid, lid, contact_id, name, last_preview, unread, "
                          "is_group FROM chats")
    assert tuple(chat)[1:] == (JID, LID, contact["id"], "Ana", "Is my order ready?", 1, 0)
    message = await one(rig, "SELECT id, direction, status, wa_id, sender_jid, sender_lid, "
                             "sender_phone, kind, text, wa_timestamp FROM messages")
    assert tuple(message)[1:9] == ("in", "received", "3AONE", JID, LID, PHONE, "image",
                                   "Is my order ready?")
    [(event_type, data)] = await webhook_events(rig.store, tenant)
    assert event_type == "message.received"
    assert data["id"] == message["id"] and data["session_id"] == number
    assert data["chat"] == JID and data["chat_id"] == chat["id"]
    assert data["sender"] == {"jid": JID, "lid": LID, "phone": PHONE, "push_name": "Ana"}
    assert (data["kind"], data["text"]) == ("image", "Is my order ready?")
    assert data["media"] == {k: v for k, v in media.items() if k != "message"}
    stored_media = await one(rig, "SELECT json_extract(payload, '$.media.message') "
                                  "FROM messages")
    assert stored_media[0] == "c2VjcmV0"  # kept for downloading, never sent out
    assert data["timestamp"] == message["wa_timestamp"] and data["from_me"] is False
    assert published.type == "message.received" and published.data == data


async def test_a_redelivered_message_is_acknowledged_not_repeated(rig: Rig) -> None:
    tenant, number = await setup(rig)
    event = inbound(number, wa_id="3ASAME")
    async with rig.bus.subscribe(tenant) as bus:
        await rig.ingest.handle(tenant, event)
        await rig.ingest.handle(tenant, event)  # the engine crashed before seeing the ack
        await asyncio.gather(*(rig.ingest.handle(tenant, event) for _ in range(5)))
        assert bus.qsize() == 1
    assert (await one(rig, "SELECT count(*), max(unread) FROM chats JOIN messages "
                           "ON messages.chat_id = chats.id"))[:] == (1, 1)
    assert len(await webhook_events(rig.store, tenant)) == 1
    # The same wa_id on another number is another message.
    other = await make_number(rig.store, tenant, phone="15550000002")
    await rig.ingest.handle(tenant, inbound(other, wa_id="3ASAME"))
    assert (await one(rig, "SELECT count(*) FROM messages"))[0] == 2


async def test_lid_senders_meet_their_phone_number(rig: Rig) -> None:
    tenant, number = await setup(rig)
    lid_only = protocol.Person(jid=LID, lid=LID)
    await rig.ingest.handle(tenant, inbound(number, chat=lid_only, sender=lid_only,
                                            push_name="Ana"))
    first = await one(rig, "SELECT id, phone, jid, lid FROM contacts")
    assert tuple(first)[1:] == ("", "", LID)
    await rig.ingest.handle(tenant, inbound(number, push_name="Ana B."))
    rows = await rig.store.fetchall("SELECT id, phone, jid, lid, push_name FROM contacts")
    assert [tuple(r) for r in rows] == [(first["id"], PHONE, JID, LID, "Ana B.")]
    # Device suffixes do not make a second person.
    device = protocol.Person(jid=f"{PHONE}:7@s.whatsapp.net", lid=LID)
    await rig.ingest.handle(tenant, inbound(number, sender=device, chat=device))
    assert (await one(rig, "SELECT count(*) FROM contacts"))[0] == 1
    senders = await rig.store.fetchall("SELECT DISTINCT sender_phone FROM messages")
    assert {r[0] for r in senders} == {"", PHONE}


async def test_messages_sent_from_the_phone(rig: Rig) -> None:
    tenant, number = await setup(rig)
    me = protocol.Person(jid="15550000001@s.whatsapp.net", phone="15550000001")
    them = protocol.Person(jid=JID, lid=LID, phone=PHONE)
    await rig.ingest.handle(tenant, inbound(number, "on my way", chat=them, sender=me,
                                            from_me=True, push_name="Shop"))
    row = await one(rig, "SELECT direction, status, sent_at IS NOT NULL, source FROM messages")
    assert tuple(row) == ("out", "sent", 1, "")
    chat = await one(rig, "SELECT unread, last_preview, name FROM chats")
    assert tuple(chat) == (0, "on my way", "")
    contact = await one(rig, "SELECT phone, push_name FROM contacts")
    assert tuple(contact) == (PHONE, "")  # the other person, not us, and not our push name
    [(event_type, data)] = await webhook_events(rig.store, tenant)
    assert (event_type, data["source"], data["from_me"]) == ("message.sent", "phone", True)


async def test_group_messages(rig: Rig) -> None:
    tenant, number = await setup(rig)
    group = protocol.Person(jid="120363025246125888@g.us")
    await rig.ingest.handle(tenant, inbound(number, "hi all", chat=group, is_group=True))
    chat = await one(rig, "SELECT jid, is_group, contact_id, name, unread FROM chats")
    assert tuple(chat) == ("120363025246125888@g.us", 1, None, "", 1)
    assert (await one(rig, "SELECT phone FROM contacts"))[0] == PHONE


async def test_edits_deletions_and_reactions_act_on_their_message(rig: Rig) -> None:
    tenant, number = await setup(rig)
    await rig.ingest.handle(tenant, inbound(number, "see you at 5", wa_id="3AORIG"))
    original = await one(rig, "SELECT id, chat_id FROM messages WHERE wa_id = '3AORIG'")
    await rig.ingest.handle(tenant, inbound(number, "see you at 6", wa_id="3AEDIT",
                                            kind="edit", edited_id="3AORIG"))
    edited = await one(rig, "SELECT text, edited_at FROM messages WHERE id = ?", original["id"])
    assert edited["text"] == "see you at 6" and edited["edited_at"]
    found = await rig.store.fetchall(
        "SELECT m.id FROM messages_fts f JOIN messages m ON m.rowid = f.rowid "
        "WHERE messages_fts MATCH ?", ('"6"',))
    assert [r[0] for r in found] == [original["id"]]
    assert not await rig.store.fetchall(
        "SELECT rowid FROM messages_fts WHERE messages_fts MATCH '\"5\"'")
    await rig.ingest.handle(tenant, inbound(number, "", wa_id="3AREACT", kind="reaction",
                                            reaction_to="3AORIG", reaction="❤️"))
    reaction = await one(rig, "SELECT kind, text, payload FROM messages WHERE wa_id = '3AREACT'")
    assert reaction["kind"] == "reaction" and reaction["text"] == ""
    assert f'"message_id":"{original["id"]}"' in reaction["payload"]
    await rig.ingest.handle(tenant, inbound(number, "", wa_id="3ADEL", kind="delete",
                                            deleted_id="3AORIG"))
    assert (await one(rig, "SELECT deleted_at FROM messages WHERE id = ?", original["id"]))[0]
    # None of these is a new message of the chat: its preview and unread count stay.
    chat = await one(rig, "SELECT last_preview, unread FROM chats")
    assert tuple(chat) == ("see you at 5", 1)
    kinds = [e[1]["kind"] for e in await webhook_events(rig.store, tenant)]
    assert kinds == ["text", "edit", "reaction", "delete"]
    # Redelivered, an edit is not applied (or announced) twice.
    await rig.ingest.handle(tenant, inbound(number, "see you at 7", wa_id="3AEDIT",
                                            kind="edit", edited_id="3AORIG"))
    assert (await one(rig, "SELECT text FROM messages WHERE id = ?", original["id"]))[0] == (
        "see you at 6")


async def test_replies_point_at_our_copy_of_the_quoted_message(rig: Rig) -> None:
    tenant, number = await setup(rig)
    await rig.ingest.handle(tenant, inbound(number, "first", wa_id="3AFIRST"))
    await rig.ingest.handle(tenant, inbound(number, "about that", quoted_id="3AFIRST"))
    await rig.ingest.handle(tenant, inbound(number, "and this", quoted_id="3AUNKNOWN"))
    first = (await one(rig, "SELECT id FROM messages WHERE wa_id = '3AFIRST'"))[0]
    rows = await rig.store.fetchall(
        "SELECT quoted_id, payload FROM messages WHERE text != 'first' ORDER BY created_at")
    assert [r[0] for r in rows] == [first, ""]
    assert '"quoted_wa_id":"3AUNKNOWN"' in rows[1][1]


async def sent_message(rig: Rig, tenant: str, number: str, wa_id: str) -> str:
    accepted = await rig.outbox.accept(tenant, text(number))
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE messages SET status = 'sent', wa_id = ?, sent_at = '2026-01-01T00:00:00.000Z' "
        "WHERE id = ?", (wa_id, accepted.message.id)))
    return accepted.message.id


async def test_receipts_only_move_statuses_forward(rig: Rig) -> None:
    tenant, number = await setup(rig)
    one_id = await sent_message(rig, tenant, number, "3EB0AAA")
    two_id = await sent_message(rig, tenant, number, "3EB0BBB")
    await rig.ingest.handle(tenant, receipt(number, ["3EB0AAA", "3EB0BBB"], "delivered"))
    await rig.ingest.handle(tenant, receipt(number, ["3EB0AAA"], "read"))
    await rig.ingest.handle(tenant, receipt(number, ["3EB0AAA", "3EB0BBB"], "delivered"))
    await rig.ingest.handle(tenant, receipt(number, ["3EB0BBB"], "played"))
    await rig.ingest.handle(tenant, receipt(number, ["3EB0BBB"], "read"))
    rows = {r["id"]: r for r in await rig.store.fetchall(
        "SELECT id, status, delivered_at, read_at, played_at FROM messages")}
    assert rows[one_id]["status"] == "read"
    assert rows[one_id]["delivered_at"] < rows[one_id]["read_at"]
    assert rows[one_id]["played_at"] is None
    # `played` implies read: its earlier steps are filled in.
    assert rows[two_id]["status"] == "played"
    assert rows[two_id]["read_at"] == rows[two_id]["played_at"]
    statuses = [(d["id"], d["previous"], d["status"])
                for t, d in await webhook_events(rig.store, tenant) if t == "message.status"]
    assert statuses == [(one_id, "sent", "delivered"), (two_id, "sent", "delivered"),
                        (one_id, "delivered", "read"), (two_id, "delivered", "played")]


async def test_a_receipt_overtaking_its_send_is_applied_when_the_send_commits(rig: Rig) -> None:
    tenant, number = await setup(rig)
    accepted = await rig.outbox.accept(tenant, text(number))
    await rig.ingest.handle(tenant, receipt(number, ["3EB0LATE"], "read"))
    assert (await one(rig, "SELECT status FROM messages"))[0] == "queued"
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE messages SET status = 'sent', wa_id = '3EB0LATE' WHERE id = ?",
        (accepted.message.id,)))

    async def read() -> bool:
        return (await one(rig, "SELECT status FROM messages"))[0] == "read"

    await rig.wait(read, "the remembered receipt to be applied", timeout=5)
    row = await one(rig, "SELECT delivered_at, read_at FROM messages")
    assert row[0] and row[1]


async def test_after_inbound_callbacks_run_in_the_same_write(rig: Rig) -> None:
    tenant, number = await setup(rig)
    seen: list[Inbound] = []

    def note(conn: sqlite3.Connection, message: Inbound) -> None:
        # Sees the message inside the transaction, and may change things with it.
        row = conn.execute("SELECT text FROM messages WHERE id = ?", (message.message_id,))
        assert row.fetchone()[0] == message.text
        seen.append(message)
        if message.text == "STOP":
            conn.execute("UPDATE contacts SET opt_status = 'opted_out' WHERE id = ?",
                         (message.contact_id,))
        if message.text == "boom":
            raise RuntimeError("a callback failed")

    rig.ingest.after_inbound.append(note)
    await rig.ingest.handle(tenant, inbound(number, "STOP"))
    assert (await one(rig, "SELECT opt_status FROM contacts"))[0] == "opted_out"
    assert (seen[0].kind, seen[0].sender_phone, seen[0].from_me) == ("text", PHONE, False)
    with pytest.raises(RuntimeError):
        await rig.ingest.handle(tenant, inbound(number, "boom", wa_id="3ABOOM"))
    # Nothing of the failed event was kept (and the supervisor does not ack it).
    assert not await rig.store.fetchall("SELECT 1 FROM messages WHERE wa_id = '3ABOOM'")
    assert len(await webhook_events(rig.store, tenant)) == 1
