"""The client link page in a real browser: a QR code, live updates over SSE, "connected" without
a reload, the pairing-code alternative, and a revoked link turning into a readable notice."""

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
from playwright.sync_api import Page, expect

from whatsdex.app import create_app
from whatsdex.identity import apikeys, tenants
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store

from .conftest import LiveServer, PageProblems, _wait_ready

pytestmark = pytest.mark.browser


@dataclass
class LinkServer(LiveServer):
    """The live app with a tenant and its owner key, created before it started."""

    services: Services | None = None
    tenant_id: str = ""
    key: str = ""

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {self.key}"}, **kwargs)  # type: ignore[arg-type]

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def status(self, session_id: str) -> str:
        return str(self.api("GET", f"/api/v1/sessions/{session_id}").json()["status"])

    def listeners(self) -> int:
        assert self.services is not None
        return self.services.bus.subscriber_count(self.tenant_id)


async def _tenant_and_key(settings: Settings) -> tuple[str, str]:
    store = Store(settings.db_path)
    store.open()
    try:
        tenant = await tenants.create_tenant(store, CLI, name="Client Co", plan_id="premium",
                                             now=time.time())
        _, key = await apikeys.create_key(store, CLI, tenant.id, name="agency", role="owner",
                                          now=time.time())
        return tenant.id, key
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinkServer]:
    """This module's server (it replaces the shared one for `page` and `problems`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path_factory.mktemp("link-page") / "data", port=port,
                        engine="sandbox", backup_interval_minutes=0)
    # Playwright's sync API owns this thread's event loop: prepare the data in another thread.
    with ThreadPoolExecutor(1) as worker:
        tenant_id, key = worker.submit(asyncio.run, _tenant_and_key(settings)).result()
    services = Services.build(settings)
    config = uvicorn.Config(create_app(settings, services), lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="link-page-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, thread)
        yield LinkServer(url=url, settings=settings, server=server, thread=thread,
                         services=services, tenant_id=tenant_id, key=key)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 15s"


def number_with_link(server: LinkServer, name: str) -> tuple[str, str, str]:
    """A new number and a client link for it: (session id, link id, page path)."""
    created = server.api("POST", "/api/v1/sessions", json={"name": name})
    assert created.status_code == 201, created.text
    session_id = created.json()["id"]
    link = server.api("POST", f"/api/v1/sessions/{session_id}/client-links",
                      json={"ttl_hours": 1})
    assert link.status_code == 201, link.text
    url = link.json()["url"]
    assert url.startswith(f"{server.url}/link/")
    return session_id, link.json()["id"], url[len(server.url):]


def test_link_page_turns_connected_without_a_reload(
    page: Page, problems: PageProblems, live_server: LinkServer
) -> None:
    session_id, _, path = number_with_link(live_server, "Front desk")
    # Once its event stream is open, the panel fetches itself: whatever changed while the page
    # loaded (here: the engine host starting, new → connecting → pairing) is not lost.
    with page.expect_request(lambda r: f"{path}/panel?seen=" in r.url, timeout=5_000):
        response = page.goto(path)
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", level=1)).to_contain_text("Front desk")
    qr = page.locator("#qr-box .qr svg")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 200 and box["height"] >= 200
    expect(page.locator("#qr-expiry [data-countdown]")).to_contain_text(" s")
    # The page is listening before the phone scans, so the change arrives by the stream.
    live_server.wait("the page's event stream", lambda: live_server.listeners() >= 1)
    page.evaluate("window.__sameDocument = true")

    scanned = live_server.api("POST", f"/api/v1/sandbox/sessions/{session_id}/scan",
                              json={"phone": "+15558880001"})
    assert scanned.status_code == 200, scanned.text
    started = time.monotonic()
    done = page.get_by_role("heading", name="Connected — you can close this page")
    expect(done).to_be_visible(timeout=8_000)
    # Faster than the 10 s fallback poll: the server-sent event did it, and the page never
    # reloaded (a reload would have dropped the marker).
    assert time.monotonic() - started < 8
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#link-status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#qr-box")).to_have_count(0)
    assert live_server.status(session_id) == "connected"
    problems.assert_none()


def test_pairing_code_and_revocation_on_the_page(
    page: Page, problems: PageProblems, live_server: LinkServer
) -> None:
    session_id, link_id, path = number_with_link(live_server, "Back office")
    page.goto(path)
    expect(page.locator("#qr-box .qr svg")).to_be_visible()

    page.get_by_label("The phone's number, international format").fill("+1 555 888 0002")
    page.get_by_role("button", name="Get a pairing code").click()
    code = page.locator("#pairing-code")
    expect(code).to_be_visible()
    assert len(code.inner_text()) == 9 and code.inner_text()[4] == "-"
    expect(page.locator("#pairing-code-box")).to_contain_text("Link with phone number instead")

    revoked = live_server.api("DELETE",
                              f"/api/v1/sessions/{session_id}/client-links/{link_id}")
    assert revoked.status_code == 204
    # The next poll of the panel finds the link gone and says so in place of the panel.
    expect(page.get_by_role("heading", name="This link no longer works")).to_be_visible(
        timeout=15_000)
    expect(page.locator("#qr-box")).to_have_count(0)
    # Only the refused polls themselves (404 by design) may show up as problems.
    problems.bad_responses[:] = [p for p in problems.bad_responses
                                 if not p.startswith(f"404 GET {live_server.url}{path}/")]
    problems.console_errors[:] = [p for p in problems.console_errors if "404" not in p]
    problems.assert_none()
