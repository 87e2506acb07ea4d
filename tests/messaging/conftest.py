"""Fixtures for the messaging core: the real store on tmp_path with tenants and numbers, a
controllable clock, a fake supervisor (where the engine is not the point), and the real app
running the sandbox engine (where it is)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from whatsdex.app import create_app
from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import iso
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.messaging.delivery import DeliveryService
from whatsdex.messaging.inbound import MessageIngest
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Outbox, SendRequest
from whatsdex.services import Services
from whatsdex.sessions import protocol
from whatsdex.settings import Settings
from whatsdex.store import Store, wa_sessions
from whatsdex.store.ids import new_id
from whatsdex.store.records import Plan, WaSession

T = TypeVar("T")

START = 1_790_000_000.0  # 2026-09-21T… UTC, a fixed moment for the controlled clock
WAIT = 15.0


# -- the store with tenants and numbers ----------------------------------------------------------


async def make_tenant(store: Store, *, per_day: int = 10_000, name: str = "Acme") -> str:
    plan_id = f"p{per_day}"
    await tenants.save_plan(store, CLI, Plan(
        id=plan_id, name=f"Plan {per_day}", max_numbers=50, max_messages_per_day=per_day,
        max_contacts=100_000, max_active_campaigns=1, max_webhooks=5, created_at="",
        updated_at=""), now=time.time())
    tenant = await tenants.create_tenant(store, CLI, name=name, plan_id=plan_id, now=time.time())
    return tenant.id


async def make_number(store: Store, tenant_id: str, *, status: str = "connected",
                      phone: str = "15550000001", linked: bool = True) -> str:
    stamp = iso(time.time())
    row = WaSession(id=new_id("ses"), tenant_id=tenant_id, name="Sales", status=status,
                    status_reason="", status_since=stamp, desired="running",
                    phone=phone if linked else "",
                    jid=f"{phone}@s.whatsapp.net" if linked else "", lid="", push_name="",
                    created_at=stamp, updated_at=stamp)
    await store.write(lambda conn: wa_sessions.insert(conn, row))
    return row.id


async def add_webhook(store: Store, tenant_id: str, events: str = '["*"]') -> str:
    webhook_id = new_id("whk")
    stamp = iso(time.time())
    await store.write(lambda conn: conn.execute(
        "INSERT INTO webhooks (id, tenant_id, url, events, secret, created_at, updated_at) "
        "VALUES (?, ?, 'https://hooks.example/in', ?, x'00', ?, ?)",
        (webhook_id, tenant_id, events, stamp, stamp)))
    return webhook_id


async def webhook_events(store: Store, tenant_id: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    rows = await store.fetchall(
        "SELECT event_type, payload FROM webhook_deliveries WHERE tenant_id = ? ORDER BY id",
        (tenant_id,))
    return [(row[0], json.loads(row[1])["data"]) for row in rows]


async def status_of(store: Store, message_id: str) -> tuple[str, str, int]:
    row = await store.fetchone(
        "SELECT status, status_reason, attempts FROM messages WHERE id = ?", (message_id,))
    assert row is not None
    return row[0], row[1], row[2]


def text(session_id: str, to: str = "+15559990001", body: str = "hello", **more: Any
         ) -> SendRequest:
    return SendRequest(session_id=session_id, to=to, text=body, **more)


# -- a controllable clock --------------------------------------------------------------------------


@dataclass
class SkippingClock:
    """Real time plus whatever `sleep` skipped: backoff waits pass at once."""

    skipped: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.skipped += max(0.0, seconds)
        await asyncio.sleep(0.001)


@dataclass
class FakeClock:
    """`clock()` stands still until `sleep` advances it: pacing without real waiting."""

    now: float = START
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


# -- a fake supervisor ---------------------------------------------------------------------------


@dataclass
class FakeLive:
    tenant_id: str
    status: str = "connected"
    host: FakeHost | None = None


class FakeHost:
    """Answers Send like an engine: ok with a wa_id derived from the outbox id, or a scripted
    failure; records every call with the clock reading at that moment."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.calls: list[tuple[float, protocol.Command]] = []
        self.failures: list[protocol.Reply | BaseException] = []
        self.delivered: dict[str, int] = {}  # outbox id → times seen (a network would dedupe)

    async def call(self, command: protocol.Command, timeout: float | None = None
                   ) -> protocol.Reply:
        self.calls.append((self.clock(), command))
        await asyncio.sleep(0)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, BaseException):
                raise failure
            return failure
        if isinstance(command, protocol.Send):
            self.delivered[command.outbox_id] = self.delivered.get(command.outbox_id, 0) + 1
            return protocol.Reply(req=0, ok=True, result={
                "wa_id": "3EB0" + command.outbox_id[-12:].upper(),
                "timestamp_ms": int(self.clock() * 1000)})
        return protocol.Reply(req=0, ok=True)

    def sends(self) -> list[protocol.Send]:
        return [c for _, c in self.calls if isinstance(c, protocol.Send)]


class FakeSupervisor:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.live: dict[str, FakeLive] = {}

    def add(self, tenant_id: str, session_id: str, host: FakeHost, status: str = "connected"
            ) -> FakeLive:
        live = FakeLive(tenant_id=tenant_id, status=status, host=host)
        self.live[session_id] = live
        return live

    def set_status(self, session_id: str, status: str) -> None:
        live = self.live[session_id]
        live.status = status
        self.bus.publish(BusEvent(live.tenant_id, "session.status",
                                  {"id": session_id, "status": status}))

    def host_for(self, tenant_id: str, session_id: str) -> FakeHost | None:
        return self.live[session_id].host


