"""Benchmark 4: the campaign engine. A 10,000-recipient campaign with zero pacing on sandbox
numbers: time from start to completed, and CPU per recipient (web process and engine hosts),
against sending messages one by one through the API (accepted and delivered) in the same run.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench import data, load
from bench.b1_send import send_requests
from bench.harness import (
    Api,
    BenchError,
    Mode,
    NotAvailable,
    Outcome,
    Server,
    bench_env,
    link_numbers,
    ms,
    provision,
    rate,
    running,
    serve_argv,
    wait_until,
)
from bench.profile import sampling

TITLE = "Campaign engine: 10,000 recipients, zero pacing"
BUDGET = 240.0
SMOKE_BUDGET = 45.0
TARGET = 0.001  # CPU seconds per recipient
DONE = ("completed", "cancelled", "failed")


def _sent(db: Path, source: str) -> int:
    """Outbound messages of `source` handed to WhatsApp (sent or further)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(
            "SELECT count(*) FROM messages WHERE direction = 'out' AND source = ? AND status "
            "IN ('sent', 'delivered', 'read', 'played')", (source,)).fetchone()[0])
    finally:
        conn.close()


def run(mode: Mode, work: Path, out: Outcome) -> None:
    recipients = mode.pick(10_000, 200)
    api_messages = mode.pick(2_000, 100)
    env = bench_env(work / "home")
    db_dir = work / "serve-data"
    [ws] = provision(db_dir, 1)
    have = data.contacts(db_dir, ws.tenant_id, recipients)
    server = Server(serve_argv(db_dir), env, work / "serve.log")
    with running(server):

        async def setup() -> tuple[list[str], str, int]:
            async with Api(server.url, ws.key) as api:
                if await api.status("/api/v1/campaigns") == 404:
                    raise NotAvailable(
                        "not available: this build serves no /api/v1/campaigns (the campaign "
                        "engine in whatsdex/campaigns/ is not wired into the app yet)")
                sessions = await link_numbers(api, 2, first_phone=15_554_000_000)
                template = await api.call("POST", "/api/v1/templates", {
                    "name": "Bench offer",
                    "body": "{Hi|Hello} {{first_name|there}}, our autumn offer is here: "
                            "reply STOP to opt out."})
                campaign = await api.call("POST", "/api/v1/campaigns", {
                    "name": "Bench campaign", "template_id": template["id"],
                    "session_ids": sessions, "pacing": {"min_gap": 0, "max_gap": 0}})
                return sessions, campaign["id"], int(campaign.get("targeted", 0))

        sessions, campaign_id, _ = asyncio.run(setup())
        cpu = server.cpu()
        started = time.monotonic()
        final: dict[str, Any] = {}

        async def campaign() -> None:
            async with Api(server.url, ws.key) as api:
                await api.call("POST", f"/api/v1/campaigns/{campaign_id}/start")

                async def finished() -> bool:
                    final.update(await api.call("GET", f"/api/v1/campaigns/{campaign_id}"))
                    return final["status"] in DONE

                await wait_until(finished, mode.pick(200.0, 40.0), "the campaign finished",
                                 every=0.25)

        with sampling(server.pid, mode.pick(20.0, 1.0), work / "profile.txt",
                      mode.profile) as sampler:
            asyncio.run(campaign())
        seconds = time.monotonic() - started
        used = server.cpu() - cpu
        if final["status"] != "completed" or final["sent"] != have:
            raise BenchError(f"the campaign ended {final['status']} ({final['status_reason']}) "
                             f"with {final['sent']} of {have} sent")

        # The baseline: the same number of messages per number, through the send API.
        cpu = server.cpu()
        began = time.monotonic()
        sent = load.drive({"base": server.url, "concurrency": 10, "duration": 600.0,
                           "warmup": 0, "max_requests": api_messages,
                           "requests": send_requests(sessions, ws.key, "b4")}, work, "api")
        accepted = int(sent["ok"])
        if not accepted:
            raise BenchError(f"no API send was accepted: {sent['statuses']}")

        async def all_sent() -> bool:
            return _sent(db_dir / "whatsdex.db", "api") >= accepted

        asyncio.run(wait_until(all_sent, mode.pick(200.0, 40.0), "the API sends delivered",
                               every=0.25))
        api_seconds = time.monotonic() - began
        api_used = server.cpu() - cpu
    per = used / have
    api_per = api_used / accepted
    out.add(f"Time to complete ({have:,} recipients, {len(sessions)} numbers)",
            f"{seconds:.1f} s ({rate(have / seconds, ' msg/s')})",
            baseline=f"{api_seconds:.1f} s for {accepted:,} API sends "
                     f"({rate(accepted / api_seconds, ' msg/s')})")
    out.add("CPU per recipient (web + engine host)", ms(per),
            baseline=f"{ms(api_per)} per API send, accepted and delivered",
            target="<= 1 ms", met=per <= TARGET)
    for line in sampler.summary:
        out.note(f"Profile of the server during the campaign — {line}")
    out.note(f"Campaign {final['status']}: {final['sent']:,} sent, {final['failed']} failed, "
             f"{final['skipped']} skipped of {final['targeted']:,} targeted.")
