"""Benchmark 2: inbound ingest. The sandbox floods N linked numbers with inbound messages from
many contacts at once; every message is committed (contact, chat, message, full-text index,
webhook outbox row) before the engine is told it may forget it. Messages per second committed,
against a raw batched SQLite insert of the very same rows into a fresh file, in the same run.

Each number's tenant has a webhook (to a local receiver that answers 200 at once), so the
outbox rows are written and the dispatcher delivers them while the flood runs.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.b1_send import start_null
from bench.data import _Texts
from bench.harness import (
    Api,
    BenchError,
    Mode,
    Outcome,
    Server,
    bench_env,
    cpu_split,
    link_numbers,
    ms,
    provision,
    rate,
    running,
    serve_argv,
)
from bench.profile import sampling
from whatsdex.store import connection, migrations

TITLE = "Inbound ingest (sandbox flood)"
BUDGET = 150.0
SMOKE_BUDGET = 45.0
TARGET = 5_000.0
BASELINE_BATCH = 1_000
NUMBERS = 16
SENDERS = 5
CALL = 200  # messages per sandbox inbound call: the call answers once all are committed
# Tables the copied rows point at, copied first so that foreign keys hold.
PARENTS = ("plans", "tenants", "wa_sessions", "contacts", "chats", "webhooks")


def _copy_parents(source: Path, target: sqlite3.Connection) -> None:
    target.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
    target.execute("BEGIN")
    for table in PARENTS:
        target.execute(f"INSERT OR REPLACE INTO main.{table} SELECT * FROM src.{table}")
    target.execute("COMMIT")
    target.execute("DETACH DATABASE src")


@dataclass
class RawBaseline:
    """The flood's rows, read back, and a fresh file (same schema, same parent rows) to insert
    them into: read while the server runs, timed once it is stopped."""

    path: Path
    messages: list[tuple[object, ...]]
    hooks: list[tuple[object, ...]]


def prepare_raw(source: Path, work: Path, limit: int) -> RawBaseline:
    target = work / "raw-baseline.db"
    conn = connection.connect(target)
    try:
        migrations.apply(conn)
        _copy_parents(source, conn)
    finally:
        conn.close()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=10)
    try:
        messages = src.execute("SELECT * FROM messages WHERE direction = 'in' "
                               "ORDER BY rowid LIMIT ?", (limit,)).fetchall()
        hooks = src.execute("SELECT * FROM webhook_deliveries WHERE event_type = "
                            "'message.received' ORDER BY id LIMIT ?", (limit,)).fetchall()
    finally:
        src.close()
    if not messages:
        raise BenchError("the flood stored no messages to copy")
    return RawBaseline(target, messages, hooks)


def insert_raw(raw: RawBaseline) -> float:
    """Insert the rows with executemany, `BASELINE_BATCH` messages (and their webhook rows)
    per transaction; returns the seconds it took."""
    conn = connection.connect(raw.path)
    try:
        insert_message = f"INSERT INTO messages VALUES ({', '.join('?' * len(raw.messages[0]))})"
        insert_hook = (f"INSERT INTO webhook_deliveries VALUES "
                       f"({', '.join('?' * len(raw.hooks[0]))})" if raw.hooks else "")
        started = time.monotonic()
        for i in range(0, len(raw.messages), BASELINE_BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert_message, raw.messages[i:i + BASELINE_BATCH])
            if raw.hooks:
                conn.executemany(insert_hook, raw.hooks[i:i + BASELINE_BATCH])
            conn.execute("COMMIT")
        return time.monotonic() - started
    finally:
        conn.close()


def _counts(db: Path) -> tuple[int, int, int]:
    """(inbound messages, indexed in full text, message.received webhook rows)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        messages = conn.execute("SELECT count(*) FROM messages WHERE direction = 'in'"
                                ).fetchone()[0]
        # Every text holds the word "flood": the index must return each message.
        indexed = conn.execute("SELECT count(*) FROM messages_fts WHERE messages_fts "
                               "MATCH 'flood'").fetchone()[0]
        hooks = conn.execute("SELECT count(*) FROM webhook_deliveries WHERE event_type = "
                             "'message.received'").fetchone()[0]
    finally:
        conn.close()
    return int(messages), int(indexed), int(hooks)


