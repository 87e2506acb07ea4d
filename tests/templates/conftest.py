"""One running app per test module with two tenants, their keys and signed-in users.

Identities:
  owner    tenant A's owner (API key and signed-in user)
  member   tenant A's member (API key and signed-in user)
  other    tenant B's owner (API key and signed-in user): never sees A's templates or contacts
  operator the operator (API key and signed-in user): has no tenant, so no templates

Contacts and media rows are written straight into their tables: this feature only reads them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
from whatsdex.store.records import Tenant, User
from whatsdex.web.api import templates as api_templates
from whatsdex.web.auth import SESSION_COOKIE
from whatsdex.web.ui import templates as ui_templates

T = TypeVar("T")

BASE_URL = "https://testserver.local"
START = 1_790_000_000.0


def ensure_routes(app: Litestar) -> None:
    """Register the templates routes unless app.py already does."""
    paths = {route.path for route in app.routes}
    if "/api/v1/templates" not in paths:
        for router in api_templates.ROUTES:
            app.register(router)
    if "/templates" not in paths:
        for router in ui_templates.ROUTES:
            app.register(router)


@dataclass
class Env:
    client: TestClient[Litestar]
    services: Services
    now: list[float]
    a: Tenant = field(init=False)
    b: Tenant = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return await fn(*args, **kwargs)

        return self.client.blocking_portal.call(call)

    def tick(self) -> float:
        self.now[0] += 1.0
        return self.now[0]

    def unique(self, prefix: str) -> str:
        return f"{prefix} {next(self._seq)}"

    # -- requests --------------------------------------------------------------------------------

    def api(self, who: str | None, method: str, path: str, *, json: Any = None,
            query: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, json=json, params=query, headers=headers)

    def page(self, who: str | None, method: str, path: str, *,
             form: dict[str, str] | None = None, htmx: bool | None = None) -> httpx.Response:
        """A dashboard request as htmx sends it: session and CSRF cookies, CSRF header."""
        cookie = f"__Host-csrftoken={self.csrf}"
        if who:
            cookie += f"; {SESSION_COOKIE}={self.cookies[who]}"
        headers = {"Cookie": cookie, "X-CSRFToken": self.csrf}
        if htmx if htmx is not None else method != "GET":
            headers["HX-Request"] = "true"
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, data=form, headers=headers,
                                   follow_redirects=False)

    # -- rows this feature reads but does not own --------------------------------------------------

    def contact(self, tenant_id: str, *, name: str = "", phone: str = "",
                push_name: str = "", custom: dict[str, Any] | None = None) -> str:
        contact_id = new_id("con")
        stamp = iso(self.tick())
        values = (contact_id, tenant_id, phone or f"1555{next(self._seq):07d}", name, push_name,
                  json.dumps(custom or {}), stamp, stamp)
        self.run(self.services.store.write, lambda conn: conn.execute(
            "INSERT INTO contacts (id, tenant_id, phone, name, push_name, custom, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values))
        return contact_id

    def media(self, tenant_id: str, *, mimetype: str = "image/jpeg", filename: str = "a.jpg",
              origin: str = "upload", data: bytes = b"\xff\xd8\xff") -> str:
        media_id = new_id("med")
        stamp = iso(self.tick())
        values = (media_id, tenant_id, "0" * 64, mimetype, len(data), filename, origin, data,
                  stamp, stamp)
        self.run(self.services.store.write, lambda conn: conn.execute(
            "INSERT INTO media (id, tenant_id, sha256, mimetype, size, filename, origin, data, "
            "created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values))
        return media_id

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        self.run(self.services.store.write, lambda conn: conn.execute(statement, params))

    def fetchall(self, statement: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        found = self.run(self.services.store.fetchall, statement, params)
        return [dict(row) for row in found]

    def create(self, who: str = "owner", **fields: Any) -> dict[str, Any]:
        body = {"name": self.unique("Template"), "body": "Hi {{first_name|there}}!", **fields}
        created = self.api(who, "POST", "/api/v1/templates", json=body)
        assert created.status_code == 201, created.text
        result: dict[str, Any] = created.json()
        return result


async def _populate(env: Env) -> None:
    db, now = env.services.store, env.now[0]
    env.a = await tenants.create_tenant(db, CLI, name="Acme Bakery", now=now)
    env.b = await tenants.create_tenant(db, CLI, name="Zenith Dental", now=now)
    people = (("operator", None, "operator"), ("owner", env.a.id, "owner"),
              ("member", env.a.id, "member"), ("other", env.b.id, "owner"))
    for who, tenant_id, role in people:
        _, secret = await apikeys.create_key(db, CLI, tenant_id, name=who, role=role, now=now)
        env.keys[who] = secret
        # A session row is enough to be signed in (argon2 hashing would only slow tests down).
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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("templates") / "data"
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url="https://wa.agency.example")
    now = [START]
    services = Services.build(settings)
    services.clock = lambda: now[0]
    app = create_app(settings, services)
    ensure_routes(app)
    with TestClient(app, base_url=BASE_URL) as client:
        built = Env(client=client, services=services, now=now)
        built.csrf = generate_csrf_token(services.csrf_secret)
        built.run(_populate, built)
        yield built