@dataclass
class Rig:
    """Store, clock, fake supervisor and the messaging services wired as `services.py` does."""

    store: Store
    settings: Any
    clock: FakeClock
    bus: EventBus
    supervisor: FakeSupervisor
    media: MediaLibrary
    delivery: DeliveryService
    outbox: Outbox
    ingest: MessageIngest

    async def wait(self, predicate: Callable[[], Awaitable[bool]], what: str,
                   timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.005)


def rig_settings(settings: Settings, **overrides: Any) -> Settings:
    values = {"send_min_gap_seconds": 0.0, "send_jitter_seconds": 0.0, **overrides}
    return dataclasses.replace(settings, **values)


@pytest.fixture
async def make_rig(store: Store, settings: Settings) -> AsyncIterator[Callable[..., Rig]]:
    built: list[Rig] = []

    def build(*, rng: Callable[[], float] | None = None, **overrides: Any) -> Rig:
        clock = FakeClock()
        bus = EventBus()
        supervisor = FakeSupervisor(bus)
        tuned = rig_settings(settings, **overrides)
        library = MediaLibrary(store, tuned, clock)
        extra = {} if rng is None else {"rng": rng}
        delivery = DeliveryService(store, supervisor, bus, tuned, clock,  # type: ignore[arg-type]
                                   sleep=clock.sleep, **extra)
        outbox = Outbox(store, tuned, clock, library, on_queued=delivery.wake)
        rig = Rig(store=store, settings=tuned, clock=clock, bus=bus, supervisor=supervisor,
                  media=library, delivery=delivery, outbox=outbox,
                  ingest=MessageIngest(store, bus, clock))
        built.append(rig)
        return rig

    yield build
    for rig in built:
        await rig.delivery.stop()
        await rig.ingest.stop()


# -- the real app with the sandbox engine ----------------------------------------------------------


SANDBOX_TIMINGS = {
    "WHATSDEX_SANDBOX_QR_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_FIRST_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_TOTAL_SECONDS": "30",
}


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "") -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.02)


class Running:
    """The app's lifespan running (supervisor, engine host with the sandbox), with the
    messaging services attached exactly as `services.py` attaches them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Litestar = create_app(settings)
        self.client: TestClient[Litestar] = TestClient(self.app)
        self.client.__enter__()
        self.closed = False
        services = self.services
        supervisor = services.supervisor
        assert supervisor is not None
        # Replace whatever services.py wired, so these tests own the services they drive.
        for name in ("delivery", "ingest"):
            existing = getattr(services, name, None)
            if existing is not None:
                self.call(existing.stop)
        self.media = MediaLibrary(services.store, settings, services.clock)
        self.ingest = MessageIngest(services.store, services.bus, services.clock)
        supervisor.message_handler = self.ingest.handle_many
        self.delivery = self.new_delivery()
        self.outbox = Outbox(services.store, settings, services.clock, self.media,
                             on_queued=lambda t, s: self.delivery.wake(t, s))

    def new_delivery(self, **options: Any) -> DeliveryService:
        """A delivery service (started); `clock`/`sleep` may replace the real ones."""
        services = self.services
        assert services.supervisor is not None
        clock = options.pop("clock", services.clock)
        delivery = DeliveryService(services.store, services.supervisor, services.bus,
                                   self.settings, clock, **options)
        self.call(delivery.start)
        self.delivery = delivery
        services.delivery = delivery  # type: ignore[attr-defined]
        return delivery

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def store(self) -> Store:
        return self.services.store

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.client.blocking_portal.call(functools.partial(fn, *args, **kwargs))

    def tenant(self, per_day: int = 10_000) -> str:
        return str(self.call(make_tenant, self.store, per_day=per_day))

    def link(self, tenant_id: str, phone: str) -> str:
        supervisor = self.services.supervisor
        assert supervisor is not None
        session_id = self.call(supervisor.create, tenant_id, CLI, name="Sales").id
        wait_until(lambda: supervisor.live[session_id].status == "pairing", what="pairing")
        self.call(supervisor.sandbox, tenant_id, session_id, action="scan", phone=phone)
        wait_until(lambda: supervisor.live[session_id].status == "connected", what="connected")
        return str(session_id)

    def sandbox(self, tenant_id: str, session_id: str, **command: Any) -> dict[str, Any]:
        supervisor = self.services.supervisor
        assert supervisor is not None
        result: dict[str, Any] = self.call(supervisor.sandbox, tenant_id, session_id, **command)
        return result

    def row(self, sql: str, *params: Any) -> Any:
        return self.call(self.store.fetchone, sql, params)

    def rows(self, sql: str, *params: Any) -> list[Any]:
        return list(self.call(self.store.fetchall, sql, params))

    @property
    def network(self) -> Path:
        """The sandbox network's record of what contacts received."""
        return self.settings.data_dir / "sandbox-network.db"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.call(self.delivery.stop)
        self.call(self.ingest.stop)
        self.client.__exit__(None, None, None)


RunApp = Callable[..., Running]


@pytest.fixture
def run_app(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Callable[..., Running]]:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for name, value in SANDBOX_TIMINGS.items():
        monkeypatch.setenv(name, value)
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        running = Running(rig_settings(settings, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()
