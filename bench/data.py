"""Deterministic data sets, written into a data dir's `whatsdex.db` through the real `Store`
and store modules (the same insert functions the product uses), before the server starts.

The same seed gives the same tenants' numbers, contacts, chats, messages (ids, texts, times)
and media bytes; only the tenants and API keys made by `harness.provision` differ per run.

Texts are drawn from a synthetic vocabulary with Zipf-like word frequencies, so full-text
search behaves as on real chats: `COMMON_WORD` is in about 1 message in 10, `RARE_WORD` in
about 1 in 1,000. Message counts per chat are skewed (a few very long conversations).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import hashlib
import itertools
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import Workspace
from whatsdex.store import Store, wa_sessions
from whatsdex.store import chats as chat_rows
from whatsdex.store import contacts as contact_rows
from whatsdex.store import media as media_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.messages import Message
from whatsdex.store.records import WaSession

COMMON_WORD = "hello"
RARE_WORD = "refund"
END = datetime(2026, 11, 22, tzinfo=UTC).timestamp()  # the data set's "now"
SPAN = 60 * 86_400.0  # messages spread over the 60 days before END
BATCH = 5_000  # messages per write transaction
MEDIA_CHUNK = 1 << 20

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Spec:
    tenants: int  # taken from the workspaces given
    numbers_per_tenant: int
    chats: int  # over all tenants
    messages: int  # over all tenants
    min_file_bytes: int = 0  # media rows pad the file up to this size
    seed: int = 20261122


@dataclass
class Generated:
    sessions: dict[str, list[str]] = field(default_factory=dict)  # tenant → numbers
    chats: dict[str, list[str]] = field(default_factory=dict)  # tenant → chats
    chat_sizes: dict[str, int] = field(default_factory=dict)  # chat → messages
    messages: int = 0
    media_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _id(rng: random.Random, prefix: str) -> str:
    """The product's id format (`whatsdex.store.ids.new_id`), from the seeded generator."""
    return f"{prefix}_{base64.b32encode(rng.randbytes(10)).decode().lower()}"


def _vocabulary(rng: random.Random, size: int = 3_000) -> tuple[list[str], list[float]]:
    """Made-up words with cumulative Zipf weights; the two search words have fixed shares."""
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "be",
                 "fi", "ho", "ja", "ly", "qu", "wo", "xe"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    ordered = sorted(words - {COMMON_WORD, RARE_WORD})
    rng.shuffle(ordered)
    weights = [1.0 / (rank + 1) for rank in range(len(ordered))]
    return ordered, list(itertools.accumulate(weights))


class _Texts:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words, self.cum = _vocabulary(rng)

    def text(self) -> str:
        rng = self.rng
        words = rng.choices(self.words, cum_weights=self.cum, k=rng.randint(3, 18))
        roll = rng.random()
        if roll < 0.001:
            words.insert(rng.randrange(len(words)), RARE_WORD)
        elif roll < 0.101:
            words.insert(0, COMMON_WORD)
        return " ".join(words)


def generate(data_dir: Path, workspaces: list[Workspace], spec: Spec,
             progress: Progress | None = None) -> Generated:
    """Fill the data dir's database (the server must not be running yet)."""
    return asyncio.run(_generate(data_dir, workspaces, spec, progress or (lambda _: None)))


async def _generate(data_dir: Path, workspaces: list[Workspace], spec: Spec,
                    progress: Progress) -> Generated:
    started = time.monotonic()
    store = Store(data_dir / "whatsdex.db", readers=1)
    await asyncio.to_thread(store.open)
    result = Generated()
    try:
        # A bulk load: the full-text index is built once at the end instead of row by row
        # (its trigger is put back exactly as the schema wrote it).
        trigger_sql = await store.write(_drop_fts_trigger)
        try:
            rng = random.Random(spec.seed)
            texts = _Texts(rng)
            per_tenant_chats = max(1, spec.chats // len(workspaces))
            tenants = [await _setup_tenant(store, ws.tenant_id, index, spec,
                                           per_tenant_chats, rng, result)
                       for index, ws in enumerate(workspaces)]
            await _messages(store, tenants, spec.messages, rng, texts, result, progress)
        finally:
            await store.write(functools.partial(_rebuild_fts, trigger_sql=trigger_sql))
        progress("full-text index built")
        if spec.min_file_bytes:
            await _pad(store, workspaces[0].tenant_id, spec.min_file_bytes, rng, result,
                       progress)
        result.file_bytes = await _file_size(store)
    finally:
        await store.aclose()
    result.seconds = time.monotonic() - started
    return result


def _drop_fts_trigger(conn: sqlite3.Connection) -> str:
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                       "AND name = 'messages_fts_insert'").fetchone()
    if row is None:
        raise RuntimeError("the schema has no messages_fts_insert trigger any more")
    conn.execute("DROP TRIGGER messages_fts_insert")
    return str(row[0])


