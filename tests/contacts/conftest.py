"""One running app per test module: tenant A (owner and member keys, a signed-in owner) on a
plan with room for big imports, tenant B (its own owner key), and helpers to call the API.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from litestar import Litestar
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient

from whatsdex.app import create_app
from whatsdex.identity import apikeys, logins, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store.records import Plan, Tenant
from whatsdex.web.api import contacts as api_contacts
from whatsdex.web.auth import SESSION_COOKIE
from whatsdex.web.ui import contacts as ui_contacts

T = TypeVar("T")

BASE_URL = "https://testserver.local"
PASSWORD = "lantern-orchard-quietly-93"
BIG = 1_000_000


def with_contact_routes(app: Litestar) -> Litestar:
    """Register the contact routes unless app.py already does (then this changes nothing)."""
    served = {route.path_format for route in app.routes}
    if "/api/v1/contacts" not in served:
        for router in api_contacts.ROUTES:
            app.register(router)
    if "/contacts" not in served:
        for router in ui_contacts.ROUTES:
            app.register(router)
    return app


@dataclass
class World:
    client: TestClient[Litestar]
    services: Services
    a: Tenant = field(init=False)
    b: Tenant = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)  # owner, member, other, fresh ones
    tenant_of: dict[str, str] = field(default_factory=dict)  # key name → tenant id
    session: str = ""  # tenant A's owner, signed in
    csrf: str = ""
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return await fn(*args, **kwargs)

        return self.client.blocking_portal.call(call)

    @property
    def db(self) -> Store:
        return self.services.store

    def unique(self, prefix: str = "x") -> str:
        return f"{prefix}{next(self._seq)}"

    def fetchval(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.run(self.db.fetchval, sql, params)

    def api(self, method: str, path: str, who: str = "owner", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}", **kwargs.pop("headers", {})}
        self.client.cookies.clear()
        return self.client.request(method, path, headers=headers, **kwargs)

    def page(self, method: str, path: str, *, htmx: bool | None = None,
             **kwargs: Any) -> httpx.Response:
        """A dashboard request of A's owner, with the CSRF cookie and header as htmx sends."""
        headers = {"Cookie": f"__Host-csrftoken={self.csrf}; {SESSION_COOKIE}={self.session}",
                   "X-CSRFToken": self.csrf}
        if htmx if htmx is not None else method != "GET":
            headers["HX-Request"] = "true"
        self.client.cookies.clear()
        return self.client.request(method, path, headers=headers, follow_redirects=False,
                                   **kwargs)

    def fresh_tenant(self, max_contacts: int = BIG) -> tuple[Tenant, str]:
        """A tenant on its own plan, and an owner API key for it."""
        plan_id = self.unique("plan-")
        plan = Plan(id=plan_id, name=f"Plan {plan_id}", max_numbers=1,
                    max_messages_per_day=100, max_contacts=max_contacts, max_active_campaigns=1,
                    max_webhooks=1, created_at="", updated_at="")
        self.run(tenants.save_plan, self.db, CLI, plan, now=time.time())
        tenant = self.run(tenants.create_tenant, self.db, CLI, name=self.unique("Tenant "),
                          plan_id=plan_id, now=time.time())
        _, secret = self.run(apikeys.create_key, self.db, CLI, tenant.id, name="main",
                             role="owner", now=time.time())
        return tenant, secret

    def wait_import(self, job_id: str, who: str = "owner", timeout: float = 120.0
                    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.api("GET", f"/api/v1/contacts/imports/{job_id}",
                                           who).json()
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"import {job_id} did not finish in {timeout}s")


async def _populate(w: World) -> None:
    db, now = w.db, time.time()
    big = Plan(id="contacts-big", name="Big", max_numbers=1, max_messages_per_day=100,
               max_contacts=BIG, max_active_campaigns=1, max_webhooks=1, created_at="",
               updated_at="")
    await tenants.save_plan(db, CLI, big, now=now)
    w.a = await tenants.create_tenant(db, CLI, name="Acme Bakery", plan_id=big.id, now=now)
    w.b = await tenants.create_tenant(db, CLI, name="Zenith Dental", plan_id=big.id, now=now)
    w.keys["owner"] = (await apikeys.create_key(db, CLI, w.a.id, name="main", role="owner",
                                                now=now))[1]
    w.keys["member"] = (await apikeys.create_key(db, CLI, w.a.id, name="crm", role="member",
                                                 now=now))[1]
    w.keys["other"] = (await apikeys.create_key(db, CLI, w.b.id, name="main", role="owner",
                                                now=now))[1]
    _, token = await users.invite(db, CLI, w.a.id, email="owner@acme.example", role="owner",
                                  now=now)
    await users.accept_invite(db, token, password=PASSWORD, now=now)
    opened = await logins.login(db, email="owner@acme.example", password=PASSWORD,
                                ip="testclient", user_agent="pytest", now=now,
                                limits=w.services.session_limits)
    w.session = opened.token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir: Path = tmp_path_factory.mktemp("contacts") / "data"
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url="https://wa.agency.example")
    services = Services.build(settings)
    app = with_contact_routes(create_app(settings, services))
    with TestClient(app, base_url=BASE_URL) as client:
        w = World(client=client, services=services)
        w.csrf = generate_csrf_token(services.csrf_secret)
        w.run(_populate, w)
        yield w


@pytest.fixture
def html(parse_html: Any) -> Any:
    """The shared HTML parser (tests/conftest.py) under a short name."""
    return parse_html


def csv_bytes(rows: list[list[str]], delimiter: str = ",", bom: bool = False) -> bytes:
    text = "\r\n".join(delimiter.join(row) for row in rows) + "\r\n"
    return ("\ufeff" if bom else "").encode() + text.encode()
