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
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient

from whatsdex.app import create_app
from whatsdex.campaigns import service as campaigns
from whatsdex.campaigns.schedule import Schedule
from whatsdex.clock import iso
from whatsdex.contacts import importer
from whatsdex.contacts import service as contacts
from whatsdex.contacts.mapping import clean_options
from whatsdex.contacts.tables import open_table
from whatsdex.identity import apikeys, links, logins, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.messaging.outbox import SendRequest
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions
from whatsdex.store import users as user_rows
from whatsdex.store.campaigns import Campaign
from whatsdex.store.contact_lists import Contact, ImportJob
from whatsdex.store.ids import new_id
from whatsdex.store.media import Media
from whatsdex.store.messages import Message
from whatsdex.store.records import ApiKey, LinkToken, Plan, Tenant, User
from whatsdex.store.templates import MessageTemplate
from whatsdex.store.webhooks import Webhook
from whatsdex.templates import service as templates
from whatsdex.web.auth import SESSION_COOKIE
from whatsdex.webhooks import manage as webhooks

T = TypeVar("T")

BASE_URL = "https://testserver.local"
PASSWORD = "lantern-orchard-quietly-93"  # passes the policy (not common, no e-mail name)
START = 1_790_000_000.0
WHO = ("anonymous", "revoked", "operator", "owner", "member", "other")
# A public address the SSRF guard accepts without a DNS lookup. Nothing is ever sent to it:
# the fixture stops the webhook dispatcher (and `test_matrix` checks no attempt was made).
HOOK_URL = "https://93.184.216.34/hook"
RECIPIENT = "+15557654321"
AUDIENCE_TAG = "matrix audience"
Upload = tuple[str, bytes, str]  # file name, bytes, content type


