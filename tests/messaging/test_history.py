"""History queries: cursor pages, filters, full-text search, chats, read marks, query plans."""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, NotFound
from whatsdex.messaging import history
from whatsdex.sessions import protocol
from whatsdex.store import Store

from .conftest import FakeHost, Rig, make_number, make_tenant, text
from .test_inbound import inbound


@pytest.fixture
async def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def all_pages(fetch: Callable[[str | None], Any]) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        page = await fetch(cursor)
        pages.append([item.id for item in page.items])
        cursor = page.next_cursor
        if cursor is None:
            return pages


async def test_cursor_pages_are_stable_while_messages_arrive(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    # The controlled clock stands still: many messages share one created_at, like a burst.
    for i in range(25):
        await rig.ingest.handle(tenant, inbound(number, f"message {i}"))
        if i % 4 == 0:
            rig.clock.now += 1
    chat_id = await rig.store.fetchval("SELECT id FROM chats")
    everything = await rig.store.fetchall(
        "SELECT id FROM messages ORDER BY created_at DESC, id DESC")
    first = await history.list_messages(rig.store, tenant, chat_id=chat_id, limit=10)
    assert [m.id for m in first.items] == [r[0] for r in everything[:10]]
    for i in range(5):  # newer messages arrive between the pages
        await rig.ingest.handle(tenant, inbound(number, f"late {i}"))
    rest, cursor = [], first.next_cursor
    while cursor:
        page = await history.list_messages(rig.store, tenant, chat_id=chat_id, limit=10,
                                           cursor=cursor)
        rest += [m.id for m in page.items]
        cursor = page.next_cursor
    assert [m.id for m in first.items] + rest == [r[0] for r in everything]
    with pytest.raises(BadRequest) as caught:
        await history.list_messages(rig.store, tenant, cursor="bm90IGEgY3Vyc29y")
    assert caught.value.detail == {"field": "cursor"}


async def test_filters(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    other_number = await make_number(rig.store, tenant, phone="15550000002")
    await rig.ingest.handle(tenant, inbound(number, "in one"))
    rig.clock.now += 10
    middle = iso(rig.clock.now)
    out = (await rig.outbox.accept(tenant, text(number, body="out one"))).message.id
    rig.clock.now += 10
    await rig.ingest.handle(tenant, inbound(other_number, "in two"))

    async def texts(**filters: Any) -> list[str]:
        page = await history.list_messages(rig.store, tenant, **filters)
        return [m.text for m in page.items]

    assert await texts() == ["in two", "out one", "in one"]
    assert await texts(direction="in") == ["in two", "in one"]
    assert await texts(direction="out", status="queued") == ["out one"]
    assert await texts(session_id=number) == ["out one", "in one"]
    assert await texts(since=middle) == ["in two", "out one"]
    assert await texts(until=middle) == ["in one"]
    assert await texts(since=middle, until=iso(rig.clock.now)) == ["out one"]
    other = await make_tenant(rig.store, name="Other")
    assert (await history.list_messages(rig.store, other)).items == []
    fetched = await history.get_message(rig.store, tenant, out)
    assert fetched.status == "queued" and fetched.sent_at is None
    with pytest.raises(NotFound):
        await history.get_message(rig.store, other, out)
    for bad in ({"direction": "sideways"}, {"status": "lost"}, {"since": "yesterday"},
                {"limit": 0}, {"limit": 201}):
        with pytest.raises(BadRequest):
            await history.list_messages(rig.store, tenant, **bad)


async def test_full_text_search(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    other = await make_tenant(rig.store, name="Other")
    other_number = await make_number(rig.store, other, phone="15550000009")
    for body in ("Where is my order #1234?", "Order shipped today", "Thanks!",
                 'He said "NEAR" AND OR NOT * ( )', "ordering more tomorrow"):
        await rig.ingest.handle(tenant, inbound(number, body))
    await rig.ingest.handle(other, inbound(other_number, "my order too"))

    async def search(query: str, **more: Any) -> list[str]:
        page = await history.list_messages(rig.store, tenant, query=query, **more)
        return [m.text for m in page.items]

    assert await search("order") == ["ordering more tomorrow", "Order shipped today",
                                     "Where is my order #1234?"]
    assert await search("order shipped") == ["Order shipped today"]
    assert await search("ord") == await search("order")  # the last word is a prefix
    assert await search('"NEAR" AND OR') == ['He said "NEAR" AND OR NOT * ( )']
    for hostile in ("*", "(", "NOT", "a OR", 'x" OR "y', "NEAR(a b)", "col:order", "^order"):
        await search(hostile)  # never a syntax error
    assert await search("nothing-like-this") == []
    assert await search("order", direction="out") == []
    pages = await all_pages(lambda cursor: history.list_messages(
        rig.store, tenant, query="order", limit=1, cursor=cursor))
    assert [len(p) for p in pages] == [1, 1, 1]
    with pytest.raises(BadRequest):
        await search('"" ')


async def test_chats_newest_first_with_unread_counts(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    second = await make_number(rig.store, tenant, phone="15550000002")
    people = [protocol.Person(jid=f"1555888000{i}@s.whatsapp.net", phone=f"1555888000{i}")
              for i in range(5)]
    for i, person in enumerate(people):
        for _ in range(i + 1):
            rig.clock.now += 1
            await rig.ingest.handle(tenant, inbound(number if i < 4 else second, f"from {i}",
                                                    chat=person, sender=person,
                                                    push_name=f"Person {i}"))
    page = await history.list_chats(rig.store, tenant)
    assert [(c.phone, c.unread) for c in page.items] == [
        (people[i].phone, i + 1) for i in reversed(range(5))]
    assert page.items[0].contact_name == "Person 4" and page.next_cursor is None
    only = await history.list_chats(rig.store, tenant, number)
    assert len(only.items) == 4
    assert [c.name for c in (await history.list_chats(rig.store, tenant,
                                                      query="person 2")).items] == ["Person 2"]
    assert len((await history.list_chats(rig.store, tenant, query="15558880001")).items) == 1
    pages = await all_pages(lambda cursor: history.list_chats(rig.store, tenant, limit=2,
                                                              cursor=cursor))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [c.id for c in page.items]
    other = await make_tenant(rig.store, name="Other")
    assert (await history.list_chats(rig.store, other)).items == []


async def test_mark_read_confirms_to_each_sender(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    host = FakeHost(rig.clock)
    rig.supervisor.add(tenant, number, host)
    group = protocol.Person(jid="120363025246125888@g.us")
    ana = protocol.Person(jid="15558880001@s.whatsapp.net", phone="15558880001")
    bob = protocol.Person(jid="15558880002@s.whatsapp.net", phone="15558880002")
    for sender, wa_id in ((ana, "3AA1"), (bob, "3AB1"), (ana, "3AA2")):
        await rig.ingest.handle(tenant, inbound(number, "hi", wa_id=wa_id, chat=group,
                                                sender=sender, is_group=True))
    chat_id = str(await rig.store.fetchval("SELECT id FROM chats"))
    result = await history.mark_read(rig.store, rig.supervisor,  # type: ignore[arg-type]
                                     rig.bus, rig.clock, tenant, chat_id)
    assert (result.unread_before, result.receipts_sent) == (3, 3)
    calls = [c for _, c in host.calls if isinstance(c, protocol.MarkRead)]
    assert {(c.chat, c.sender, tuple(c.message_ids)) for c in calls} == {
        (group.jid, ana.jid, ("3AA1", "3AA2")), (group.jid, bob.jid, ("3AB1",))}
    assert await rig.store.fetchval("SELECT unread FROM chats") == 0
    statuses = await rig.store.fetchall("SELECT DISTINCT status FROM messages")
    assert [r[0] for r in statuses] == ["read"]
    again = await history.mark_read(rig.store, rig.supervisor,  # type: ignore[arg-type]
                                    rig.bus, rig.clock, tenant, chat_id)
    assert (again.unread_before, again.messages) == (0, [])
    # Disconnected: marked here, no receipts (nothing to send them with).
    await rig.ingest.handle(tenant, inbound(number, "more", chat=group, sender=ana,
                                            is_group=True))
    rig.supervisor.live[number].status = "reconnecting"
    offline = await history.mark_read(rig.store, rig.supervisor,  # type: ignore[arg-type]
                                      rig.bus, rig.clock, tenant, chat_id)
    assert (offline.unread_before, len(offline.messages), offline.receipts_sent) == (1, 1, 0)
    with pytest.raises(NotFound):
        await history.mark_chat_read(rig.store, "ten_other", chat_id, now=rig.clock())


# -- query plans on many rows ----------------------------------------------------------------------


WORDS = ("order", "invoice", "delivery", "thanks", "hello", "price", "refund", "tomorrow",
         "address", "payment", "photo", "status")


def fill(conn: sqlite3.Connection, tenant: str, sessions: list[str], count: int,
         start: float) -> None:
    """`count` messages over 200 chats: a year of a busy tenant, in one transaction."""
    rng = random.Random(5)
    conn.execute("PRAGMA cache_size = -65536")  # a bulk load: keep the indexes in memory
    chats = []
    for i in range(200):
        chat_id = f"cht_bulk{tenant[-6:]}{i:04d}"
        session = sessions[i % len(sessions)]
        chats.append((chat_id, session))
        conn.execute(
            "INSERT INTO chats (id, tenant_id, session_id, jid, last_message_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (chat_id, tenant, session, f"1555700{i:04d}@s.whatsapp.net", iso(start + count)))
    rows = []
    for n in range(count):
        chat_id, session = chats[n % len(chats)]
        inbound = n % 3 != 0
        rows.append((
            f"msg_bulk{tenant[-6:]}{n:07d}", tenant, session, chat_id,
            "in" if inbound else "out", f"3A{tenant[-6:]}{n:012d}",
            " ".join(rng.choice(WORDS) for _ in range(4)) if n % 5 == 1 else "",
            "received" if inbound else "read", iso(start + n * 0.5),
        ))
    conn.executemany(
        "INSERT INTO messages (id, tenant_id, session_id, chat_id, direction, wa_id, text, "
        "status, kind, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'text', ?)", rows)


class Recorder:
    """Captures the SQL the history functions send to the store."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements: list[tuple[str, Any]] = []
        for name in ("fetchall", "fetchone"):
            original = getattr(store, name)

            async def recorded(sql: str, params: Any = (), _original: Any = original) -> Any:
                self.statements.append((sql, params))
                return await _original(sql, params)

            monkeypatch.setattr(store, name, recorded)

    def take(self) -> list[tuple[str, Any]]:
        taken, self.statements = self.statements, []
        return taken


def plan(conn: sqlite3.Connection, sql: str, params: Any) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()]


def full_scans(steps: list[str]) -> list[str]:
    """Plan steps that read a whole table (a covering or partial index search is fine)."""
    return [s for s in steps if s.startswith("SCAN ") and "VIRTUAL TABLE" not in s
            and "USING COVERING INDEX messages_outbox" not in s]


async def test_queries_use_indexes_on_many_messages(rig: Rig, monkeypatch: pytest.MonkeyPatch
                                                    ) -> None:
    tenant = await make_tenant(rig.store)
    sessions = [await make_number(rig.store, tenant, phone=f"1555000000{i}") for i in range(3)]
    other = await make_tenant(rig.store, name="Neighbour")
    other_session = await make_number(rig.store, other, phone="15550000009")
    started = time.monotonic()
    await rig.store.write(lambda conn: fill(conn, tenant, sessions, 100_000, 1_700_000_000.0))
    await rig.store.write(lambda conn: fill(conn, other, [other_session], 20_000,
                                            1_700_000_000.0))
    await rig.store.write(lambda conn: conn.execute("ANALYZE"))
    fill_seconds = time.monotonic() - started
    chat_id = "cht_bulk" + tenant[-6:] + "0006"  # a chat whose messages have text
    recorder = Recorder(rig.store, monkeypatch)
    timings: dict[str, float] = {}

    async def timed(name: str, call: Any) -> Any:
        begun = time.perf_counter()
        result = await call
        timings[name] = (time.perf_counter() - begun) * 1000
        return result

    chat_page = await timed("chat view", history.list_messages(
        rig.store, tenant, chat_id=chat_id, limit=50))
    chat_sql = recorder.take()
    second = await timed("chat view, page 2", history.list_messages(
        rig.store, tenant, chat_id=chat_id, limit=50, cursor=chat_page.next_cursor))
    chat_sql += recorder.take()
    tenant_page = await timed("tenant history", history.list_messages(
        rig.store, tenant, limit=50, direction="in"))
    tenant_sql = recorder.take()
    found = await timed("search", history.list_messages(
        rig.store, tenant, query="refund invoice", limit=50))
    search_sql = recorder.take()
    found_in_chat = await timed("search in a chat", history.list_messages(
        rig.store, tenant, query="refund", chat_id=chat_id, limit=20))
    search_sql += recorder.take()
    chats = await timed("chat list", history.list_chats(rig.store, tenant, limit=50))
    chats_sql = recorder.take()
    recorder.take()

    assert len(chat_page.items) == 50 and len(second.items) == 50
    assert all(m.chat_id == chat_id for m in chat_page.items + second.items)
    assert len(tenant_page.items) == 50 and len(chats.items) == 50
    assert found.items and all("refund" in m.text and "invoice" in m.text for m in found.items)
    assert all(m.tenant_id == tenant for m in found.items)
    assert found_in_chat.items and all(m.chat_id == chat_id for m in found_in_chat.items)

    with rig.store.read_sync() as conn:
        plans = {name: [plan(conn, sql, params) for sql, params in statements]
                 for name, statements in (("chat", chat_sql), ("tenant", tenant_sql),
                                          ("search", search_sql), ("chats", chats_sql))}
    for name, steps_list in plans.items():
        for steps in steps_list:
            assert not full_scans(steps), (name, steps)
    flat = {name: " | ".join(" | ".join(s) for s in steps) for name, steps in plans.items()}
    assert "messages_chat" in flat["chat"], flat["chat"]
    assert "messages_tenant" in flat["tenant"], flat["tenant"]
    assert "VIRTUAL TABLE INDEX" in flat["search"], flat["search"]
    assert "TEMP B-TREE" not in flat["search"], flat["search"]  # no sort of all the matches
    assert "chats_recent" in flat["chats"], flat["chats"]
    # Each page costs milliseconds here; the benchmark runs the same on a million rows.
    assert max(timings.values()) < 500, timings
    print(f"\n100k+20k rows filled in {fill_seconds:.1f}s; query ms: "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


async def test_write_path_statements_use_indexes(rig: Rig) -> None:
    """The per-message statements of sending and receiving, planned on a filled table."""
    tenant = await make_tenant(rig.store)
    session = await make_number(rig.store, tenant)
    await rig.store.write(lambda conn: fill(conn, tenant, [session], 30_000, 1_700_000_000.0))
    await rig.store.write(lambda conn: conn.execute("ANALYZE"))
    statements = {
        "next due": (
            "SELECT m.id, c.jid, (SELECT jid FROM wa_sessions WHERE id = m.session_id) "
            "FROM messages m CROSS JOIN chats c ON c.id = m.chat_id WHERE m.session_id = ? "
            "AND m.status IN ('queued', 'sending') AND (m.next_attempt_at IS NULL "
            "OR m.next_attempt_at <= ?) AND m.tenant_id = ? "
            "ORDER BY m.priority DESC, m.created_at LIMIT 1", (session, "x", tenant)),
        "dedupe": ("SELECT id, direction, kind, status, sender_jid FROM messages "
                   "WHERE session_id = ? AND wa_id = ? AND tenant_id = ?",
                   (session, "3A1", tenant)),
        "explain queue": ("UPDATE messages SET status_reason = ? WHERE session_id = ? "
                          "AND status IN ('queued', 'sending') AND status = 'queued' "
                          "AND tenant_id = ? AND status_reason != ?", ("r", session, tenant, "r")),
        "queued numbers": ("SELECT DISTINCT session_id, tenant_id FROM messages "
                           "WHERE status IN ('queued', 'sending')", ()),
        "mark read": ("SELECT id, wa_id, sender_jid FROM messages WHERE chat_id = ? "
                      "AND +tenant_id = ? AND direction = 'in' AND status = 'received' "
                      "ORDER BY created_at DESC LIMIT ?", ("cht_x", tenant, 10)),
        "daily count": ("SELECT coalesce(sum(accepted), 0) FROM message_counts "
                        "WHERE tenant_id = ? AND day = ?", (tenant, "2026-01-01")),
        "key purge": ("DELETE FROM idempotency_keys WHERE created_at < ?", ("x",)),
    }
    with rig.store.read_sync() as conn:
        for name, (sql, params) in statements.items():
            steps = plan(conn, sql, params)
            scans = [s for s in full_scans(steps) if "COVERING INDEX" not in s
                     and "messages_outbox" not in s]
            assert not scans, (name, steps)
            if name == "next due":  # the queue's own order: nothing to sort
                assert "TEMP B-TREE" not in " ".join(steps), steps
