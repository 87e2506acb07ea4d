"""STOP/START keywords: opt-out inside the inbound write, one confirmation, campaigns' check."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from whatsdex.bus import EventBus
from whatsdex.clock import iso
from whatsdex.contacts import optout, service
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.messaging.inbound import Inbound, MessageIngest
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Outbox
from whatsdex.sessions import protocol
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions
from whatsdex.store import contact_lists as rows
from whatsdex.store.ids import new_id
from whatsdex.store.records import WaSession
from whatsdex.tasks import BackgroundTasks


@pytest.mark.parametrize(("text", "kind"), [
    ("STOP", "stop"), ("stop", "stop"), ("  Stop!  ", "stop"), ("Stop.", "stop"),
    ("UNSUBSCRIBE", "stop"), ("Arrêt", "stop"), ("ARRET", "stop"), ("baja", "stop"),
    ("Stopp", "stop"), ("abmelden", "stop"), ("desiscriviti", "stop"), ("SAIR", "stop"),
    ("Cancelar", "stop"), ("ОТПИСАТЬСЯ", "stop"), ("إلغاء", "stop"),
    ("\uff33\uff54\uff4f\uff50", "stop"),  # fullwidth letters, as some keyboards type
    ("START", "start"), ("unstop", "start"), ("Subscribe", "start"), ("alta", "start"),
    ("iniciar", "start"),
    ("stop please", None), ("please stop", None), ("STOPPING", None), ("", None),
    ("start the order", None), ("s t o p", None), ("x" * 5000, None),
])
def test_keywords(text: str, kind: str | None) -> None:
    assert optout.keyword_of(text) == kind


@dataclass
class Scene:
    store: Store
    tenant_id: str
    session_id: str
    ingest: MessageIngest
    outbox: Outbox
    tasks: BackgroundTasks


@pytest.fixture
async def scene(store: Store, settings: Settings) -> AsyncIterator[Scene]:
    now = time.time()
    tenant = await tenants.create_tenant(store, CLI, name="Acme", plan_id="premium", now=now)
    session = WaSession(id=new_id("ses"), tenant_id=tenant.id, name="Front desk",
                        status="connected", status_reason="", status_since=iso(now),
                        desired="running", phone="15550001111",
                        jid="15550001111@s.whatsapp.net", lid="", push_name="",
                        created_at=iso(now), updated_at=iso(now))
    await store.write(lambda conn: wa_sessions.insert(conn, session))
    ingest = MessageIngest(store, EventBus(), time.time)
    outbox = Outbox(store, settings, time.time, MediaLibrary(store, settings, time.time))
    tasks = BackgroundTasks()
    ingest.after_inbound.append(optout.KeywordReplies(store, outbox, tasks))
    yield Scene(store, tenant.id, session.id, ingest, outbox, tasks)
    await tasks.close()


async def inbound(scene: Scene, text: str, phone: str = "4930555000", *,
                  is_group: bool = False) -> None:
    chat = protocol.Person(jid="120363000000@g.us") if is_group \
        else protocol.Person(jid=f"{phone}@s.whatsapp.net")
    await scene.ingest.handle(scene.tenant_id, protocol.InboundMessage(
        session=scene.session_id, wa_id=new_id("WA"), chat=chat,
        sender=protocol.Person(jid=f"{phone}@s.whatsapp.net"), is_group=is_group,
        timestamp_ms=int(time.time() * 1000), push_name="Ana", kind="text", text=text))
    for _ in range(200):  # the reply is queued by a background task after the commit
        if not len(scene.tasks):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the reply task did not finish")


async def replies(scene: Scene) -> list[tuple[str, str, str]]:
    found = await scene.store.fetchall(
        "SELECT m.text, c.jid, m.source FROM messages m JOIN chats c ON c.id = m.chat_id "
        "WHERE m.tenant_id = ? AND m.direction = 'out' ORDER BY m.created_at, m.rowid",
        (scene.tenant_id,))
    return [(r[0], r[1], r[2]) for r in found]


async def contact(scene: Scene, phone: str = "4930555000") -> rows.Contact:
    found = await scene.store.fetchval(
        "SELECT id FROM contacts WHERE tenant_id = ? AND phone = ?", (scene.tenant_id, phone))
    result = await rows.get(scene.store, scene.tenant_id, found)
    assert result is not None
    return result


async def test_stop_in_the_inbound_write_confirms_once(scene: Scene) -> None:
    await inbound(scene, "hello")
    assert (await contact(scene)).opt_status == "unknown"
    assert await replies(scene) == []

    await inbound(scene, "  Stop! ")
    ana = await contact(scene)
    assert (ana.opt_status, ana.opt_source) == ("opted_out", "keyword")
    jid = "4930555000@s.whatsapp.net"
    assert await replies(scene) == [(optout.STOP_CONFIRMATION, jid, "inbox")]

    await inbound(scene, "STOP")  # already out: nothing changes, no second confirmation
    await inbound(scene, "unsubscribe")
    assert (await contact(scene)).opt_changed_at == ana.opt_changed_at
    assert len(await replies(scene)) == 1
    assert await scene.store.write(
        lambda conn: optout.is_opted_out(conn, scene.tenant_id, ana.id))

    await inbound(scene, "START")
    back = await contact(scene)
    assert (back.opt_status, back.opt_source) == ("opted_in", "keyword")
    assert [r[0] for r in await replies(scene)] == [optout.STOP_CONFIRMATION,
                                                   optout.START_CONFIRMATION]
    await inbound(scene, "start")
    assert len(await replies(scene)) == 2
    assert not await scene.store.write(
        lambda conn: optout.is_opted_out(conn, scene.tenant_id, ana.id))
    actions = await scene.store.fetchall(
        "SELECT action, actor_type FROM audit_log WHERE object_id = ? ORDER BY id", (ana.id,))
    assert [tuple(a) for a in actions] == [("contact.opted_out", "system"),
                                           ("contact.opted_in", "system")]


async def test_group_messages_and_sentences_are_not_keywords(scene: Scene) -> None:
    await inbound(scene, "STOP", "4930555001", is_group=True)
    await inbound(scene, "please stop the music", "4930555001")
    assert (await contact(scene, "4930555001")).opt_status == "unknown"
    assert await replies(scene) == []


async def test_a_rolled_back_event_opts_nobody_out_and_sends_nothing(scene: Scene) -> None:
    def broken(conn: sqlite3.Connection, event: Inbound) -> None:
        raise RuntimeError("a later hook fails: the whole event rolls back")

    await inbound(scene, "hi", "4930555002")
    scene.ingest.after_inbound.append(broken)
    with pytest.raises(RuntimeError):
        await inbound(scene, "STOP", "4930555002")
    for _ in range(200):
        if not len(scene.tasks):
            break
        await asyncio.sleep(0.01)
    assert (await contact(scene, "4930555002")).opt_status == "unknown"
    assert await replies(scene) == []


async def test_handle_keyword_against_the_store(scene: Scene) -> None:
    """The hook's core, as campaigns and the inbox would see it, without the messaging layer."""
    db, tenant_id = scene.store, scene.tenant_id
    phone_row = await service.create(db, CLI, tenant_id, phone="+49 30 5550003",
                                     opt_status="opted_in", now=time.time())
    # The same person as WhatsApp first showed them: by LID only (an inbound before the phone
    # was known), and the phone row learned the LID later.
    lid_row = rows.Contact(
        id=new_id("con"), tenant_id=tenant_id, phone="", jid="", lid="998877@lid", name="",
        push_name="Ana", tags=[], custom={}, opt_status="unknown", opt_changed_at=None,
        opt_source="", created_at=iso(time.time()), updated_at=iso(time.time()))

    def prepare(conn: sqlite3.Connection) -> None:
        rows.insert(conn, lid_row)
        conn.execute("UPDATE contacts SET lid = '998877@lid' WHERE id = ?", (phone_row.id,))

    await db.write(prepare)
    now = time.time()
    reply = await db.write(lambda conn: optout.handle_keyword(conn, tenant_id, lid_row.id,
                                                              "stop", now))
    assert reply == optout.STOP_CONFIRMATION
    for contact_id in (lid_row.id, phone_row.id):
        row = await rows.get(db, tenant_id, contact_id)
        assert row is not None and row.opt_status == "opted_out" and row.opt_source == "keyword"
        assert await db.write(lambda conn, c=contact_id: optout.is_opted_out(conn, tenant_id, c))
    assert await db.write(lambda conn: optout.handle_keyword(
        conn, tenant_id, phone_row.id, "STOP", iso(now))) is None
    assert await db.write(lambda conn: optout.handle_keyword(
        conn, tenant_id, phone_row.id, "thanks", now)) is None
    assert await db.write(lambda conn: optout.handle_keyword(
        conn, tenant_id, "con_missing", "STOP", now)) is None
    assert not await db.write(lambda conn: optout.is_opted_out(conn, tenant_id, "con_missing"))


async def test_confirmation_is_idempotent(scene: Scene) -> None:
    first = await optout.send_confirmation(scene.outbox, scene.tenant_id,
                                           session_id=scene.session_id, to="+4930555009",
                                           text=optout.STOP_CONFIRMATION, inbound_id="msg_x")
    again = await optout.send_confirmation(scene.outbox, scene.tenant_id,
                                           session_id=scene.session_id, to="+4930555009",
                                           text=optout.STOP_CONFIRMATION, inbound_id="msg_x")
    assert first is not None and first == again
    assert len(await replies(scene)) == 1
    nowhere = await optout.send_confirmation(scene.outbox, scene.tenant_id,
                                             session_id="ses_missing", to="+4930555009",
                                             text="x", inbound_id="msg_y")
    assert nowhere is None  # logged, not raised: the opt-out itself is what matters
