"""The real app over https (the cookies are `Secure` and `__Host-`), with a clock the test moves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import typer
from litestar import Litestar, Request, get
from litestar.response import Template
from litestar.testing import TestClient
from typer.testing import CliRunner, Result

from whatsdex.app import create_app
from whatsdex.cli import identity
from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.web.auth import SESSION_COOKIE, requires_signed_in

T = TypeVar("T")

BASE_URL = "https://testserver.local"
START = 1_790_000_000.0  # a fixed moment (2026-09-21): the tests move time from here
OPERATOR_EMAIL = "operator@agency.example"
OPERATOR_PASSWORD = "violet-kettle-harbour-47"  # not in the common-passwords list


def _probe_routes() -> list[Any]:
    """Test-only pages: who the request is signed in as, and a page that needs a sign-in."""

    @get("/_test/whoami", include_in_schema=False, sync_to_thread=False)
    def whoami(request: Request[Any, Any, Any]) -> dict[str, Any]:
        user = request.scope.get("user")
        if isinstance(user, Principal):
            return {"user": user.label, "role": user.role, "tenant": user.tenant_id}
        return {"user": None}

    @get("/_test/private", include_in_schema=False, sync_to_thread=False,
         guards=[requires_signed_in])
    def private() -> str:
        return "private"

    @get("/_test/nav", include_in_schema=False, sync_to_thread=False)
    def nav() -> Template:
        return Template(template_str=(
            '{% extends "base.html" %}{% block nav %}{% include "_nav.html" %}{% endblock %}'
            "{% block content %}<h1>Probe</h1>{% endblock %}"
        ))

    return [whoami, private, nav]


@dataclass
class Site:
    """One running app: its client, services and fake clock, plus form helpers."""

    client: TestClient[Litestar]
    services: Services
    settings: Settings
    now: list[float]
    parse: Callable[[str], Any] = field(repr=False)
    _stack: contextlib.ExitStack = field(repr=False)

    def advance(self, seconds: float) -> None:
        self.now[0] += seconds

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run an async domain function on the app's own event loop."""
        return self.client.blocking_portal.call(functools.partial(fn, *args, **kwargs))

    def settle(self) -> None:
        """Wait until every write queued so far (session touches) is committed."""
        self.services.store.write_sync(lambda conn: None)

    def close(self) -> None:
        self._stack.close()

    @property
    def store(self) -> Store:
        return self.services.store

    # -- pages and forms ---------------------------------------------------------------------

    def page(self, path: str, **kwargs: Any) -> tuple[httpx.Response, Any]:
        """GET a page; returns the response and its parsed document (the root `parse_html`)."""
        response = self.client.get(path, follow_redirects=False, **kwargs)
        return response, self.parse(response.text)

    def form_fields(self, path: str) -> dict[str, str]:
        """GET a form page and return its hidden inputs (the CSRF token among them)."""
        response, doc = self.page(path)
        assert response.status_code == 200, response.text
        return {el.attrs["name"]: el.attrs.get("value", "")
                for el in doc.find_all("input", type="hidden")}

    def submit(self, path: str, form_page: str, **fields: str) -> httpx.Response:
        """Fill the form found on `form_page` and post it to `path`, as a browser would."""
        data = {**self.form_fields(form_page), **fields}
        return self.client.post(path, data=data, follow_redirects=False)

    def csrf(self) -> str:
        """The CSRF token (set by any page the client has loaded)."""
        token = self.client.cookies.get("__Host-csrftoken")
        if token is None:
            self.client.get("/login", follow_redirects=False)
            token = self.client.cookies.get("__Host-csrftoken")
        assert token
        return token

    def login(self, email: str = OPERATOR_EMAIL, password: str = OPERATOR_PASSWORD,
              next_path: str | None = None) -> httpx.Response:
        """Post the login form (also while signed in, as a second tab would)."""
        data = {"_csrf_token": self.csrf(), "email": email, "password": password}
        if next_path is not None:
            data["next"] = next_path
        return self.client.post("/login", data=data, follow_redirects=False)

    def logout(self) -> httpx.Response:
        return self.client.post("/logout", data={"_csrf_token": self.csrf()},
                                follow_redirects=False)

    def whoami(self, cookie: str | None = None) -> str | None:
        """Who the client (or, given, this session cookie alone) is signed in as."""
        if cookie is None:
            response = self.client.get("/_test/whoami")
        else:
            # An explicit Cookie header replaces the jar's cookies for this one request.
            response = self.client.get("/_test/whoami",
                                       headers={"cookie": f"{SESSION_COOKIE}={cookie}"})
        assert response.status_code == 200, response.text
        user: str | None = response.json()["user"]
        return user

    @property
    def session_cookie(self) -> str | None:
        return self.client.cookies.get(SESSION_COOKIE)

    def sessions(self) -> int:
        with self.store.read_sync() as conn:
            return int(conn.execute("SELECT count(*) FROM login_sessions").fetchone()[0])

    def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        with self.store.read_sync() as conn:
            return int(conn.execute(sql, params).fetchone()[0])


