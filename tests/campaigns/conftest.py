"""Fixtures for campaigns: the real store with a tenant, numbers, contacts and a template, the
real outbox and delivery service (a fake engine where the engine is not the point) and the
campaign engine, all on one controllable clock (`make_rig`); and the real app with the sandbox
engine and the web_sessions identities, campaigns wired in (`build_campaign_env`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient
from messaging.conftest import FakeClock, FakeHost, FakeSupervisor, make_number, make_tenant
from web_sessions.conftest import BASE_URL, PUBLIC_URL, Env, _populate

from campaigns.wiring import wire
from whatsdex.app import create_app
from whatsdex.bus import EventBus
from whatsdex.campaigns import service
from whatsdex.campaigns.audience import Audience
from whatsdex.campaigns.engine import CampaignEngine
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.campaigns.schedule import Schedule
from whatsdex.clock import iso
from whatsdex.identity.principal import Principal
from whatsdex.messaging.delivery import DeliveryService
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Outbox
from whatsdex.services import Services
from whatsdex.sessions import sandbox_network
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import contact_lists as contact_rows
from whatsdex.store import templates as template_rows
from whatsdex.store.campaigns import Campaign
from whatsdex.store.contact_lists import Contact
from whatsdex.store.ids import new_id
from whatsdex.store.templates import MessageTemplate

ACTOR = Principal(kind="user", id="usr_test", label="tester@example.com", role="owner",
                  tenant_id=None)
BODY = "{Hi|Hello} {{first_name|there}}, {our|the} spring offer is on!"


# -- data ------------------------------------------------------------------------------------------

async def add_contacts(store: Store, tenant_id: str, count: int, *, start: int = 0,
                       tags: Sequence[str] = ("customers",), opt_status: str = "unknown",
                       prefix: str = "1555", now: float | None = None) -> list[str]:
    """`count` contacts with phones `<prefix><7 digits>`, in one write."""
    stamp = iso(now if now is not None else time.time())
    contacts = [
        Contact(id=new_id("con"), tenant_id=tenant_id, phone=f"{prefix}{start + i:07d}",
                jid=f"{prefix}{start + i:07d}@s.whatsapp.net", lid="",
                name=f"Person {start + i}", push_name="", tags=list(tags),
                custom={"city": "Berlin" if i % 2 else "Lisbon"}, opt_status=opt_status,
                opt_changed_at=stamp if opt_status != "unknown" else None,
                opt_source="api" if opt_status != "unknown" else "", created_at=stamp,
                updated_at=stamp)
        for i in range(count)]
    await store.write(lambda conn: contact_rows.insert_many(conn, contacts))
    return [c.id for c in contacts]


async def opt_out(store: Store, tenant_id: str, contact_ids: Sequence[str]) -> None:
    stamp = iso(time.time())
    await store.write(lambda conn: contact_rows.set_opt(
        conn, tenant_id, contact_ids, "opted_out", source="keyword", at=stamp))


async def add_template(store: Store, tenant_id: str, body: str = BODY, name: str = "Offer"
                       ) -> str:
    stamp = iso(time.time())
    row = MessageTemplate(id=new_id("tpl"), tenant_id=tenant_id, name=name, category="",
                          body=body, media_id=None, media_kind="", filename="",
                          created_at=stamp, updated_at=stamp)
    await store.write(lambda conn: template_rows.insert(conn, row))
    return row.id


async def new_campaign(store: Store, tenant_id: str, template_id: str, numbers: list[str], *,
                       now: float, tags: Sequence[str] = ("customers",),
                       pacing: Pacing | None = None, window: Window | None = None,
                       schedule: Schedule | None = None, typing: float = 0.0,
                       name: str = "Spring offer") -> Campaign:
    data = service.CampaignInput(
        name=name, template_id=template_id, session_ids=numbers,
        audience=Audience(tags_any=list(tags)), schedule=schedule or Schedule(),
        window=window, pacing=pacing or Pacing(), typing_seconds=typing)
    return await service.create(store, ACTOR, tenant_id, data, now=now)


# -- the store-level rig ---------------------------------------------------------------------------

@dataclass
class Rig:
    store: Store
    settings: Settings
    clock: FakeClock
    supervisor: FakeSupervisor
    host: FakeHost
    delivery: DeliveryService
    outbox: Outbox
    engine: CampaignEngine
    tenant_id: str
    numbers: list[str]
    engines: list[CampaignEngine] = field(default_factory=list)

    def new_engine(self, **kwargs: Any) -> CampaignEngine:
        engine = CampaignEngine(self.store, self.outbox, self.supervisor.bus, self.clock,
                                sleep=self.clock.sleep, **kwargs)
        self.engines.append(engine)
        self.engine = engine
        return engine

    async def wait(self, predicate: Callable[[], Awaitable[bool]], what: str,
                   timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.01)

    async def status(self, campaign_id: str) -> str:
        return str(await self.store.fetchval("SELECT status FROM campaigns WHERE id = ?",
                                             (campaign_id,)))

    async def finished(self, campaign_id: str, status: str = "completed",
                       timeout: float = 30.0) -> None:
        async def done() -> bool:
            return await self.status(campaign_id) == status

        await self.wait(done, f"campaign {status}", timeout)


@pytest.fixture
async def make_rig(store: Store, settings: Settings
                   ) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    built: list[Rig] = []

    async def build(*, numbers: int = 1, per_day: int = 100_000, rng: Callable[[], float]
                    | None = None, **overrides: Any) -> Rig:
        clock = FakeClock()
        bus = EventBus()
        supervisor = FakeSupervisor(bus)
        host = FakeHost(clock)
        tuned = dataclasses.replace(settings, send_min_gap_seconds=0.0, send_jitter_seconds=0.0,
                                    number_daily_cap=1_000_000, **overrides)
        tenant_id = await make_tenant(store, per_day=per_day)
        await store.write(lambda conn: conn.execute(
            "UPDATE plans SET max_active_campaigns = 5 WHERE id = ?", (f"p{per_day}",)))
        sessions = []
        for i in range(numbers):
            session_id = await make_number(store, tenant_id, phone=f"1444000000{i}")
            supervisor.add(tenant_id, session_id, host)
            sessions.append(session_id)
        delivery = DeliveryService(store, supervisor, bus, tuned, clock,  # type: ignore[arg-type]
                                   sleep=clock.sleep)
        outbox = Outbox(store, tuned, clock, MediaLibrary(store, tuned, clock),
                        on_queued=delivery.wake)
        extra = {} if rng is None else {"rng": rng}
        engine = CampaignEngine(store, outbox, bus, clock, sleep=clock.sleep, **extra)
        rig = Rig(store=store, settings=tuned, clock=clock, supervisor=supervisor, host=host,
                  delivery=delivery, outbox=outbox, engine=engine, tenant_id=tenant_id,
                  numbers=sessions, engines=[engine])
        built.append(rig)
        return rig

    yield build
    for rig in built:
        for engine in rig.engines:
            await engine.stop()
        await rig.delivery.stop()


# -- the real app with the sandbox engine ----------------------------------------------------------

@dataclass
class CampaignEnv(Env):
    """The web_sessions identities (owner, member, other, operator, free) with a linked
    number per tenant A and B, and campaign helpers."""

    number: str = ""
    other_number: str = ""
    template_id: str = ""

    @property
    def store(self) -> Store:
        return self.services.store

    def engine(self) -> CampaignEngine:
        engine = getattr(self.services, "campaigns", None)
        assert isinstance(engine, CampaignEngine)
        return engine

    def contacts(self, count: int, *, tenant: str = "a", **kwargs: Any) -> list[str]:
        tenant_id = (self.a if tenant == "a" else self.b).id
        return self.run(add_contacts, self.store, tenant_id, count, **kwargs)

    def create(self, who: str = "owner", name: str = "Front desk") -> str:  # type: ignore[override]
        return super().create(who, name)

    def campaign(self, who: str = "owner", **body: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {"name": "Spring offer", "template_id": self.template_id,
                                    "session_ids": [self.number],
                                    "audience": {"tags_any": ["customers"]}}
        created = self.api(who, "POST", "/api/v1/campaigns", json={**defaults, **body})
        assert created.status_code == 201, created.text
        answer: dict[str, Any] = created.json()
        return answer

    def get(self, campaign_id: str, who: str = "owner") -> dict[str, Any]:
        found = self.api(who, "GET", f"/api/v1/campaigns/{campaign_id}")
        assert found.status_code == 200, found.text
        answer: dict[str, Any] = found.json()
        return answer

    def act(self, campaign_id: str, action: str, who: str = "owner") -> dict[str, Any]:
        done = self.api(who, "POST", f"/api/v1/campaigns/{campaign_id}/{action}")
        assert done.status_code == 200, done.text
        answer: dict[str, Any] = done.json()
        return answer

    def wait_campaign(self, campaign_id: str, *statuses: str, timeout: float = 30.0
                      ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            current = self.get(campaign_id)
            if current["status"] in statuses:
                return current
            assert time.monotonic() < deadline, f"campaign is {current}, not {statuses}"
            time.sleep(0.05)

    def deliveries(self) -> list[dict[str, Any]]:
        record = self.services.settings.data_dir / "sandbox-network.db"
        return sandbox_network.deliveries(record)

    def fetch(self, sql: str, *params: Any) -> list[Any]:
        return list(self.run(self.store.fetchall, sql, params))


async def _prepare(env: CampaignEnv) -> None:
    db = env.services.store
    await db.write(lambda conn: conn.execute(
        "UPDATE plans SET max_active_campaigns = 2, max_messages_per_day = 100000, "
        "max_contacts = 100000 WHERE id = 'many'"))
    env.template_id = await add_template(db, env.a.id)


def build_campaign_env(data_dir: Path, previous: CampaignEnv | None = None
                       ) -> Iterator[CampaignEnv]:
    """The app on `data_dir`; with `previous`, the same data started again (a restart)."""
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url=PUBLIC_URL, send_min_gap_seconds=0.0,
                        send_jitter_seconds=0.0)
    services = Services.build(settings)
    app = create_app(settings, services)
    wire(app, services)
    with TestClient(app, base_url=BASE_URL) as client:
        env = CampaignEnv(client=client, services=services)
        env.csrf = generate_csrf_token(services.csrf_secret)
        if previous is not None:
            env.a, env.b, env.f = previous.a, previous.b, previous.f
            env.keys, env.key_ids, env.cookies = previous.keys, previous.key_ids, previous.cookies
            env.number, env.other_number = previous.number, previous.other_number
            env.template_id = previous.template_id
            yield env
            return
        env.run(_populate, env)
        env.run(_prepare, env)
        env.number = env.linked(name="Sales", phone="+15551110001")
        env.other_number = env.create(who="other", name="Zenith desk")
        env.wait_status(env.other_number, "pairing", who="other")
        assert env.scan(env.other_number, "+15552220001", who="other").status_code == 200
        env.wait_status(env.other_number, "connected", who="other")
        yield env
