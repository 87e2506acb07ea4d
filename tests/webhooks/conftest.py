"""Webhook test fixtures: a real HTTP receiver on 127.0.0.1, a dispatcher on a real store with a
hand-moved clock, and (for the API and pages) a running app with two tenants.

The clock starts at the real time, so the first attempts also pass the 5-minute timestamp
tolerance of the independent `standardwebhooks` verifier; later attempts (hours ahead on the
fake clock) are checked with the same library's signing function instead.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from litestar import Litestar
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient
from standardwebhooks.webhooks import Webhook as Verifier

from whatsdex.app import create_app
from whatsdex.bus import EventBus
from whatsdex.clock import iso
from whatsdex.crypto.keyring import Keyring
from whatsdex.identity import apikeys, tenants
from whatsdex.identity.principal import CLI
from whatsdex.identity.tokens import new_token
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import logins as login_rows
from whatsdex.store import users as user_rows
from whatsdex.store.ids import new_id
from whatsdex.store.records import Plan, Tenant, User
from whatsdex.web.api import webhooks as api_webhooks
from whatsdex.web.auth import SESSION_COOKIE
from whatsdex.web.ui import webhooks as ui_webhooks
from whatsdex.webhooks import manage, outbox
from whatsdex.webhooks.dispatcher import WebhookDispatcher

T = TypeVar("T")
BASE_URL = "https://testserver.local"


# -- The receiver ------------------------------------------------------------------------------

@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """Records every request; answers from a per-path script, then 200."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    scripts: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    max_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, path: str, *answers: int | tuple[int, dict[str, str]] | tuple[
            int, dict[str, str], bytes]) -> None:
        """Answers for the next requests to `path` (status, or status and headers [and body])."""
        steps = []
        for answer in answers:
            if isinstance(answer, int):
                steps.append((answer, {}, b""))
            elif len(answer) == 2:
                steps.append((answer[0], answer[1], b""))
            else:
                steps.append(answer)  # type: ignore[arg-type]
        with self.lock:
            self.scripts.setdefault(path, []).extend(steps)

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def delivered(self, path: str) -> list[Received]:
        return [r for r in self.to(path) if 200 <= r.status < 300]

    def _answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            steps = self.scripts.get(path)
            return steps.pop(0) if steps else (200, {}, b"ok")

    def _enter(self, path: str) -> None:
        with self.lock:
            self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.max_in_flight[path] = max(self.max_in_flight.get(path, 0), self.in_flight[path])
            self.max_total = max(self.max_total, sum(self.in_flight.values()))

    def _leave(self, path: str) -> None:
        with self.lock:
            self.in_flight[path] -= 1


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # like real servers: no 40 ms delayed-ACK stalls

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            receiver._enter(self.path)
            try:
                time.sleep(receiver.delays.get(self.path, 0.0))
                status, headers, answer = receiver._answer(self.path)
            finally:
                receiver._leave(self.path)
            with receiver.lock:
                receiver.requests.append(Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, status))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(found))
    server.daemon_threads = True
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


# -- Verifying with the independent library ----------------------------------------------------

def signatures(request: Received) -> list[str]:
    return request.headers["webhook-signature"].split(" ")


def signed_by(secret: str, request: Received) -> bool:
    """The `standardwebhooks` package's own signature for this request is among those sent
    (its `verify` also checks the timestamp against the real clock; see `verifies`)."""
    stamp = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=UTC)
    expected = Verifier(secret).sign(request.headers["webhook-id"], stamp, request.body.decode())
    return expected in signatures(request)


def verifies(secret: str, request: Received) -> bool:
    """Full verification by the independent library (headers, timestamp tolerance, JSON)."""
    try:
        Verifier(secret).verify(request.body, request.headers)
    except Exception:
        return False
    return True


# -- A dispatcher on a real store --------------------------------------------------------------

MANY = Plan(id="many", name="Many", max_numbers=5, max_messages_per_day=1000, max_contacts=100,
            max_active_campaigns=1, max_webhooks=20, created_at="", updated_at="")


