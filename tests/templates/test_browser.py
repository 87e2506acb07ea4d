"""The template editor in a real browser (Debian's chromium): typing updates the preview by
itself, variable buttons insert at the cursor, a problem's button moves the cursor to it, and
the page runs under the strict CSP without errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from whatsdex.app import create_app
from whatsdex.clock import iso
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.identity.tokens import new_token
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import logins as login_rows
from whatsdex.store import users as user_rows
from whatsdex.store.ids import new_id
from whatsdex.store.records import User
from whatsdex.web.auth import SESSION_COOKIE

from .conftest import ensure_routes

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions"]


@dataclass
class Server:
    url: str
    cookie: str


async def _member_with_contact(settings: Settings) -> str:
    """A tenant, a signed-in member's session token, and one contact."""
    store = Store(settings.db_path)
    store.open()
    try:
        now = time.time()
        tenant = await tenants.create_tenant(store, CLI, name="Browser Bakery", now=now)
        user = User(id=new_id("usr"), email="member@example.com", name="Member", role="member",
                    tenant_id=tenant.id, created_at=iso(now), last_login_at=None)
        issued = new_token()

        def write(conn: object) -> None:
            user_rows.insert_user(conn, user, "!")  # type: ignore[arg-type]
            login_rows.insert_session(conn, token_hash=issued.hash,  # type: ignore[arg-type]
                                      user_id=user.id, now=iso(now),
                                      expires_at=iso(now + 3600), ip="", user_agent="pytest")
            conn.execute(  # type: ignore[attr-defined]
                "INSERT INTO contacts (id, tenant_id, phone, name, custom, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("con_browser", tenant.id, "15550001111", "Rita Moreira",
                 json.dumps({"company": "Pastelaria"}), iso(now), iso(now)))

        await store.write(write)
        return issued.secret
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path_factory.mktemp("templates-browser") / "data",
                        port=port, engine="sandbox", backup_interval_minutes=0)
    # Playwright's sync API owns this thread's event loop: prepare the data in another thread.
    with ThreadPoolExecutor(1) as worker:
        cookie = worker.submit(asyncio.run, _member_with_contact(settings)).result()
    app = create_app(settings, Services.build(settings))
    ensure_routes(app)
    uv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False,
                                       timeout_graceful_shutdown=5))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield Server(url=url, cookie=cookie)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).is_file():
        pytest.fail("Browser tests need Debian's chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    # A `__Host-` cookie must be Secure; chromium treats http://localhost as a secure context.
    secure_url = server.url.replace("http://", "https://")
    context.add_cookies([{"name": SESSION_COOKIE, "value": server.cookie, "url": secure_url,
                          "httpOnly": True, "sameSite": "Lax"}])
    opened = context.new_page()
    errors: list[str] = []
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield opened
        assert not errors, errors
    finally:
        context.close()


def test_typing_updates_the_preview_and_saving_works(page: Page) -> None:
    response = page.goto("/templates/new")
    assert response is not None and response.status == 200
    body = page.locator("#template-body")
    preview = page.locator("#preview")
    body.fill("")
    body.press_sequentially("Hello {{first_name}} from {{custom.company}}", delay=5)
    expect(page.locator("#preview-text")).to_have_text("Hello Ana from Acme Bakery")

    # A real contact instead of the sample.
    page.select_option("#preview-contact", "con_browser")
    expect(page.locator("#preview-text")).to_have_text("Hello Rita from Pastelaria")

    # A variable button inserts at the cursor, and the preview follows.
    body.evaluate("el => el.setSelectionRange(5, 5)")  # after "Hello"
    page.locator("#variable-chips [data-insert='{{phone}}']").click()
    expect(body).to_have_value("Hello{{phone}} {{first_name}} from {{custom.company}}")
    expect(page.locator("#preview-text")).to_have_text("Hello+15550001111 Rita from Pastelaria")

    # Problems appear with their positions; a problem's button puts the cursor there.
    body.fill("Hi 🎉 {{Name}} {a|}")
    body.dispatch_event("input")
    problems = preview.locator("#problems li")
    expect(problems).to_have_count(2)
    expect(problems.first).to_contain_text("Line 1, column 6")
    problems.first.locator("button").click()
    # Position 5 in code points is 6 in UTF-16 (the emoji takes two units).
    assert body.evaluate("el => el.selectionStart") == 6
    assert body.evaluate("el => document.activeElement === el")

    body.fill("Hi {{first_name|there}}, {fresh|warm} bread today")
    body.dispatch_event("input")
    expect(page.locator("#preview-text")).to_contain_text("Hi Rita, ")
    first = page.locator("#preview-text").inner_text()
    seen = {first}
    for _ in range(12):
        page.locator("#shuffle").click()
        page.wait_for_timeout(60)
        seen.add(page.locator("#preview-text").inner_text())
    assert seen == {"Hi Rita, fresh bread today", "Hi Rita, warm bread today"}

    page.fill("#template-name", "Bread of the day")
    with page.expect_navigation():
        page.get_by_role("button", name="Save template").click()
    assert "/templates/tpl_" in page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("Bread of the day")
    expect(page.locator("#template-body")).to_have_value(
        "Hi {{first_name|there}}, {fresh|warm} bread today")
