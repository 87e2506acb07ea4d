"""One running app per test module (sandbox engine, short QR codes) with three tenants.

Identities:
  operator   the operator (API key; signed-in user for pages)
  owner      tenant A's owner (key and user)
  member     tenant A's member (key and user)
  other      tenant B's owner (key and user): must never see or touch A's numbers
  free       tenant F's owner key, on the free plan (one number)

The engine host inherits `WHATSDEX_SANDBOX_QR_SECONDS=2` (first code 6 s, 16 s in all), set for
every test because the root conftest clears `WHATSDEX_*` variables and hosts start lazily.
"""

from __future__ import annotations

import functools
import json
import queue
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from litestar import Litestar
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient

from whatsdex.app import create_app
from whatsdex.clock import iso
from whatsdex.identity import apikeys, tenants
from whatsdex.identity.principal import CLI
from whatsdex.identity.tokens import new_token
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import logins as login_rows
from whatsdex.store import users as user_rows
from whatsdex.store.ids import new_id
from whatsdex.store.records import Plan, Tenant, User
from whatsdex.web.auth import SESSION_COOKIE

T = TypeVar("T")

BASE_URL = "https://testserver.local"
PUBLIC_URL = "https://wa.agency.example"
QR_SECONDS = "2"
WAIT = 10.0  # the longest any status change may take here


@pytest.fixture(autouse=True)
def _short_qr_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSDEX_SANDBOX_QR_SECONDS", QR_SECONDS)