def _rebuild_fts(conn: sqlite3.Connection, *, trigger_sql: str) -> None:
    conn.execute(trigger_sql)
    conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")


async def _file_size(store: Store) -> int:
    pages = await store.fetchval("PRAGMA page_count")
    size = await store.fetchval("PRAGMA page_size")
    return int(pages) * int(size)


@dataclass
class _Tenant:
    """One tenant's numbers, people and chats, and the state of its conversations."""

    tenant_id: str
    people: list[tuple[str, str, str, str]]  # (phone, contact id, chat id, number id)
    weights: list[float]  # cumulative: a few long conversations and many short ones
    last: dict[int, tuple[float, str, int]] = field(default_factory=dict)


async def _setup_tenant(store: Store, tenant_id: str, index: int, spec: Spec, chat_count: int,
                        rng: random.Random, result: Generated) -> _Tenant:
    created = _iso(END - SPAN - 86_400)
    numbers = [
        WaSession(id=_id(rng, "ses"), tenant_id=tenant_id, name=f"Number {n + 1}",
                  # Stopped: the supervisor leaves it alone (no engine, no QR codes).
                  status="stopped", status_reason="stopped by the user", status_since=created,
                  desired="stopped", phone=f"1555{index:03d}{n:04d}",
                  jid=f"1555{index:03d}{n:04d}:7@s.whatsapp.net", lid="", push_name="Agency",
                  created_at=created, updated_at=created)
        for n in range(spec.numbers_per_tenant)
    ]
    people = [(f"49170{index:03d}{c:05d}", _id(rng, "con"), _id(rng, "cht"),
               numbers[c % len(numbers)].id) for c in range(chat_count)]

    def setup(conn: sqlite3.Connection) -> list[str]:
        for number in numbers:
            wa_sessions.insert(conn, number)
        ids = []
        for phone, contact_id, chat_id, session_id in people:
            jid = f"{phone}@s.whatsapp.net"
            contact_rows.insert(conn, tenant_id, contact_id, phone=phone, jid=jid,
                                lid=f"{phone[::-1]}@lid", push_name=f"Client {phone[-5:]}",
                                now=created)
            ids.append(chat_rows.upsert(
                conn, tenant_id, new_id=chat_id, session_id=session_id, jid=jid,
                contact_id=contact_id, name=f"Client {phone[-5:]}", at=created,
                last_preview=None))
        return ids

    result.chats[tenant_id] = await store.write(setup)
    result.sessions[tenant_id] = [n.id for n in numbers]
    weights = list(itertools.accumulate(rng.paretovariate(1.1) for _ in people))
    return _Tenant(tenant_id, people, weights)


def _message(t: _Tenant, ts: float, rng: random.Random, texts: _Texts,
             result: Generated) -> Message:
    c = min(bisect.bisect_left(t.weights, rng.random() * t.weights[-1]), len(t.people) - 1)
    phone, _, chat_id, session_id = t.people[c]
    text = texts.text()
    stamp = _iso(ts)
    inbound = rng.random() < 0.55
    unread = (t.last[c][2] + 1 if c in t.last else 1) if inbound else 0
    t.last[c] = (ts, text, unread)
    result.chat_sizes[chat_id] = result.chat_sizes.get(chat_id, 0) + 1
    return Message(
        id=_id(rng, "msg"), tenant_id=t.tenant_id, session_id=session_id, chat_id=chat_id,
        direction="in" if inbound else "out",
        wa_id=("3EB0" if inbound else "BAE5") + rng.randbytes(8).hex().upper(),
        sender_jid=f"{phone}@s.whatsapp.net" if inbound else "",
        sender_lid=f"{phone[::-1]}@lid" if inbound else "",
        sender_phone=phone if inbound else "",
        push_name=f"Client {phone[-5:]}" if inbound else "", kind="text", text=text,
        payload={}, quoted_id="", status="received" if inbound else "read", status_reason="",
        source="" if inbound else "api", priority=0 if inbound else 10,
        attempts=0 if inbound else 1, next_attempt_at=None, created_at=stamp,
        wa_timestamp=stamp, sent_at=None if inbound else stamp,
        delivered_at=None if inbound else stamp, read_at=None if inbound else stamp,
        played_at=None, failed_at=None, edited_at=None, deleted_at=None)


