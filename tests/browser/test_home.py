"""The dashboard shell in a real browser: styles, scripts and CSP, docs, error page, toasts.

Signed out, `/` leads to the sign-in page, which carries the whole shell.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import LiveServer, PageProblems

pytestmark = pytest.mark.browser

DEFAULT_BACKGROUND = "rgba(0, 0, 0, 0)"


def computed(page: Page, selector: str, prop: str) -> str:
    return str(
        page.eval_on_selector(
            selector, "(el, prop) => getComputedStyle(el).getPropertyValue(prop)", prop
        )
    )


def open_home(page: Page) -> None:
    response = page.goto("/")
    assert response is not None and response.status == 200
    assert page.url.endswith("/login")
    page.wait_for_function("() => window.htmx !== undefined && window.whatsdex !== undefined")


def test_home_renders_with_styles_scripts_and_csp(
    page: Page, problems: PageProblems, tmp_path: Path
) -> None:
    response = page.goto("/")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp

    assert page.url.endswith("/login")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    expect(page.locator(".banner-sandbox")).to_be_visible()
    expect(page.locator(".banner-sandbox")).to_contain_text("Sandbox mode")

    # app.css applied: the top bar has a colour, cards have a border, the font is the system stack.
    assert computed(page, ".topbar", "background-color") != DEFAULT_BACKGROUND
    assert computed(page, ".banner-sandbox", "background-color") != DEFAULT_BACKGROUND
    assert computed(page, ".card", "border-top-style") == "solid"
    assert "system-ui" in computed(page, "body", "font-family")
    # The brand mark (favicon.svg) loaded.
    assert page.eval_on_selector(".brand img", "img => img.complete && img.naturalWidth > 0")

    # Vendored htmx 2 and its SSE extension, configured from the meta tag, and our script ran.
    page.wait_for_function("() => window.htmx !== undefined && window.whatsdex !== undefined")
    assert page.evaluate("htmx.version").startswith("2.0.")
    assert page.evaluate("htmx.config.allowEval") is False
    assert page.evaluate("typeof htmx.createEventSource") == "function"

    # Nothing that the CSP would have to block is on the page.
    assert page.locator("[style]").count() == 0
    assert page.locator("script:not([src])").count() == 0

    shot = tmp_path / "home.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    problems.assert_none()


def test_home_dark_scheme_and_small_screen(page: Page, problems: PageProblems) -> None:
    open_home(page)
    light = computed(page, "body", "background-color")
    page.emulate_media(color_scheme="dark")
    dark = computed(page, "body", "background-color")
    assert light != dark

    page.set_viewport_size({"width": 375, "height": 740})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 375px wide"
    problems.assert_none()


def test_api_docs_render_operations(
    page: Page, problems: PageProblems, live_server: LiveServer
) -> None:
    response = page.goto("/api/docs")
    assert response is not None and response.status == 200
    page.wait_for_selector(".information-container")
    expect(page.locator(".information-container .title")).to_contain_text("WhatsDeX API")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/readyz")).to_be_visible()
    assert operations.count() >= 3
    # The docs page (whatsdex/web/openapi.py) may not declare an icon, and then the browser asks
    # for /favicon.ico, which nothing serves: only that is tolerated, and only then.
    if page.locator('link[rel="icon"]').count() == 0:
        problems.ignore(f"{live_server.url}/favicon.ico")
    problems.assert_none()


def test_unknown_page_shows_readable_error(
    page: Page, problems: PageProblems, live_server: LiveServer
) -> None:
    url = f"{live_server.url}/no-such-page"
    response = page.goto(url)
    assert response is not None and response.status == 404
    expect(page).to_have_title("404 · WhatsDeX")
    expect(page.locator(".error-status")).to_have_text("404")
    expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
    expect(page.locator(".error-page .lead")).to_contain_text("mistyped")
    expect(page.get_by_role("link", name="Back to the dashboard")).to_be_visible()
    assert computed(page, ".error-page", "text-align") == "center"

    # The only problem is the 404 of the document itself; its styles and scripts loaded.
    assert problems.bad_responses == [f"404 GET {url}"]
    assert all("404" in message for message in problems.console_errors)
    assert problems.page_errors == []
    assert problems.failed_requests == []


def test_failed_htmx_request_shows_toast_that_goes_away(page: Page, problems: PageProblems) -> None:
    page.clock.install()
    open_home(page)

    page.evaluate("htmx.ajax('GET', '/no-such-fragment', {target: 'main', swap: 'innerHTML'})")

    toast = page.locator("#toasts .toast-error")
    expect(toast).to_be_visible()
    expect(toast).to_contain_text("Not Found")
    expect(toast.locator(".toast-close")).to_have_count(1)
    assert page.locator("#toasts .toast").count() == 1, "only the server's toast, no fallback"
    # The error went to the toast corner, not into the target.
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")

    page.clock.run_for(10_000)
    expect(toast).to_have_count(0)

    assert problems.page_errors == []
    assert [p.split(" http")[0] for p in problems.bad_responses] == ["404 GET"]


def test_toast_close_button(page: Page, problems: PageProblems) -> None:
    open_home(page)
    page.evaluate("whatsdex.toast('Saved.', 'success')")
    toast = page.locator("#toasts .toast-success")
    expect(toast.locator("span")).to_have_text("Saved.")
    toast.locator(".toast-close").click()
    expect(toast).to_have_count(0)
    problems.assert_none()


def test_csrf_token_header_on_htmx_requests(page: Page, problems: PageProblems) -> None:
    open_home(page)
    # The token is read from the meta tag at request time: no tag, no header.
    page.evaluate("document.querySelectorAll('meta[name=\"csrf-token\"]').forEach(m => m.remove())")
    with page.expect_request("**/healthz") as without:
        page.evaluate("htmx.ajax('GET', '/healthz', {swap: 'none'})")
    assert "x-csrftoken" not in without.value.headers

    page.evaluate(
        """() => {
            const meta = document.createElement('meta');
            meta.name = 'csrf-token';
            meta.content = 'token-123';
            document.head.append(meta);
        }"""
    )
    with page.expect_request("**/healthz") as with_token:
        page.evaluate("htmx.ajax('GET', '/healthz', {swap: 'none'})")
    assert with_token.value.headers.get("x-csrftoken") == "token-123"
    assert with_token.value.headers.get("hx-request") == "true"
    problems.assert_none()


def test_copy_button_copies_the_secret(
    page: Page, problems: PageProblems, live_server: LiveServer
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    open_home(page)
    page.evaluate(
        """() => {
            const box = document.createElement('div');
            box.className = 'secret';
            const code = document.createElement('code');
            code.id = 'new-key';
            code.textContent = 'wdx_live_3f9a2c';
            const button = document.createElement('button');
            button.type = 'button';
            button.className = 'btn btn-secondary btn-small';
            button.dataset.copy = '#new-key';
            button.textContent = 'Copy';
            box.append(code, button);
            document.querySelector('main').append(box);
        }"""
    )
    page.get_by_role("button", name="Copy").click()
    expect(page.locator(".secret button")).to_have_text("Copied")
    expect(page.locator("#toasts .toast-success")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "wdx_live_3f9a2c"
    problems.assert_none()