@dataclass
class SseStream:
    """A server-sent event stream read straight from the ASGI app (the test client buffers
    whole responses, which an endless stream never finishes)."""

    client: TestClient[Litestar]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    _messages: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    _buffer: str = ""
    _gone: anyio.Event | None = None
    _task: Any = None
    ended: bool = False

    def open(self, path: str, headers: dict[str, str]) -> SseStream:
        portal = self.client.blocking_portal
        assert portal is not None
        self._gone = portal.call(anyio.Event)
        gone = self._gone
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            self._messages.put(message)

        raw_path, _, query = path.partition("?")
        scope = {
            "type": "http", "http_version": "1.1", "method": "GET", "scheme": "https",
            "path": raw_path, "raw_path": raw_path.encode(), "root_path": "",
            "query_string": query.encode(), "client": ("testclient", 50000),
            "server": ("testserver.local", 443), "extensions": {},
            "headers": [(b"host", b"testserver.local"),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        }
        self._task = portal.start_task_soon(self.client.app, scope, receive, send)
        start = self._next(5.0)
        assert start is not None and start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
        return self

    def _next(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def body(self, timeout: float = 5.0) -> str:
        """The whole body of a stream that ends by itself (an error answer, a closed stream)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            message = self._next(deadline - time.monotonic())
            assert message is not None, "the stream did not end"
            self._take(message)
        return self._buffer

    def _take(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            self._buffer += message.get("body", b"").decode()
            if not message.get("more_body", False):
                self.ended = True

    def event(self, timeout: float = WAIT) -> dict[str, str] | None:
        """The next SSE message (comments as `comment`), or None when none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            separator = self._buffer.find("\r\n\r\n")
            if separator >= 0:
                block, self._buffer = self._buffer[:separator], self._buffer[separator + 4:]
                return _parse_block(block)
            if self.ended:
                return None
            message = self._next(deadline - time.monotonic())
            if message is None:
                return None
            self._take(message)

    def events_until(self, wanted: Callable[[dict[str, str]], bool], timeout: float = WAIT
                     ) -> list[dict[str, str]]:
        """Messages up to and including the first one `wanted` accepts (fails after timeout)."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while True:
            message = self.event(deadline - time.monotonic())
            assert message is not None, f"no matching event in {timeout}s; got {seen}"
            seen.append(message)
            if wanted(message):
                return seen

    def close(self) -> None:
        portal = self.client.blocking_portal
        assert portal is not None and self._gone is not None
        portal.call(self._gone.set)
        self._task.result(timeout=5)


def _parse_block(block: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for line in block.split("\r\n"):
        name, _, value = line.partition(": ") if ": " in line else (line.rstrip(":"), "", "")
        if name == "data" and "data" in parsed:
            parsed["data"] += "\n" + value
        elif name == "":
            parsed["comment"] = value
        else:
            parsed[name] = value
    return parsed


@dataclass
class Env:
    client: TestClient[Litestar]
    services: Services
    a: Tenant = field(init=False)
    b: Tenant = field(init=False)
    f: Tenant = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """An async domain function, on the app's own event loop."""
        portal = self.client.blocking_portal
        assert portal is not None
        return portal.call(functools.partial(fn, *args, **kwargs))

    # -- requests --------------------------------------------------------------------------------

    def api(self, who: str | None, method: str, path: str, *, json: Any = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        self.client.cookies.clear()
        return self.client.request(method, path, json=json, headers={**sent, **(headers or {})},
                                   follow_redirects=False)

    def page(self, who: str | None, method: str, path: str, *,
             form: dict[str, str] | None = None, htmx: bool | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        """A dashboard request as htmx sends it: session and CSRF cookies, CSRF header."""
        cookie = f"__Host-csrftoken={self.csrf}"
        if who:
            cookie += f"; {SESSION_COOKIE}={self.cookies[who]}"
        sent = {"Cookie": cookie, "X-CSRFToken": self.csrf}
        if htmx if htmx is not None else method != "GET":
            sent["HX-Request"] = "true"
        self.client.cookies.clear()
        return self.client.request(method, path, data=form, headers={**sent, **(headers or {})},
                                   follow_redirects=False)

    def anonymous(self, method: str, path: str, *, form: dict[str, str] | None = None,
                  headers: dict[str, str] | None = None) -> httpx.Response:
        """No cookie, no key: how a client link's page is used."""
        self.client.cookies.clear()
        return self.client.request(method, path, data=form, headers=headers or {},
                                   follow_redirects=False)

    def stream(self, path: str, *, who: str | None = None, cookie_of: str | None = None
               ) -> SseStream:
        headers: dict[str, str] = {"Accept": "text/event-stream"}
        if who:
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        if cookie_of:
            headers["Cookie"] = f"{SESSION_COOKIE}={self.cookies[cookie_of]}"
        return SseStream(self.client).open(path, headers)

    # -- numbers ---------------------------------------------------------------------------------

    def create(self, who: str = "owner", name: str = "Front desk") -> str:
        created = self.api(who, "POST", "/api/v1/sessions", json={"name": name})
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    def session(self, session_id: str, who: str = "owner") -> dict[str, Any]:
        found = self.api(who, "GET", f"/api/v1/sessions/{session_id}")
        assert found.status_code == 200, found.text
        body: dict[str, Any] = found.json()
        return body

    def wait_status(self, session_id: str, *statuses: str, who: str = "owner",
                    timeout: float = WAIT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = self.session(session_id, who)
            if current["status"] in statuses:
                return current
            assert time.monotonic() < deadline, (
                f"{session_id} is {current['status']} ({current['reason']}), not {statuses}")
            time.sleep(0.05)

    def scan(self, session_id: str, phone: str = "+15551230001", who: str = "owner"
             ) -> httpx.Response:
        return self.api(who, "POST", f"/api/v1/sandbox/sessions/{session_id}/scan",
                        json={"phone": phone})

    def linked(self, name: str = "Linked", phone: str = "+15551230002") -> str:
        """A number of tenant A, scanned and connected."""
        session_id = self.create(name=name)
        self.wait_status(session_id, "pairing")
        assert self.scan(session_id, phone).status_code == 200
        self.wait_status(session_id, "connected")
        return session_id

    def subscribers(self, tenant_id: str) -> int:
        return self.services.bus.subscriber_count(tenant_id)

    def audit_actions(self, object_id: str) -> list[str]:
        rows = self.run(self.services.store.fetchall,
                        "SELECT action FROM audit_log WHERE object_id = ? ORDER BY id",
                        (object_id,))
        return [row[0] for row in rows]


def decode(response: httpx.Response) -> Any:
    return json.loads(response.text)


async def _populate(env: Env) -> None:
    db, now = env.services.store, env.services.clock()
    many = Plan(id="many", name="Many", max_numbers=50, max_messages_per_day=1000,
                max_contacts=1000, max_active_campaigns=1, max_webhooks=1, created_at="",
                updated_at="")
    await tenants.save_plan(db, CLI, many, now=now)
    env.a = await tenants.create_tenant(db, CLI, name="Acme Bakery", plan_id="many", now=now)
    env.b = await tenants.create_tenant(db, CLI, name="Zenith Dental", plan_id="many", now=now)
    env.f = await tenants.create_tenant(db, CLI, name="Free Florist", plan_id="free", now=now)
    for who, tenant_id, role in (("operator", None, "operator"), ("owner", env.a.id, "owner"),
                                 ("member", env.a.id, "member"), ("other", env.b.id, "owner"),
                                 ("free", env.f.id, "owner")):
        key, secret = await apikeys.create_key(db, CLI, tenant_id, name=who, role=role, now=now)
        env.keys[who], env.key_ids[who] = secret, key.id
    # Signed-in users without a password hash (argon2 is slow): a session row is enough.
    for who, tenant_id, role in (("operator", None, "operator"), ("owner", env.a.id, "owner"),
                                 ("member", env.a.id, "member"), ("other", env.b.id, "owner")):
        user = User(id=new_id("usr"), email=f"{who}@example.com", name=who, role=role,
                    tenant_id=tenant_id, created_at=iso(now), last_login_at=None)
        issued = new_token()

        def write(conn: Any, user: User = user, token_hash: str = issued.hash) -> None:
            user_rows.insert_user(conn, user, "!")
            login_rows.insert_session(conn, token_hash=token_hash, user_id=user.id,
                                      now=iso(now), expires_at=iso(now + 86_400), ip="",
                                      user_agent="pytest")

        await db.write(write)
        env.cookies[who] = issued.secret


def build_env(data_dir: Path, engine: str = "sandbox") -> Iterator[Env]:
    settings = Settings(data_dir=data_dir, engine=engine,  # type: ignore[arg-type]
                        backup_interval_minutes=0, public_url=PUBLIC_URL)
    services = Services.build(settings)
    app = create_app(settings, services)
    with TestClient(app, base_url=BASE_URL) as client:
        env = Env(client=client, services=services)
        env.csrf = generate_csrf_token(services.csrf_secret)
        env.run(_populate, env)
        yield env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from build_env(tmp_path_factory.mktemp("web-sessions") / "data")
