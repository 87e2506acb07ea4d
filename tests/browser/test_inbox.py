"""The inbox in a real browser: a workspace owner signs in, a message arrives and shows up
without a reload, opening the chat reads it, and a reply typed in the box reaches the contact
(the sandbox network's own record says so) with its ticks turning blue."""

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
from whatsdex.identity import apikeys, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.services import Services
from whatsdex.sessions import sandbox_network
from whatsdex.settings import Settings
from whatsdex.store import Store

from .conftest import LiveServer, PageProblems, _wait_ready

pytestmark = pytest.mark.browser

EMAIL = "owner@bakery.example"
PASSWORD = "crusty sourdough loaves at dawn"
CONTACT = "15559990001"


@dataclass
class InboxServer(LiveServer):
    """The live app with a workspace, its owner (a user with a password) and an owner key."""

    services: Services | None = None
    tenant_id: str = ""
    key: str = ""

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", timeout=10,
                             headers={"Authorization": f"Bearer {self.key}"}, **kwargs)  # type: ignore[arg-type]

    def wait(self, what: str, check: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def listeners(self) -> int:
        assert self.services is not None
        return self.services.bus.subscriber_count(self.tenant_id)

    def linked_number(self) -> str:
        created = self.api("POST", "/api/v1/sessions", json={"name": "Shop phone"})
        assert created.status_code == 201, created.text
        session_id = str(created.json()["id"])
        self.wait("pairing", lambda: self.status(session_id) == "pairing")
        scanned = self.api("POST", f"/api/v1/sandbox/sessions/{session_id}/scan",
                           json={"phone": "+15559990000"})
        assert scanned.status_code == 200, scanned.text
        self.wait("connected", lambda: self.status(session_id) == "connected")
        return session_id

    def status(self, session_id: str) -> str:
        return str(self.api("GET", f"/api/v1/sessions/{session_id}").json()["status"])


async def _workspace(settings: Settings) -> tuple[str, str]:
    """A workspace with its owner and key, made the way the command line makes them: no
    operator account is involved."""
    store = Store(settings.db_path)
    store.open()
    try:
        now = time.time()
        tenant = await tenants.create_tenant(store, CLI, name="Corner Bakery", plan_id="premium",
                                             now=now)
        _, token = await users.invite(store, CLI, tenant.id, email=EMAIL, role="owner", now=now)
        await users.accept_invite(store, token, password=PASSWORD, name="Bea Baker", now=now)
        _, key = await apikeys.create_key(store, CLI, tenant.id, name="shop", role="owner",
                                          now=now)
        return tenant.id, key
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InboxServer]:
    """This module's server (it replaces the shared one for `page` and `problems`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path_factory.mktemp("inbox-page") / "data", port=port,
                        engine="sandbox", backup_interval_minutes=0, send_min_gap_seconds=0.0,
                        send_jitter_seconds=0.0)
    # Playwright's sync API owns this thread's event loop: prepare the data in another thread.
    with ThreadPoolExecutor(1) as worker:
        tenant_id, key = worker.submit(asyncio.run, _workspace(settings)).result()
    services = Services.build(settings)
    config = uvicorn.Config(create_app(settings, services), lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="inbox-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, thread)
        yield InboxServer(url=url, settings=settings, server=server, thread=thread,
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


def test_messages_arrive_live_and_a_reply_reaches_the_contact(
    page: Page, problems: PageProblems, live_server: InboxServer
) -> None:
    session_id = live_server.linked_number()
    sign_in(page, "/inbox")
    expect(page.get_by_role("heading", level=1)).to_have_text("Inbox")
    expect(page.locator("#chat-list .inbox-empty")).to_be_visible()
    live_server.wait("the page's event stream", lambda: live_server.listeners() >= 1)
    page.evaluate("window.__sameDocument = true")

    # A contact writes: the chat appears at the top of the list, unread, without a reload.
    inbound = live_server.api("POST", f"/api/v1/sandbox/sessions/{session_id}/inbound",
                              json={"from": CONTACT, "text": "Do you have rye bread today?"})
    assert inbound.status_code == 200, inbound.text
    row = page.locator("#chat-list .inbox-chat").first
    expect(row).to_contain_text("Do you have rye bread today?", timeout=8_000)
    expect(row.locator(".inbox-unread")).to_have_text("1")
    expect(row).to_contain_text("via Shop phone")
    expect(page.locator("#chat-list .inbox-empty")).to_have_count(0)

    # Opening it shows the conversation and reads it (the badge goes, live).
    row.locator("a").click()
    expect(page.locator("#conversation-heading")).to_have_text("Contact 0001")
    expect(page.locator("#messages .msg-in .msg-text")).to_have_text(
        ["Do you have rye bread today?"])
    expect(row.locator(".inbox-unread")).to_have_count(0)
    assert page.url.endswith("/inbox?chat=" + row.get_attribute("id").removeprefix("chat-"))

    # A second message lands in the open conversation by itself.
    live_server.api("POST", f"/api/v1/sandbox/sessions/{session_id}/inbound",
                    json={"from": CONTACT, "text": "A large one, please"})
    expect(page.locator("#messages .msg-in .msg-text")).to_have_text(
        ["Do you have rye bread today?", "A large one, please"], timeout=8_000)

    # The reply, typed and sent with Enter, shows at once and its ticks turn blue.
    box = page.get_by_label("Reply")
    box.fill("Yes! I'll keep one for you.")
    box.press("Enter")
    mine = page.locator("#messages .msg-out")
    expect(mine).to_have_count(1)
    expect(mine.locator(".msg-text")).to_have_text("Yes! I'll keep one for you.")
    expect(mine.locator(".ticks")).to_have_attribute("data-status", "read", timeout=8_000)
    expect(page.get_by_label("Reply")).to_have_value("")
    expect(page.get_by_label("Reply")).to_be_focused()

    record = live_server.settings.data_dir / "sandbox-network.db"
    shown = [d for d in sandbox_network.deliveries(record, session_id)
             if d["to_jid"] == f"{CONTACT}@s.whatsapp.net"]
    assert [d["text"] for d in shown] == ["Yes! I'll keep one for you."]
    message_id = mine.get_attribute("id").removeprefix("msg-")
    assert shown[0]["outbox_id"] == message_id
    assert live_server.api("GET", f"/api/v1/messages/{message_id}").json()["source"] == "inbox"

    assert page.evaluate("window.__sameDocument") is True
    problems.assert_none()
