"""A campaign in a real browser: a workspace owner signs in, writes a template, creates a
campaign with the form (the audience count updates as tags are chosen), starts it after the
confirmation, and watches its progress reach 100% live, without a reload and without a
console error. The sandbox network's record says every contact got the message once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from campaigns.wiring import wire
from playwright.sync_api import Dialog, Page, expect

from whatsdex.app import create_app
from whatsdex.contacts import service as contacts
from whatsdex.identity import apikeys, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.sessions import sandbox_network
from whatsdex.settings import Settings
from whatsdex.store import Store

from .conftest import LiveServer, PageProblems, _wait_ready

pytestmark = pytest.mark.browser

EMAIL = "owner@florist.example"
PASSWORD = "tulips-and-peonies-every-spring"
CUSTOMERS = 12


@dataclass
class CampaignServer(LiveServer):
    services: Services | None = None
    tenant_id: str = ""
    key: str = ""

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=10,  # type: ignore[arg-type]
                             headers={"Authorization": f"Bearer {self.key}"}, **kwargs)

    def wait(self, what: str, check: Callable[[], object], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def linked_number(self) -> str:
        created = self.api("POST", "/api/v1/sessions", json={"name": "Shop phone"})
        assert created.status_code == 201, created.text
        session_id = str(created.json()["id"])
        self.wait("pairing", lambda: self.status(session_id) == "pairing")
        scanned = self.api("POST", f"/api/v1/sandbox/sessions/{session_id}/scan",
                           json={"phone": "+15557770000"})
        assert scanned.status_code == 200, scanned.text
        self.wait("connected", lambda: self.status(session_id) == "connected")
        return session_id

    def status(self, session_id: str) -> str:
        return str(self.api("GET", f"/api/v1/sessions/{session_id}").json()["status"])

    def listeners(self) -> int:
        assert self.services is not None
        return self.services.bus.subscriber_count(self.tenant_id)


async def _workspace(settings: Settings) -> tuple[str, str]:
    """A workspace, its owner (with a password) and key, and its contacts: made through the
    identity and contacts domains, as the command line and the API make them."""
    store = Store(settings.db_path)
    store.open()
    try:
        now = time.time()
        tenant = await tenants.create_tenant(store, CLI, name="Corner Florist",
                                             plan_id="premium", now=now)
        _, token = await users.invite(store, CLI, tenant.id, email=EMAIL, role="owner", now=now)
        await users.accept_invite(store, token, password=PASSWORD, name="Flo Rist", now=now)
        _, key = await apikeys.create_key(store, CLI, tenant.id, name="shop", role="owner",
                                          now=now)
        for i in range(CUSTOMERS):
            await contacts.create(store, CLI, tenant.id, phone=f"+1555888{i:04d}",
                                  name=f"Customer {i}", tags=["spring"], now=now)
        await contacts.create(store, CLI, tenant.id, phone="+15558889999", name="Gone",
                              tags=["spring"], opt_status="opted_out", now=now)
        await contacts.create(store, CLI, tenant.id, phone="+15558880999", name="Supplier",
                              tags=["suppliers"], now=now)
        return tenant.id, key
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CampaignServer]:
    """This module's server (it replaces the shared one for `page` and `problems`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path_factory.mktemp("campaign-page") / "data", port=port,
                        engine="sandbox", backup_interval_minutes=0, send_min_gap_seconds=0.2,
                        send_jitter_seconds=0.0)
    # Playwright's sync API owns this thread's event loop: prepare the data in another thread.
    with ThreadPoolExecutor(1) as worker:
        tenant_id, key = worker.submit(asyncio.run, _workspace(settings)).result()
    services = Services.build(settings)
    app = create_app(settings, services)
    wire(app, services)
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="campaign-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, thread)
        yield CampaignServer(url=url, settings=settings, server=server, thread=thread,
                             services=services, tenant_id=tenant_id, key=key)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 15s"


def sign_in(page: Page, path: str) -> None:
    page.goto(path)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def test_a_campaign_is_created_started_and_followed_live(
    page: Page, problems: PageProblems, live_server: CampaignServer
) -> None:
    session_id = live_server.linked_number()
    sign_in(page, "/templates/new")

    # A template, written in the editor.
    page.fill("#template-name", "Spring bouquets")
    page.locator("#template-body").fill("Hi {{first_name|there}}, {fresh|new} tulips are in!")
    # The editor previews as one types; saving waits for it (leaving would abort it).
    expect(page.locator("#preview-text")).to_contain_text("tulips are in!")
    with page.expect_navigation():
        page.get_by_role("button", name="Save template").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring bouquets")

    # The campaign form: the audience count follows the tags chosen.
    page.goto("/campaigns/new")
    expect(page.get_by_role("heading", level=1)).to_have_text("New campaign")
    page.fill("#campaign-name", "Spring bouquets")
    page.select_option("#campaign-template", label="Spring bouquets")
    page.locator(f"input[name='session_ids'][value='{session_id}']").check()
    page.select_option("#tags-any", "spring")
    expect(page.locator("#audience-sendable")).to_contain_text(
        f"{CUSTOMERS} contacts would receive it; 1 more matches but opted out")
    page.fill("#min-gap", "0")
    page.fill("#max-gap", "0")
    with page.expect_navigation():
        page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring bouquets")
    expect(page.locator("#campaign-status")).to_have_text("draft")
    live_server.wait("the page's event stream", lambda: live_server.listeners() >= 1)
    page.evaluate("window.__sameDocument = true")

    # Start, confirmed in the dialog; then the progress bar fills by itself.
    confirmations: list[str] = []

    def accept(dialog: Dialog) -> None:
        confirmations.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#campaign-status")).to_have_text("running", timeout=5_000)
    assert confirmations and "Start" in confirmations[0]
    progress = page.locator("#campaign-progress")
    seen: set[str] = set()
    deadline = time.monotonic() + 30
    while (value := progress.get_attribute("value")) != "100":
        seen.add(value or "")
        assert time.monotonic() < deadline, f"progress stuck at {value}"
        page.wait_for_timeout(50)
    assert seen - {"0", "100"}, f"no progress in between was shown live: {seen}"
    expect(page.locator("#campaign-status")).to_have_text("completed", timeout=10_000)
    expect(page.locator("#progress-text")).to_contain_text(f"{CUSTOMERS} of {CUSTOMERS}")
    expect(page.locator("#count-excluded")).to_contain_text("1")
    expect(page.locator("#funnel g[data-step='sent']")).to_have_attribute(
        "data-value", str(CUSTOMERS), timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True, "the page was never reloaded"

    record = live_server.settings.data_dir / "sandbox-network.db"
    shown = sandbox_network.deliveries(record, session_id)
    assert len(shown) == len({d["to_jid"] for d in shown}) == CUSTOMERS
    assert "15558889999@s.whatsapp.net" not in {d["to_jid"] for d in shown}
    assert all("tulips are in!" in d["text"] for d in shown)
    problems.assert_none()
