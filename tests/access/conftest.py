"""One running app per test module with two tenants, their users, keys and sessions.

Identities used by the scenario tables:
  anonymous  no credentials
  revoked    a revoked API key (API) / a signed-out session (pages) of tenant A's owner
  operator   the operator's API key / session
  owner      tenant A's owner
  member     tenant A's member
  other      tenant B's owner (must never see or touch tenant A)

The clock is fake and moves one second before every request, so "what did this request write"
is "audit rows stamped at or after its second".
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
from whatsdex.clock import iso
from whatsdex.identity import apikeys, links, logins, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions
from whatsdex.store import users as user_rows
from whatsdex.store.ids import new_id
from whatsdex.store.records import ApiKey, LinkToken, Plan, Tenant, User
from whatsdex.web.auth import SESSION_COOKIE

T = TypeVar("T")

BASE_URL = "https://testserver.local"
PASSWORD = "lantern-orchard-quietly-93"  # passes the policy (not common, no e-mail name)
START = 1_790_000_000.0
WHO = ("anonymous", "revoked", "operator", "owner", "member", "other")


@dataclass
class Call:
    """What a scenario sends: path parameters, and a JSON body, form fields or query."""

    path: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    query: dict[str, str] | None = None


@dataclass
class World:
    client: TestClient[Litestar]
    services: Services
    now: list[float]
    a: Tenant = field(init=False)
    b: Tenant = field(init=False)
    keys: dict[str, str] = field(default_factory=dict)  # who -> API key
    sessions: dict[str, str] = field(default_factory=dict)  # who -> session token
    users: dict[str, User] = field(default_factory=dict)
    csrf: str = ""
    _seq: Iterator[int] = field(default_factory=itertools.count)

    # -- running domain code on the app's event loop --------------------------------------------

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async def call() -> T:
            return await fn(*args, **kwargs)

        return self.client.blocking_portal.call(call)

    @property
    def db(self) -> Store:
        return self.services.store

    def clock(self) -> float:
        return self.now[0]

    def tick(self) -> float:
        self.now[0] += 1.0
        return self.now[0]

    def unique(self, prefix: str) -> str:
        return f"{prefix} {next(self._seq)}"

    # -- fresh objects for one scenario ----------------------------------------------------------

    def fresh_tenant(self, name: str | None = None, plan: str = "free") -> Tenant:
        return self.run(tenants.create_tenant, self.db, CLI, name=name or self.unique("Fresh"),
                        plan_id=plan, now=self.clock())

    def fresh_key(self, tenant_id: str | None, role: str = "member") -> ApiKey:
        key, _ = self.run(apikeys.create_key, self.db, CLI, tenant_id, name=self.unique("key"),
                          role=role, now=self.clock())
        return key

    def fresh_invite(self, tenant_id: str, role: str = "member") -> LinkToken:
        link, _ = self.run(users.invite, self.db, CLI, tenant_id,
                           email=f"{self.unique('invitee').replace(' ', '')}@example.com",
                           role=role, now=self.clock())
        return link

    def fresh_member(self, tenant_id: str) -> User:
        """A member row without a usable password (argon2 is slow; these never sign in)."""
        user = User(id=new_id("usr"), email=f"{self.unique('m').replace(' ', '')}@example.com",
                    name="", role="member", tenant_id=tenant_id, created_at=iso(self.clock()),
                    last_login_at=None)
        self.run(self.db.write, lambda conn: user_rows.insert_user(conn, user, "!"))
        return user

    def fresh_plan(self) -> Plan:
        plan = Plan(id=f"plan-{next(self._seq)}", name="Trial", max_numbers=1,
                    max_messages_per_day=10, max_contacts=10, max_active_campaigns=0,
                    max_webhooks=0, created_at="", updated_at="")
        return self.run(tenants.save_plan, self.db, CLI, plan, now=self.clock())

    def fresh_number(self, status: str = "pairing") -> str:
        """A number of tenant A in `status` (pairing, connected or stopped)."""
        sup = self.services.supervisor
        assert sup is not None
        row = self.run(sup.create, self.a.id, CLI, name=self.unique("Number"))

        def wait(wanted: str) -> None:
            deadline = time.monotonic() + 10
            while self.run(wa_sessions.get, self.db, self.a.id, row.id).status != wanted:
                assert time.monotonic() < deadline
                time.sleep(0.02)

        wait("pairing")
        if status == "connected":
            self.run(sup.sandbox, self.a.id, row.id, action="scan", phone="+15550000001")
            wait("connected")
        elif status == "stopped":
            self.run(sup.stop_session, self.a.id, row.id)
        return row.id

    # -- database facts --------------------------------------------------------------------------

    def fetchval(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.run(self.db.fetchval, sql, params)

    def audit_since(self, moment: float) -> list[dict[str, Any]]:
        rows = self.run(self.db.fetchall, "SELECT * FROM audit_log WHERE at >= ? ORDER BY id",
                        (iso(moment),))
        return [dict(row) for row in rows]

    # -- requests --------------------------------------------------------------------------------

    def api(self, who: str, method: str, path: str, *, json: Any = None,
            query: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who in self.keys else {}
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, json=json, params=query, headers=headers)

    def page(self, who: str, method: str, path: str, *, form: dict[str, str] | None = None,
             query: dict[str, str] | None = None, htmx: bool | None = None) -> httpx.Response:
        """A dashboard request with the CSRF cookie and header, as htmx sends it."""
        cookie = f"__Host-csrftoken={self.csrf}"
        if who in self.sessions:
            cookie += f"; {SESSION_COOKIE}={self.sessions[who]}"
        headers = {"Cookie": cookie, "X-CSRFToken": self.csrf}
        if htmx if htmx is not None else method != "GET":
            headers["HX-Request"] = "true"
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, data=form, params=query, headers=headers,
                                   follow_redirects=False)


async def _populate(world: World) -> None:
    db, now = world.db, world.clock()
    limits = world.services.session_limits
    await users.create_operator(db, CLI, email="operator@agency.example", password=PASSWORD,
                                now=now)
    wide = Plan(id="wide", name="Wide", max_numbers=500, max_messages_per_day=10,
                max_contacts=10, max_active_campaigns=1, max_webhooks=1, created_at="",
                updated_at="")
    await tenants.save_plan(db, CLI, wide, now=now)
    world.a = await tenants.create_tenant(db, CLI, name="Acme Bakery", plan_id="wide", now=now)
    world.b = await tenants.create_tenant(db, CLI, name="Zenith Dental", now=now)
    people = {"owner": (world.a, "owner@acme-bakery.example", "owner"),
              "member": (world.a, "member@acme-bakery.example", "member"),
              "other": (world.b, "owner@zenith-dental.example", "owner")}
    for who, (tenant, email, role) in people.items():
        _, token = await users.invite(db, CLI, tenant.id, email=email, role=role, now=now)
        world.users[who] = await users.accept_invite(db, token, password=PASSWORD, now=now)

    async def key(tenant_id: str | None, role: str = "owner") -> tuple[ApiKey, str]:
        return await apikeys.create_key(db, CLI, tenant_id, name="main", role=role, now=now)

    world.keys["operator"] = (await key(None))[1]
    world.keys["owner"] = (await key(world.a.id))[1]
    world.keys["member"] = (await key(world.a.id, "member"))[1]
    world.keys["other"] = (await key(world.b.id))[1]
    revoked, world.keys["revoked"] = await key(world.a.id)
    await apikeys.revoke_key(db, CLI, world.a.id, revoked.id, now=now)

    emails = {"operator": "operator@agency.example",
              **{who: person[1] for who, person in people.items()}}
    for who, email in emails.items():
        opened = await logins.login(db, email=email, password=PASSWORD, ip="testclient",
                                    user_agent="pytest", now=now, limits=limits)
        world.sessions[who] = opened.token
    # A signed-out session of A's owner: the cookie a browser may still send.
    gone = await logins.login(db, email=emails["owner"], password=PASSWORD, ip="testclient",
                              user_agent="pytest", now=now, limits=limits)
    session = await logins.resolve(db, gone.token, now=now, limits=limits)
    assert session is not None
    await logins.logout(db, session, now=now)
    world.sessions["revoked"] = gone.token
    # Something in A's audit log that only A may read.
    await links.create_client_link(db, CLI, world.a.id, "num_acme", now=now)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir: Path = tmp_path_factory.mktemp("access") / "data"
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url="https://wa.agency.example")
    now = [START]
    services = Services.build(settings)
    services.clock = lambda: now[0]
    app = create_app(settings, services)
    with TestClient(app, base_url=BASE_URL) as client:
        w = World(client=client, services=services, now=now)
        w.csrf = generate_csrf_token(services.csrf_secret)
        w.run(_populate, w)
        yield w