async def _messages(store: Store, tenants: list[_Tenant], count: int, rng: random.Random,
                    texts: _Texts, result: Generated, progress: Progress) -> None:
    """All tenants' messages in time order, as they arrive in a real deployment (so each
    tenant's rows interleave with the others' in the table and in the full-text index)."""
    moments = sorted((END - SPAN * rng.random(), i % len(tenants)) for i in range(count))
    batch: list[Message] = []
    in_flight: asyncio.Future[None] | None = None
    for n, (ts, owner) in enumerate(moments, 1):
        batch.append(_message(tenants[owner], ts, rng, texts, result))
        if len(batch) >= BATCH:
            # One batch in the writer while the next is made: SQLite works without the GIL.
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.ensure_future(_insert(store, batch))
            result.messages += len(batch)
            batch = []
            if n % (count // 10 or 1) < BATCH:
                progress(f"{n:,} of {count:,} messages")
    if in_flight is not None:
        await in_flight
    if batch:
        await _insert(store, batch)
        result.messages += len(batch)
    for t in tenants:

        def finish(conn: sqlite3.Connection, t: _Tenant = t) -> None:
            for c, (ts, text, unread) in t.last.items():
                phone, contact_id, chat_id, session_id = t.people[c]
                chat_rows.upsert(conn, t.tenant_id, new_id=chat_id, session_id=session_id,
                                 jid=f"{phone}@s.whatsapp.net", contact_id=contact_id,
                                 at=_iso(ts), last_preview=text, unread_add=unread)

        await store.write(finish)


async def _insert(store: Store, batch: list[Message]) -> None:
    def write(conn: sqlite3.Connection) -> None:
        for message in batch:
            message_rows.insert(conn, message)

    await store.write(write)


async def _pad(store: Store, tenant_id: str, min_bytes: int, rng: random.Random,
               result: Generated, progress: Progress) -> None:
    """Uploaded media (1 MiB files) until the database file reaches `min_bytes`."""
    stamp = _iso(END - 86_400)
    while (size := await _file_size(store)) < min_bytes:
        count = max(1, min(64, (min_bytes - size) // MEDIA_CHUNK + 1))
        files = [rng.randbytes(MEDIA_CHUNK) for _ in range(count)]

        def write(conn: sqlite3.Connection, files: list[bytes] = files) -> None:
            for data in files:
                media_rows.insert(conn, media_rows.Media(
                    id=_id(rng, "med"), tenant_id=tenant_id,
                    sha256=hashlib.sha256(data).hexdigest(), mimetype="application/pdf",
                    size=len(data), filename="brochure.pdf", origin="upload",
                    created_at=stamp, last_used_at=stamp), data)

        await store.write(write)
        result.media_bytes += count * MEDIA_CHUNK
    progress(f"padded with {result.media_bytes / 2**20:.0f} MiB of media "
             f"to {size / 2**20:.0f} MiB")


# -- the data set benchmarks 3 and 6 share ---------------------------------------------------


@dataclass
class Shared:
    """The big data set in its own data dir: generated once per run, served by turns."""

    data_dir: Path
    workspaces: list[Workspace]  # the tenants holding the data set
    small: Workspace  # a tenant with a little history: the baseline for the same pages
    generated: Generated
    small_generated: Generated


_SHARED: dict[Path, Shared] = {}


def shared_dataset(root: Path, smoke: bool, progress: Progress | None = None) -> Shared:
    """1,000,000 messages over 10 tenants and 10,000 chats in a file of at least 1 GiB (smoke:
    a few thousand messages), plus one small tenant; made on first use in `root`."""
    from bench.harness import provision

    if root in _SHARED:
        return _SHARED[root]
    data_dir = root / "dataset" / "data"
    if smoke:
        big = Spec(tenants=2, numbers_per_tenant=1, chats=40, messages=4_000,
                   min_file_bytes=8 << 20)
    else:
        big = Spec(tenants=10, numbers_per_tenant=2, chats=10_000, messages=1_000_000,
                   min_file_bytes=1 << 30)
    made = provision(data_dir, big.tenants + 1)
    workspaces, small = made[:-1], made[-1]
    generated = generate(data_dir, workspaces, big, progress)
    small_generated = generate(data_dir, [small], Spec(
        tenants=1, numbers_per_tenant=1, chats=10, messages=1_000, seed=big.seed + 1))
    _SHARED[root] = Shared(data_dir, workspaces, small, generated, small_generated)
    return _SHARED[root]


def contacts(data_dir: Path, tenant_id: str, count: int, seed: int = 20261122) -> int:
    """`count` contacts for one tenant (phones in a reserved test range), before the server
    starts; returns how many the tenant has."""

    async def main() -> int:
        store = Store(data_dir / "whatsdex.db", readers=1)
        await asyncio.to_thread(store.open)
        try:
            rng = random.Random(seed)
            stamp = _iso(END - SPAN)

            def write(conn: sqlite3.Connection) -> int:
                for i in range(count):
                    phone = f"4916{i:09d}"
                    contact_rows.insert(conn, tenant_id, _id(rng, "con"), phone=phone,
                                        jid=f"{phone}@s.whatsapp.net", lid="",
                                        push_name=f"Customer {i}", now=stamp)
                return int(conn.execute("SELECT count(*) FROM contacts WHERE tenant_id = ?",
                                        (tenant_id,)).fetchone()[0])

            return await store.write(write)
        finally:
            await store.aclose()

    return asyncio.run(main())
