"""Browser tests: the real app under uvicorn, driven by Debian's chromium through Playwright.

Playwright's sync API marks its own event loop as running in this thread while it is alive,
so the browser fixtures are module-scoped: they are gone before async tests of other modules
run. A browser is never downloaded; the system chromium is used (or `WHATSDEX_TEST_CHROMIUM`).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Request,
    Response,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError

from whatsdex.app import create_app
from whatsdex.settings import Settings

CHROMIUM_ENV = "WHATSDEX_TEST_CHROMIUM"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
]
STARTUP_TIMEOUT = 30.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the real app in headless chromium (tests/browser)"
    )


@dataclass
class LiveServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread


def _wait_ready(url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not thread.is_alive():
            pytest.fail("the app's uvicorn thread exited during start-up (see captured log)")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"status {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"status {exc.code}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.05)
    pytest.fail(f"the app was not ready within {STARTUP_TIMEOUT:.0f}s: {last_error}")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real app (sandbox engine, temporary data dir) on a free port of 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("live-data"),
        port=port,
        engine="sandbox",
        backup_interval_minutes=0,
    )
    config = uvicorn.Config(
        create_app(settings),
        lifespan="on",
        log_config=None,  # leave logging to pytest's capture
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="live-server", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, thread)
        yield LiveServer(url=url, settings=settings, server=server, thread=thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not shut down within 15s"


def chromium_path() -> str:
    """The system chromium; fails (never skips) with how to install it."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"{CHROMIUM_ENV}={configured} does not point to a file")
        return configured
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None
    )
    if found is None:
        pytest.fail(
            "Browser tests need Debian's chromium: run `apt-get install chromium` "
            f"(or set {CHROMIUM_ENV} to a Chromium/Chrome executable). "
            "Never `playwright install`: these tests use the system browser."
        )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(
                executable_path=executable, headless=True, args=CHROMIUM_ARGS
            )
        except PlaywrightError as exc:
            pytest.fail(f"could not start chromium at {executable}: {exc}")
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class PageProblems:
    """Everything that went wrong while a page loaded: console errors, JS errors, bad requests."""

    base_url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    bad_responses: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            location = message.location
            self.console_errors.append(f"{message.text} ({location.get('url', '?')})")

    def on_page_error(self, error: PlaywrightError) -> None:
        self.page_errors.append(f"{error.name}: {error.message}")

    def on_request_failed(self, request: Request) -> None:
        self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

    def on_response(self, response: Response) -> None:
        if response.status >= 400 and response.url.startswith(self.base_url):
            self.bad_responses.append(f"{response.status} {response.request.method} {response.url}")

    def ignore(self, url: str) -> None:
        """Forget the problems of one URL a test expects to fail."""
        self.console_errors[:] = [p for p in self.console_errors if f"({url})" not in p]
        self.failed_requests[:] = [p for p in self.failed_requests if f" {url}:" not in p]
        self.bad_responses[:] = [p for p in self.bad_responses if not p.endswith(f" {url}")]

    def all(self) -> list[str]:
        return [
            *(f"console: {p}" for p in self.console_errors),
            *(f"page error: {p}" for p in self.page_errors),
            *(f"request failed: {p}" for p in self.failed_requests),
            *(f"response: {p}" for p in self.bad_responses),
        ]

    def assert_none(self) -> None:
        problems = self.all()
        assert not problems, "the page had problems:\n" + "\n".join(problems)

    def clear(self) -> None:
        for found in (
            self.console_errors,
            self.page_errors,
            self.failed_requests,
            self.bad_responses,
        ):
            found.clear()


@pytest.fixture
def problems(live_server: LiveServer) -> PageProblems:
    return PageProblems(base_url=live_server.url)


@pytest.fixture
def page(browser: Browser, live_server: LiveServer, problems: PageProblems) -> Iterator[Page]:
    """A fresh context (no cookies, no storage) and page whose problems land in `problems`."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    new_page = context.new_page()
    new_page.on("console", problems.on_console)
    new_page.on("pageerror", problems.on_page_error)
    new_page.on("requestfailed", problems.on_request_failed)
    new_page.on("response", problems.on_response)
    try:
        yield new_page
    finally:
        context.close()
