"""The app through ASGI: probes, metrics, docs, security headers and the one error handler."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.params import FromQuery
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from whatsdex.app import WEB_DIR, create_app
from whatsdex.errors import Conflict, LimitReached, WhatsdexError
from whatsdex.services import Services
from whatsdex.settings import Settings

Client = TestClient[Litestar]
ParseHtml = Callable[[str], Any]  # conftest.parse_html → Element

SECRET = "s3cr3t-internal-detail"  # must never reach a response body


def _static_file() -> str:
    """A file the static router really serves (whichever the UI ships)."""
    files = sorted(p for p in (WEB_DIR / "static").rglob("*.js") if p.is_file())
    assert files, "the UI ships JavaScript under web/static"
    return "/static/" + files[0].relative_to(WEB_DIR / "static").as_posix()


def _metrics(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of /metrics keyed by (name, sorted labels), parsed by prometheus' own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _requests(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[tuple[str, str, str], float]:
    """whatsdex_http_requests_total as {(method, route, status): count}."""
    out = {}
    for (name, labels), value in samples.items():
        if name == "whatsdex_http_requests_total":
            d = dict(labels)
            out[(d["method"], d["route"], d["status"])] = value
    return out


# -- probes, docs, metrics ---------------------------------------------------------------------


def test_healthz(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_reports_its_checks(client: Client, app: Litestar) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"store": "open", "migrations": "current"},
    }
    services: Services = app.state["services"]
    services.store.close()  # as when shutting down: the probe must say so
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    assert response.json()["checks"]["store"] == "closed"


def test_openapi_json(client: Client) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    spec = json.loads(response.text)
    assert spec["info"]["title"] == "WhatsDeX API"
    assert spec["openapi"].startswith("3.")
    assert "/healthz" in spec["paths"]
    assert "apiKey" in spec["components"]["securitySchemes"]


def test_api_docs_page_has_no_inline_script(client: Client, parse_html: ParseHtml) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = parse_html(response.text)
    assert page.find("title").text == "WhatsDeX API"
    page.find("div", id="swagger-ui")
    scripts = page.find_all("script")
    assert scripts
    for script in scripts:
        assert script.attrs.get("src", "").startswith("/static/")
        assert not "".join(c for c in script.children if isinstance(c, str)).strip()
        assert client.get(script.attrs["src"]).status_code == 200


def test_metrics(client: Client) -> None:
    static = _static_file()
    for path in ("/healthz", "/healthz", static, "/no/such/page-12345"):
        client.get(path)
    for method in ("BREW", "PROPFIND", "X-ANYTHING"):
        client.request(method, "/healthz")
    samples = _metrics(client)

    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("whatsdex_database_size_bytes", ())] > 0
    requests = _requests(samples)
    assert requests[("GET", "/healthz", "200")] == 2
    # Routes are labelled by template, so label values stay few whatever the URLs.
    assert requests[("GET", "/static/{file_path}", "200")] == 1
    assert requests[("GET", "unmatched", "404")] == 1
    routes = {route for _, route, _ in requests}
    assert static not in routes
    assert not any("12345" in route for route in routes)
    # Clients choose methods freely; every unusual one shares one label value.
    assert {method for method, _, _ in requests} == {"GET", "other"}
    assert sum(n for (method, _, _), n in requests.items() if method == "other") == 3


# -- security headers --------------------------------------------------------------------------


def _csp(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/docs"),
        ("GET", "static"),
        ("GET", "/no/such/page"),
        ("GET", "/api/v1/no-such-thing"),
        ("POST", "/healthz"),
    ],
)
def test_security_headers(client: Client, method: str, path: str) -> None:
    path = _static_file() if path == "static" else path
    response = client.request(method, path, follow_redirects=False)
    headers = response.headers
    csp = _csp(headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"], "no inline or eval'd script, ever"
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["default-src"] == ["'self'"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] in ("same-origin", "no-referrer", "strict-origin")
    assert "strict-transport-security" not in headers, "HSTS over plain http is meaningless"
    assert "server" not in {k.lower() for k in headers}


@pytest.mark.parametrize("path", ["/", "/healthz", "/no/such/page"])
def test_hsts_over_https(app: Litestar, path: str) -> None:
    with TestClient(app, base_url="https://testserver.local") as client:
        response = client.get(path, follow_redirects=False)
    hsts = response.headers["strict-transport-security"]
    assert int(hsts.split("max-age=")[1].split(";")[0]) >= 31536000


@pytest.mark.parametrize("path", ["/", "/no/such/page"])
def test_pages_obey_the_csp(client: Client, parse_html: ParseHtml, path: str) -> None:
    """The strict CSP blocks inline script, inline style and on* handlers: pages use none."""
    response = client.get(path)
    assert response.headers["content-type"].startswith("text/html")
    page = parse_html(response.text)
    for element in page.iter():
        assert "style" not in element.attrs, f"inline style on <{element.tag}>"
        assert not any(name.startswith("on") for name in element.attrs), element.tag
        if element.tag == "script":
            assert "src" in element.attrs, "inline <script>"
    assert not page.find_all("style")


# -- errors ------------------------------------------------------------------------------------


class _Exploded(WhatsdexError):
    """A product error with the default status (500): its message is written for users."""


def _register_failing_routes(app: Litestar) -> None:
    @get("/api/v1/test/conflict", sync_to_thread=False)
    def api_conflict() -> None:
        raise Conflict("This number is already linked", detail={"number": "+15550001"})

    @get("/api/v1/test/limited", sync_to_thread=False)
    def api_limited() -> None:
        raise LimitReached("Too many messages today", retry_after=30)

    @get("/api/v1/test/product-error", sync_to_thread=False)
    def api_product_error() -> None:
        raise _Exploded("The engine host is restarting")

    @get("/api/v1/test/crash", sync_to_thread=False)
    def api_crash() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    @get("/api/v1/test/items", sync_to_thread=False)
    def api_items(limit: FromQuery[int]) -> dict[str, int]:
        return {"limit": limit}

    @get("/test/conflict", sync_to_thread=False)
    def ui_conflict() -> None:
        raise Conflict("This number is already linked")

    @get("/test/crash", sync_to_thread=False)
    def ui_crash() -> None:
        raise RuntimeError(f"database password is {SECRET}")

    for handler in (
        api_conflict,
        api_limited,
        api_product_error,
        api_crash,
        api_items,
        ui_conflict,
        ui_crash,
    ):
        app.register(handler)


@pytest.fixture
def failing_client(app: Litestar) -> Iterator[Client]:
    _register_failing_routes(app)
    with TestClient(app) as client:
        yield client


HX = {"HX-Request": "true"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "status", "kind", "message"),
    [
        ("GET", "/api/v1/nope", {}, 404, "json", "Not Found"),
        ("GET", "/api/v1/test/conflict", {}, 409, "json", "This number is already linked"),
        ("GET", "/api/v1/test/limited", {}, 429, "json", "Too many messages today"),
        ("GET", "/api/v1/test/product-error", {}, 500, "json", "The engine host is restarting"),
        ("GET", "/api/v1/test/crash", {}, 500, "json", "Internal server error"),
        ("GET", "/api/v1/test/items?limit=many", {}, 400, "json", "The request is not valid"),
        ("POST", "/healthz", {}, 405, "json", "Method Not Allowed"),
        # Pages word generic errors their own way; what matters is the status and no leak.
        ("GET", "/no/such/page", {}, 404, "html", None),
        ("GET", "/test/conflict", {}, 409, "html", "This number is already linked"),
        ("GET", "/test/crash", {}, 500, "html", None),
        ("DELETE", "/", {}, 405, "html", None),
        ("GET", "/test/crash", HX, 500, "toast", "Internal server error"),
        ("GET", "/test/conflict", HX, 409, "toast", "This number is already linked"),
        ("GET", "/no/such/page", HX, 404, "toast", "Not Found"),
    ],
)
def test_errors(
    failing_client: Client,
    parse_html: ParseHtml,
    method: str,
    path: str,
    headers: dict[str, str],
    status: int,
    kind: str,
    message: str | None,
) -> None:
    response = failing_client.request(method, path, headers=headers)
    assert response.status_code == status
    body = response.text
    for leak in ("Traceback", SECRET, "RuntimeError", 'File "'):
        assert leak not in body

    if kind == "json":
        assert response.headers["content-type"].startswith("application/json")
        payload: dict[str, Any] = response.json()
        assert set(payload) == {"status", "message", "detail"}
        assert payload["status"] == status
        assert payload["message"] == message
        return

    assert response.headers["content-type"].startswith("text/html")
    page = parse_html(body)
    if kind == "html":
        assert page.find("title").text.startswith(str(status))
        assert page.find("h1").text
        main = page.find("main").text
        assert str(status) in main
        if message is not None:
            assert message in main
        assert "HX-Retarget" not in response.headers
    else:
        assert not page.find_all("html"), "a partial, not a page"
        toast = page.find(role="alert")
        assert message in toast.text
        assert response.headers["HX-Retarget"] == "#toasts"


def test_error_details_and_retry_after(failing_client: Client) -> None:
    conflict = failing_client.get("/api/v1/test/conflict")
    assert conflict.json()["detail"] == {"number": "+15550001"}
    limited = failing_client.get("/api/v1/test/limited")
    assert limited.headers["Retry-After"] == "30"
    invalid = failing_client.get("/api/v1/test/items?limit=many")
    assert "limit" in json.dumps(invalid.json()["detail"])
    not_allowed = failing_client.post("/healthz")
    assert "GET" in not_allowed.headers["Allow"]


def test_unexpected_errors_are_logged_for_the_operator(
    failing_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        failing_client.get("/api/v1/test/crash")
    records = [r for r in caplog.records if "/api/v1/test/crash" in r.getMessage()]
    assert records, "the failure is logged"
    assert records[0].exc_info is not None
    assert SECRET in str(records[0].exc_info[1]), "the operator gets the real cause"


# -- isolation ---------------------------------------------------------------------------------


def test_two_apps_in_one_process_are_independent(tmp_path: Path) -> None:
    settings = [
        Settings(data_dir=tmp_path / name, engine="sandbox", backup_interval_minutes=0)
        for name in ("one", "two")
    ]
    apps = [create_app(s) for s in settings]
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        for _ in range(3):
            assert one.get("/healthz").status_code == 200
        assert two.get("/healthz").status_code == 200
        assert one.get("/readyz").status_code == two.get("/readyz").status_code == 200

        stores = [app.state["services"].store for app in apps]
        assert stores[0].path != stores[1].path
        stores[0].write_sync(lambda c: c.execute("CREATE TABLE only_here (x)"))

        assert _requests(_metrics(one))[("GET", "/healthz", "200")] == 3
        assert _requests(_metrics(two))[("GET", "/healthz", "200")] == 1
        assert apps[0].state["metrics"].registry is not apps[1].state["metrics"].registry

    ids = []
    for s in settings:
        conn = sqlite3.connect(s.db_path)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        ids.append(conn.execute("SELECT value FROM instance WHERE key = 'id'").fetchone()[0])
        conn.close()
        assert ("only_here" in tables) == (s is settings[0])
    assert ids[0] != ids[1]