SiteFactory = Callable[..., Site]


@pytest.fixture
def open_site(data_dir: Path, parse_html: Callable[[str], Any]) -> Iterator[SiteFactory]:
    """`open_site(**settings)` starts the app on the test's data dir; all are stopped at the end."""
    sites: list[Site] = []

    def open_(**overrides: Any) -> Site:
        settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                            **overrides)
        services = Services.build(settings)
        now = [START]
        services.clock = lambda: now[0]
        app = create_app(settings, services)
        for route in _probe_routes():
            app.register(route)
        stack = contextlib.ExitStack()
        client = stack.enter_context(TestClient(app, base_url=BASE_URL))
        site = Site(client=client, services=services, settings=settings, now=now,
                    parse=parse_html, _stack=stack)
        sites.append(site)
        return site

    yield open_
    for site in reversed(sites):
        site.close()


@pytest.fixture
def site(open_site: SiteFactory) -> Site:
    """A fresh install: no operator yet, so a set-up link is waiting."""
    return open_site()


def set_up_operator(site: Site, email: str = OPERATOR_EMAIL,
                    password: str = OPERATOR_PASSWORD) -> httpx.Response:
    token = site.services.setup_token
    assert token, "a fresh install has a set-up link"
    return site.submit("/setup", f"/setup?token={token}", email=email, name="Agency",
                       password=password, password_confirm=password)


@pytest.fixture
def operator_site(site: Site) -> Site:
    """Set up through the first-run link, then signed out again: a clean client."""
    response = set_up_operator(site)
    assert response.status_code == 303, response.text
    assert site.logout().status_code == 303
    site.client.cookies.clear()
    assert site.sessions() == 0
    return site


def run_on_store(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Call async domain code on its own store, outside any app (as another process would)."""

    async def main() -> T:
        store = Store(settings.db_path, readers=1)
        store.open()
        try:
            return await fn(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def error_text(doc: Any) -> str:
    """The form's error message, or "" when the page shows none."""
    found = doc.find_all(id="form-error")
    return found[0].text if found else ""


def cookie_attributes(set_cookie: str) -> tuple[str, str, dict[str, str]]:
    """`name`, `value` and lower-cased attributes of one Set-Cookie header value."""
    first, *attrs = (part.strip() for part in set_cookie.split(";"))
    name, _, value = first.partition("=")
    parsed = {}
    for attr in attrs:
        key, _, val = attr.partition("=")
        parsed[key.lower()] = val
    return name, value, parsed


def set_cookies(response: httpx.Response, name: str) -> list[str]:
    return [h for h in response.headers.get_list("set-cookie")
            if re.match(rf"\s*{re.escape(name)}=", h)]



# -- the command line --------------------------------------------------------------------------

Cli = Callable[..., Result]


@pytest.fixture
def cli(data_dir: Path) -> Cli:
    """`cli("tenant", "list", input=...)` on the test's data dir.

    Overrides the root fixture: the identity sub-apps are mounted on a fresh Typer app here,
    as `whatsdex.cli` mounts them.
    """
    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(identity.admin_app, name="admin")
    app.add_typer(identity.tenant_app, name="tenant")
    app.add_typer(identity.apikey_app, name="apikey")
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(app, [*args, "--data-dir", str(data_dir)], input=input)

    return run


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def new_tenant(cli: Cli, name: str = "Acme Bakery", *extra: str) -> str:
    line = ok(cli("tenant", "create", name, *extra)).stdout.strip()
    assert line.startswith("tenant ten_"), line
    return line.split()[1]