@dataclass
class Hub:
    """Store, keyring, bus, a fake clock and a started dispatcher, for one tenant."""

    settings: Settings
    store: Store
    keyring: Keyring
    bus: EventBus
    now: list[float]
    tenant: Tenant
    master: bytes
    dispatcher: WebhookDispatcher | None = None

    def clock(self) -> float:
        return self.now[0]

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds

    async def start(self, **kwargs: Any) -> WebhookDispatcher:
        self.dispatcher = WebhookDispatcher(self.store, self.keyring, self.settings, self.clock,
                                            self.bus, **kwargs)
        await self.dispatcher.start()
        return self.dispatcher

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None

    async def run(self) -> int:
        assert self.dispatcher is not None
        return await self.dispatcher.run_due()

    async def webhook(self, url: str, events: list[str] | None = None, **kwargs: Any
                      ) -> tuple[str, str]:
        hook, secret = await manage.create_webhook(
            self.store, self.keyring, CLI, self.tenant.id, url=url, events=events or ["*"],
            description="", allow_private=True, now=self.clock(), **kwargs)
        return hook.id, secret

    async def emit(self, event_type: str, data: dict[str, Any]) -> int:
        stamp = iso(self.clock())
        return await self.store.write(
            lambda conn: outbox.enqueue(conn, self.tenant.id, event_type, data, now=stamp))

    async def deliveries(self, webhook_id: str) -> list[dict[str, Any]]:
        rows = await self.store.fetchall(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id", (webhook_id,))
        return [dict(row) for row in rows]

    async def hook_row(self, webhook_id: str) -> dict[str, Any]:
        row = await self.store.fetchone("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
        assert row is not None
        return dict(row)

    async def reopen(self) -> None:
        """A restart: the dispatcher stops, the file closes and opens again, keys re-derived."""
        await self.stop()
        await self.store.aclose()
        self.store = Store(self.settings.db_path)
        self.store.open()
        self.keyring = Keyring(self.store, self.master)


async def make_hub(data_dir: Path, *, allow_private: bool = True) -> Hub:
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        allow_private_webhooks=allow_private)
    store = Store(settings.db_path)
    store.open()
    master = os.urandom(32)
    now = [time.time()]
    await tenants.save_plan(store, CLI, MANY, now=now[0])
    tenant = await tenants.create_tenant(store, CLI, name="Acme Bakery", plan_id="many",
                                         now=now[0])
    return Hub(settings=settings, store=store, keyring=Keyring(store, master), bus=EventBus(),
               now=now, tenant=tenant, master=master)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    found = await make_hub(tmp_path / "data")
    await found.start()
    yield found
    await found.stop()
    await found.store.aclose()


# -- A running app -----------------------------------------------------------------------------

@dataclass
class App:
    client: TestClient[Litestar]
    services: Services
    now: list[float]
    dispatcher: WebhookDispatcher
    a: Tenant = field(init=False)
    b: Tenant = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        portal = self.client.blocking_portal
        assert portal is not None
        return portal.call(functools.partial(fn, *args, **kwargs))

    def tick(self, seconds: float = 1.0) -> None:
        self.now[0] += seconds

    def api(self, who: str | None, method: str, path: str, *, json: Any = None,
            params: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, json=json, params=params, headers=headers,
                                   follow_redirects=False)

    def page(self, who: str | None, method: str, path: str, *,
             form: dict[str, Any] | None = None, htmx: bool | None = None,
             params: dict[str, Any] | None = None) -> httpx.Response:
        cookie = f"__Host-csrftoken={self.csrf}"
        if who:
            cookie += f"; {SESSION_COOKIE}={self.cookies[who]}"
        headers = {"Cookie": cookie, "X-CSRFToken": self.csrf}
        if htmx if htmx is not None else method != "GET":
            headers["HX-Request"] = "true"
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, data=form, params=params, headers=headers,
                                   follow_redirects=False)

    def drain(self) -> int:
        return self.run(self.dispatcher.run_due)

    def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.run(self.services.store.fetchall, sql, params)]


def _register_routes(app: Litestar) -> None:
    """The webhook routes, unless create_app already has them."""
    if not any(route.path.startswith("/api/v1/webhooks") for route in app.routes):
        for router in (*api_webhooks.ROUTES, *ui_webhooks.ROUTES):
            app.register(router)


async def _populate(env: App) -> None:
    db, now = env.services.store, env.now[0]
    await tenants.save_plan(db, CLI, MANY, now=now)
    env.a = await tenants.create_tenant(db, CLI, name="Acme Bakery", plan_id="many", now=now)
    env.b = await tenants.create_tenant(db, CLI, name="Zenith Dental", plan_id="many", now=now)
    for who, tenant_id, role in (("owner", env.a.id, "owner"), ("member", env.a.id, "member"),
                                 ("other", env.b.id, "owner")):
        _, secret = await apikeys.create_key(db, CLI, tenant_id, name=who, role=role, now=now)
        env.keys[who] = secret
        # A signed-in user without a password (argon2 is slow): a session row is enough.
        user = User(id=new_id("usr"), email=f"{who}.{tenant_id}@example.com", name=who, role=role,
                    tenant_id=tenant_id, created_at=iso(now), last_login_at=None)
        issued = new_token()

        def write(conn: Any, user: User = user, token_hash: str = issued.hash) -> None:
            user_rows.insert_user(conn, user, "!")
            login_rows.insert_session(conn, token_hash=token_hash, user_id=user.id,
                                      now=iso(now), expires_at=iso(now + 30 * 86_400), ip="",
                                      user_agent="pytest")

        await db.write(write)
        env.cookies[who] = issued.secret


def build_app(data_dir: Path, *, allow_private: bool = True) -> Iterator[App]:
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url="https://wa.agency.example",
                        allow_private_webhooks=allow_private)
    now = [time.time()]
    services = Services.build(settings)
    services.clock = lambda: now[0]
    app = create_app(settings, services)
    _register_routes(app)
    with TestClient(app, base_url=BASE_URL) as client:
        portal = client.blocking_portal
        assert portal is not None
        own: WebhookDispatcher | None = None
        dispatcher = getattr(services, "webhooks", None)
        if not isinstance(dispatcher, WebhookDispatcher):
            # Not wired into the services (yet): run one the way they would.
            assert services.keyring is not None
            own = WebhookDispatcher(services.store, services.keyring, settings, services.clock,
                                    services.bus)
            portal.call(own.start)
            services.webhooks = own  # type: ignore[attr-defined]
            dispatcher = own
        env = App(client=client, services=services, now=now, dispatcher=dispatcher)
        env.csrf = generate_csrf_token(services.csrf_secret)
        env.run(_populate, env)
        yield env
        if own is not None:
            portal.call(own.stop)
