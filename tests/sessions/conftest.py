"""Fixtures for the staying-linked tests: the real app (lifespan, supervisor, engine hosts running
the sandbox engine) on a temporary data dir, driven from the test thread through its portal."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, overload

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from whatsdex.app import create_app
from whatsdex.bus import BusEvent
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.sessions.supervisor import Supervisor
from whatsdex.sessions.vault import Vault
from whatsdex.settings import Settings
from whatsdex.store import wa_sessions
from whatsdex.store.records import Plan, WaSession, WaSessionTransition

T = TypeVar("T")

# Quick QR rotation: the first code lasts 1 s, later ones 1 s, codes run out after 30 s.
SANDBOX_TIMINGS = {
    "WHATSDEX_SANDBOX_QR_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_FIRST_SECONDS": "1",
    "WHATSDEX_SANDBOX_QR_TOTAL_SECONDS": "30",
}
WAIT = 15.0  # seconds any single state change may take (an engine host starts in ~0.5 s)


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "") -> float:
    """Poll until `predicate()` is true; returns the seconds it took, fails the test after
    `timeout` with `what` (called again for a fresh description when it is callable)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def sandbox_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _no_operator_settings: None
) -> Path:
    """Sandbox timings for the engine hosts (they inherit the environment) and a private
    runtime directory under tmp_path; returns that directory."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for name, value in SANDBOX_TIMINGS.items():
        monkeypatch.setenv(name, value)
    return run


class Running:
    """One app with its lifespan running, exactly as `serve` runs it, on the portal's loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app: Litestar = create_app(settings)
        self.client: TestClient[Litestar] = TestClient(self.app)
        self.client.__enter__()
        self.started_at = time.monotonic()
        self.events: list[BusEvent] = []
        self._listeners: list[Future[None]] = []
        self.closed = False

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def supervisor(self) -> Supervisor:
        assert self.services.supervisor is not None
        return self.services.supervisor

    @property
    def vault(self) -> Vault:
        assert self.supervisor.vault is not None
        return self.supervisor.vault

    @overload
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...

    @overload
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on the app's loop (awaited if it is a coroutine function)."""
        return self.client.blocking_portal.call(functools.partial(fn, *args, **kwargs))

    # -- tenants and the bus -------------------------------------------------------------------

    def tenant(self, name: str = "Acme", max_numbers: int = 10) -> str:
        """A tenant on a plan allowing `max_numbers`, whose bus events are recorded."""
        store = self.services.store
        plan_id = f"numbers-{max_numbers}"
        self.call(tenants.save_plan, store, CLI, Plan(
            id=plan_id, name=f"{max_numbers} numbers", max_numbers=max_numbers,
            max_messages_per_day=1000, max_contacts=1000, max_active_campaigns=1,
            max_webhooks=1, created_at="", updated_at=""), now=time.time())
        tenant = self.call(tenants.create_tenant, store, CLI, name=name, plan_id=plan_id,
                           now=time.time())
        self.listen(tenant.id)
        return tenant.id

    def listen(self, tenant_id: str) -> None:
        """Subscribe to the tenant's bus events like the dashboard's event stream does."""
        ready = threading.Event()

        async def listen() -> None:
            async with self.services.bus.subscribe(tenant_id) as queue:
                ready.set()
                while True:
                    self.events.append(await queue.get())

        self._listeners.append(self.client.blocking_portal.start_task_soon(listen))
        assert ready.wait(5), "the bus subscription did not start"

    def statuses(self, session_id: str) -> list[dict[str, Any]]:
        return [e.data for e in list(self.events)
                if e.type == "session.status" and e.data["id"] == session_id]

    # -- numbers -------------------------------------------------------------------------------

    def status(self, session_id: str) -> str:
        return self.supervisor.live[session_id].status

    def wait_status(self, session_id: str, *wanted: str, timeout: float = WAIT) -> float:
        """Wait until the number is in one of `wanted`; the seconds it took."""
        def current() -> str:
            live = self.supervisor.live.get(session_id)
            return f"{live.status} ({live.reason})" if live else "gone"

        return wait_until(lambda: self.supervisor.live[session_id].status in wanted, timeout,
                          f"{session_id} to be {'/'.join(wanted)}; it is {current()}")

    def row(self, tenant_id: str, session_id: str) -> WaSession | None:
        return self.call(wa_sessions.get, self.services.store, tenant_id, session_id)

    def history(self, tenant_id: str, session_id: str) -> list[WaSessionTransition]:
        """Every stored transition of the number, oldest first."""
        rows = self.call(wa_sessions.history, self.services.store, tenant_id, session_id, 1000)
        return list(reversed(rows))

    def blob(self, tenant_id: str, session_id: str) -> tuple[bytes, bool] | None:
        def read() -> tuple[bytes, bool] | None:
            with self.services.store.read_sync() as conn:
                return wa_sessions.get_blob(conn, tenant_id, session_id)

        return self.call(read)

    def create(self, tenant_id: str, name: str = "Sales") -> str:
        return self.call(self.supervisor.create, tenant_id, CLI, name=name).id

    def scan(self, tenant_id: str, session_id: str, phone: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(self.supervisor.sandbox, tenant_id, session_id,
                                           action="scan", phone=phone)
        return result

    def fault(self, tenant_id: str, session_id: str, action: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call(self.supervisor.sandbox, tenant_id, session_id,
                                           action=action)
        return result

    def link(self, tenant_id: str, phone: str, name: str = "Sales") -> str:
        """A new number, linked by a simulated scan, connected."""
        session_id = self.create(tenant_id, name)
        self.wait_status(session_id, "pairing")
        self.scan(tenant_id, session_id, phone)
        self.wait_status(session_id, "connected")
        return session_id

    # -- stopping ------------------------------------------------------------------------------

    def close(self, *, final_snapshots: bool = True) -> None:
        """Stop the app. Without the final snapshots the runtime files and blobs are left as a
        killed server leaves them (the engine hosts still stop: they would die with it)."""
        if self.closed:
            return
        self.closed = True
        if not final_snapshots:
            async def skip(tenant_id: str, session_id: str) -> None:
                return None

            self.vault.release = skip  # type: ignore[method-assign]
        for listener in self._listeners:
            listener.cancel()
        self.client.__exit__(None, None, None)


RunApp = Callable[..., Running]


@pytest.fixture
def run_app(settings: Settings, sandbox_env: Path) -> Iterator[RunApp]:
    """`run_app()` starts the app on the test's data dir (again after `close()`: a restart)."""
    started: list[Running] = []

    def start(**overrides: Any) -> Running:
        running = Running(dataclasses.replace(settings, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()