@dataclass
class Call:
    """What a scenario sends: path parameters, and a JSON body, form fields, files or query."""

    path: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    query: dict[str, str] | None = None
    files: dict[str, Upload] | None = None  # multipart upload


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
    _kept: dict[str, Any] = field(default_factory=dict)

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

    def kept(self, name: str, make: Callable[[], T]) -> T:
        """An object made once per module: for scenarios that only read it."""
        if name not in self._kept:
            self._kept[name] = make()
        return cast(T, self._kept[name])

    def wait(self, what: str, done: Callable[[], bool], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

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
            def there() -> bool:
                found = self.run(wa_sessions.get, self.db, self.a.id, row.id)
                return found is not None and found.status == wanted

            self.wait(f"the number to be {wanted}", there)

        wait("pairing")
        if status == "connected":
            self.run(sup.sandbox, self.a.id, row.id, action="scan", phone="+15550000001")
            wait("connected")
        elif status == "stopped":
            self.run(sup.stop_session, self.a.id, row.id)
        return row.id

    def phone(self) -> str:
        return f"+4930{20_000_000 + next(self._seq)}"

    def fresh_contact(self) -> Contact:
        return self.run(contacts.create, self.db, CLI, self.a.id, phone=self.phone(),
                        name="Ana Lima", now=self.clock())

    def fresh_template(self) -> MessageTemplate:
        return self.run(templates.create_template, self.db, CLI, self.a.id,
                        name=self.unique("Welcome"), body="Hi {{first_name|there}}!",
                        now=self.clock())

    def fresh_webhook(self) -> Webhook:
        keyring = self.services.keyring
        assert keyring is not None
        # Only test events, which are queued on request: no other event adds deliveries.
        hook, _ = self.run(webhooks.create_webhook, self.db, keyring, CLI, self.a.id,
                           url=HOOK_URL, events=["webhook.test"], description="",
                           allow_private=False, now=self.clock())
        return hook

    def fresh_delivery(self) -> tuple[str, int]:
        """A webhook of tenant A and the id of its one (test) delivery."""
        hook = self.fresh_webhook()
        delivery = self.run(webhooks.send_test, self.db, CLI, self.a.id, hook.id,
                            now=self.clock())
        return hook.id, delivery.id

    def number(self) -> str:
        """Tenant A's one connected number, for every message scenario (plans limit numbers)."""
        return self.kept("number", lambda: self.fresh_number("connected"))

    def send(self, request: SendRequest) -> Message:
        outbox = self.services.outbox
        assert outbox is not None
        return self.run(outbox.accept, self.a.id, request, source="api").message

    def message(self) -> Message:
        """A text message of tenant A (its chat is tenant A's too)."""
        return self.kept("message", lambda: self.send(
            SendRequest(session_id=self.number(), to=RECIPIENT, text="Your order is ready")))

    def media(self) -> Media:
        """A file uploaded by tenant A."""
        library = self.services.media
        assert library is not None
        return self.kept("media", lambda: self.run(
            library.store_upload, self.a.id, b"Opening hours: 8-18\n", filename="hours.txt",
            declared_type="text/plain"))

    def media_message(self) -> Message:
        return self.kept("media message", lambda: self.send(SendRequest(
            session_id=self.number(), to=RECIPIENT, type="document", media_id=self.media().id)))

    def import_job(self) -> ImportJob:
        """A finished contact import of tenant A."""
        def make() -> ImportJob:
            self.imports_finished()
            spooled = tempfile.TemporaryFile()  # noqa: SIM115 - the job closes it
            spooled.write(f"phone,name\n{self.phone()},Ana Lima\n".encode())
            table = open_table(spooled, "people.csv")
            options = clean_options()
            job = self.run(importer.create_job, self.db, CLI, self.a.id, table, options,
                           now=self.clock())
            return self.run(importer.run_job, self.db, job, table, options, clock=self.clock)

        return self.kept("import", make)

    def audience_contact(self) -> Contact:
        """The one contact campaigns of tenant A go to (the tag picks nobody else)."""
        return self.kept("audience", lambda: self.run(
            contacts.create, self.db, CLI, self.a.id, phone=self.phone(), name="Ana Lima",
            tags=[AUDIENCE_TAG], now=self.clock()))

    def campaign_input(self) -> dict[str, Any]:
        """A campaign of tenant A as the API takes it. It only sends in a window that stays
        closed while the tests run (the clock starts at 14:13 UTC), so nothing is sent."""
        self.audience_contact()
        template = self.kept("template", self.fresh_template)
        return {"name": self.unique("Launch"), "template_id": template.id,
                "session_ids": [self.number()], "audience": {"tags_any": [AUDIENCE_TAG]},
                "schedule": {"kind": "now", "timezone": "UTC"},
                "window": {"days": list(range(7)), "start": "02:00", "end": "03:00"}}

    def fresh_campaign(self, status: str = "draft") -> Campaign:
        """A campaign of tenant A in `status`: draft, scheduled, running or paused."""
        data = msgspec.convert(self.campaign_input(), campaigns.CampaignInput)
        if status == "scheduled":
            data.schedule = Schedule(kind="at", at="2030-01-01T09:00:00Z", timezone="UTC")
        made = self.run(campaigns.create, self.db, CLI, self.a.id, data, now=self.clock())
        if status != "draft":
            self.run(campaigns.start, self.db, CLI, self.a.id, made.id, now=self.clock())
        if status == "paused":
            self.run(campaigns.pause, self.db, CLI, self.a.id, made.id, now=self.clock())
        found = self.run(campaigns.get, self.db, self.a.id, made.id)
        assert found.status == status, found
        return found

    def imports_finished(self) -> None:
        """Tenant A imports one file at a time (409 while one runs): let the last one end."""
        self.wait("tenant A's contact import", lambda: not self.fetchval(
            "SELECT count(*) FROM contact_imports WHERE tenant_id = ? "
            "AND status IN ('queued', 'running')", (self.a.id,)))

    # -- database facts --------------------------------------------------------------------------

    def fetchval(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.run(self.db.fetchval, sql, params)

    def audit_since(self, moment: float) -> list[dict[str, Any]]:
        rows = self.run(self.db.fetchall, "SELECT * FROM audit_log WHERE at >= ? ORDER BY id",
                        (iso(moment),))
        return [dict(row) for row in rows]

    # -- requests --------------------------------------------------------------------------------

    def api(self, who: str, method: str, path: str, *, json: Any = None,
            query: dict[str, str] | None = None, files: dict[str, Upload] | None = None
            ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who in self.keys else {}
        self.tick()
        self.client.cookies.clear()
        return self.client.request(method, path, json=json, params=query, files=files,
                                   headers=headers)

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
    # Room for every object the scenarios make in tenant A (each makes its own).
    wide = Plan(id="wide", name="Wide", max_numbers=500, max_messages_per_day=1000,
                max_contacts=1000, max_active_campaigns=100, max_webhooks=500, created_at="",
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
        # Webhooks made here point at a public address: no delivery may leave a test.
        assert services.webhooks is not None
        w.run(services.webhooks.stop)
        w.run(_populate, w)
        yield w
