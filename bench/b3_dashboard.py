"""Benchmark 3: the dashboard on a big file. With 1,000,000 stored messages over 10 tenants and
10,000 chats, p50/p95 of the inbox page, a conversation page and the history API with full-text
search, against the same requests on a tenant with 1,000 messages in the same file and run.

Requests go one at a time (a person clicking), round-robin over the 10 tenants (each with its
own signed-in user or API key) and over their chats, the busiest conversation included.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from bench import load
from bench.data import COMMON_WORD, RARE_WORD, shared_dataset
from bench.harness import (
    BenchError,
    Mode,
    Outcome,
    Server,
    Workspace,
    bench_env,
    ms,
    running,
    serve_argv,
)

TITLE = "Dashboard and history on 1,000,000 messages"
BUDGET = 480.0
SMOKE_BUDGET = 60.0
TARGET = 0.100
PASSWORD = "bench-Correct-Horse-Battery-2026"
COOKIE = "__Host-whatsdex"


def sign_in(data_dir: Path, workspaces: list[Workspace]) -> dict[str, str]:
    """A member user per tenant, signed in: tenant → session cookie value."""
    from whatsdex.identity import logins, users
    from whatsdex.identity.principal import CLI
    from whatsdex.store import Store

    async def main() -> dict[str, str]:
        store = Store(data_dir / "whatsdex.db", readers=1)
        await asyncio.to_thread(store.open)
        try:
            tokens = {}
            now = time.time()
            limits = logins.SessionLimits(idle_seconds=86_400.0, max_seconds=86_400.0)
            for i, ws in enumerate(workspaces):
                email = f"bench{i}@example.com"
                _, invite = await users.invite(store, CLI, ws.tenant_id, email=email,
                                               role="member", now=now)
                await users.accept_invite(store, invite, password=PASSWORD, now=now)
                login = await logins.login(store, email=email, password=PASSWORD,
                                           ip="127.0.0.1", user_agent="bench", now=now,
                                           limits=limits)
                tokens[ws.tenant_id] = login.token
            return tokens
        finally:
            await store.aclose()

    return asyncio.run(main())


def _pages(tenants: list[str], cookies: dict[str, str], chats: dict[str, list[str]],
           sizes: dict[str, int], per_tenant: int) -> dict[str, list[dict[str, Any]]]:
    """The requests of each page kind, round-robin over the tenants."""
    inbox, conversation = [], []
    for tenant in tenants:
        headers = {"Cookie": f"{COOKIE}={cookies[tenant]}"}
        inbox.append({"path": "/inbox", "headers": headers})
        ranked = sorted(chats[tenant], key=lambda c: -sizes.get(c, 0))
        # The busiest conversation, a median one and a quiet one.
        picks = [ranked[0], ranked[len(ranked) // 2], ranked[len(ranked) * 3 // 4]]
        conversation += [{"path": f"/inbox?chat={chat}", "headers": headers}
                         for chat in picks[:per_tenant]]
    return {"inbox": inbox, "conversation": conversation}


def _api(workspaces: list[Workspace], path: str) -> list[dict[str, Any]]:
    return [{"path": path, "headers": {"Authorization": f"Bearer {ws.key}"}}
            for ws in workspaces]


def _measure(url: str, requests: list[dict[str, Any]], seconds: float, work: Path,
             name: str) -> dict[str, Any]:
    result = load.drive({"base": url, "requests": requests, "concurrency": 1,
                         "duration": seconds, "warmup": min(1.0, seconds / 4)}, work, name)
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    if bad or not result["requests"]:
        raise BenchError(f"{name}: answers {result['statuses']}, errors {result['errors']}")
    return result


def _check_search(url: str, ws: Workspace) -> int:
    """The search really searches: the rare word finds messages that contain it."""
    response = httpx.get(f"{url}/api/v1/messages", params={"q": RARE_WORD, "limit": 50},
                         headers={"Authorization": f"Bearer {ws.key}"}, timeout=60)
    items = response.json().get("items", [])
    if response.status_code != 200 or not items:
        raise BenchError(f"search for {RARE_WORD!r} found nothing: {response.text[:200]}")
    if not all(RARE_WORD in item.get("text", "") for item in items):
        raise BenchError(f"search for {RARE_WORD!r} returned messages without it")
    return len(items)


def run(mode: Mode, work: Path, out: Outcome) -> None:
    started = time.monotonic()
    shared = shared_dataset(work.parent, mode.smoke,
                            lambda line: print(f"[bench]   data set: {line}", flush=True))
    made = time.monotonic() - started
    gen = shared.generated
    out.note(f"Data set (seeded, made in {made:.0f}s): {gen.messages:,} messages, "
             f"{sum(len(c) for c in gen.chats.values()):,} chats, "
             f"{len(shared.workspaces)} tenants, database {gen.file_bytes / 2**30:.2f} GiB "
             f"({gen.media_bytes / 2**20:.0f} MiB of it uploaded media); the baseline tenant "
             f"holds {shared.small_generated.messages:,} messages in "
             f"{sum(len(c) for c in shared.small_generated.chats.values())} chats.")
    everyone = [*shared.workspaces, shared.small]
    cookies = sign_in(shared.data_dir, everyone)
    seconds = mode.pick(6.0, 0.6)
    big = [ws.tenant_id for ws in shared.workspaces]
    chats = {**gen.chats, **shared.small_generated.chats}
    sizes = {**gen.chat_sizes, **shared.small_generated.chat_sizes}
    pages_big = _pages(big, cookies, chats, sizes, per_tenant=3)
    pages_small = _pages([shared.small.tenant_id], cookies, chats, sizes, per_tenant=3)
    checks = [
        ("Inbox page", pages_big["inbox"], pages_small["inbox"]),
        ("Conversation page (the busiest chat and others)", pages_big["conversation"],
         pages_small["conversation"]),
        (f"History API, search of a rare word ({RARE_WORD!r})",
         _api(shared.workspaces, f"/api/v1/messages?q={RARE_WORD}"),
         _api([shared.small], f"/api/v1/messages?q={RARE_WORD}")),
        (f"History API, search of a common word ({COMMON_WORD!r})",
         _api(shared.workspaces, f"/api/v1/messages?q={COMMON_WORD}"),
         _api([shared.small], f"/api/v1/messages?q={COMMON_WORD}")),
        ("History API, newest page, no filter",
         _api(shared.workspaces, "/api/v1/messages"), _api([shared.small], "/api/v1/messages")),
    ]
    env = bench_env(work / "home")
    server = Server(serve_argv(shared.data_dir), env, work / "serve.log")
    with running(server):
        found = _check_search(server.url, shared.workspaces[0])
        out.note(f"The rare-word search finds messages that hold the word ({found} on the "
                 "first page of one tenant).")
        for index, (name, requests, baseline) in enumerate(checks):
            result = _measure(server.url, requests, seconds, work, f"big-{index}")
            small = _measure(server.url, baseline, seconds / 2, work, f"small-{index}")
            targeted = index < 4  # the pages and both searches; the plain list is extra
            out.add(f"{name}: p50", ms(result["p50"]), baseline=f"{ms(small['p50'])} small")
            out.add(f"{name}: p95 (max {ms(result['max'])}, n={result['requests']})",
                    ms(result["p95"]), baseline=f"{ms(small['p95'])} small",
                    target="< 100 ms" if targeted else "",
                    met=result["p95"] < TARGET if targeted else None)
        rss = server.rss()
    out.note(f"Server RSS after these requests: {rss / 2**20:.0f} MB. Requests one at a time; "
             f"{seconds:g}s per page kind on the big tenants, half that on the small one.")