def run(mode: Mode, work: Path, out: Outcome) -> None:
    numbers = mode.pick(NUMBERS, 2)
    senders = mode.pick(SENDERS, 3)  # contacts writing to each number at once
    duration = mode.pick(20.0, 2.0)
    env = bench_env(work / "home")
    data = work / "serve-data"
    workspaces = provision(data, mode.pick(2, 1))
    receiver = start_null(work, env)
    with running(receiver):
        server = Server(serve_argv(data), env, work / "serve.log")
        with running(server):

            hook_ids: list[tuple[str, str]] = []

            async def setup() -> list[tuple[str, str]]:
                found = []
                for index, ws in enumerate(workspaces):
                    async with Api(server.url, ws.key) as api:
                        hook = await api.call("POST", "/api/v1/webhooks", {
                            "url": f"{receiver.url}/hooks/{index}", "events": ["message.*"]})
                        hook_ids.append((ws.key, hook["id"]))
                        ids = await link_numbers(api, numbers // len(workspaces),
                                                 first_phone=15_552_000_000 + index * 1000)
                        found += [(ws.key, s) for s in ids]
                return found

            async def delete_hooks() -> None:
                for key, hook_id in hook_ids:
                    async with Api(server.url, key) as api:
                        await api.call("DELETE", f"/api/v1/webhooks/{hook_id}",
                                       expect=(200, 204))

            targets = asyncio.run(setup())
            texts = _Texts(random.Random(7))
            workers = [(key, session, f"4917{i:08d}")
                       for i, (key, session) in enumerate(
                           t for t in targets for _ in range(senders))]
            committed = [0]

            async def flood(until: float) -> None:
                """Each contact sends batches of `CALL` messages, back to back, until time."""
                async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

                    async def contact(key: str, session: str, phone: str) -> None:
                        while time.monotonic() < until:
                            body = {"from": phone, "count": CALL,
                                    "text": f"flood {texts.text()}"}
                            response = await client.post(
                                f"/api/v1/sandbox/sessions/{session}/inbound", json=body,
                                headers={"Authorization": f"Bearer {key}"})
                            if response.status_code != 200:
                                raise BenchError(f"inbound: HTTP {response.status_code} "
                                                 f"{response.text[:200]}")
                            committed[0] += CALL

                    await asyncio.gather(*(contact(*w) for w in workers))

            cpu = server.cpu()
            parts = server.cpu_parts()
            started = time.monotonic()
            with sampling(server.pid, duration, work / "profile.txt", mode.profile) as sampler:
                asyncio.run(flood(started + duration))
            seconds = time.monotonic() - started
            total = committed[0]
            split = cpu_split(parts, server.cpu_parts())
            cpu_per = (server.cpu() - cpu) / total
            stored, indexed, hooks = _counts(data / "whatsdex.db")
            raw = prepare_raw(data / "whatsdex.db", work, limit=total)
            time.sleep(mode.pick(2.0, 0.5))
            delivered = httpx.get(f"{receiver.url}/__count", timeout=10).json()["count"]
            # The same flood with no webhook at all: what the deliveries cost the ingest.
            bare_rate = 0.0
            if not mode.smoke:
                asyncio.run(delete_hooks())
                time.sleep(2.0)
                committed[0] = 0
                again = time.monotonic()
                asyncio.run(flood(again + duration))
                bare_rate = committed[0] / (time.monotonic() - again)
        raw_seconds = insert_raw(raw)
        raw_messages, raw_hooks = len(raw.messages), len(raw.hooks)

    if stored != total or indexed != total or hooks != total:
        raise BenchError(f"the flood sent {total} messages; the file holds {stored} messages, "
                         f"{indexed} indexed, {hooks} webhook rows")
    achieved = total / seconds
    raw_rate = raw_messages / raw_seconds
    out.add(f"Committed inbound messages ({numbers} numbers x {senders} contacts, "
            f"{seconds:.0f}s)", rate(achieved, " msg/s"),
            baseline=f"{rate(raw_rate, ' msg/s')} raw batched insert", target=">= 5,000 msg/s",
            met=achieved >= TARGET)
    out.add("Ingest rate / raw insert rate", f"{achieved / raw_rate:.0%}")
    if bare_rate:
        out.add("The same flood with no webhook (no outbox rows, no deliveries)",
                rate(bare_rate, " msg/s"), baseline=f"{rate(achieved, ' msg/s')} with one")
    out.add("Server CPU per message (web + engine host)", ms(cpu_per))
    out.note(f"{total:,} messages in {seconds:.1f}s; every one stored with its contact and "
             f"chat, found by full-text search, with its webhook outbox row ({hooks:,}); "
             f"{delivered:,} webhook deliveries had reached the receiver by the end.")
    out.note(f"Raw baseline: the same {raw_messages:,} message rows and {raw_hooks:,} webhook "
             f"rows (full-text index by the schema's trigger) inserted with executemany, "
             f"{BASELINE_BATCH} per transaction, into a fresh file with the same schema and "
             "pragmas.")
    out.note(f"Each contact posts {CALL} messages per sandbox call and waits for all of them "
             "to be committed. The engine host records each message in the simulated "
             "network's own SQLite file, offers a number's waiting messages at once and marks "
             "each confirmed only when the server acked it after its commit (the real "
             "engine's ack discipline); that cost is part of the figure.")
    out.note("CPU during the flood (cores busy): " + ", ".join(
        f"{name} {used / seconds:.2f}" for name, used in split.items()) + ".")
    for line in sampler.summary:
        out.note(f"Profile of the server during the flood — {line}")
