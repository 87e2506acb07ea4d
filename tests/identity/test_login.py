"""Signing in and out: the cookie, session rotation, timeouts, CSRF, redirects, throttling."""

from __future__ import annotations

import pytest

from whatsdex.identity import logins, tenants, users
from whatsdex.identity.principal import CLI

from .conftest import (
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    Site,
    SiteFactory,
    cookie_attributes,
    error_text,
    set_cookies,
    set_up_operator,
)

SESSION = "__Host-whatsdex"


def test_the_session_cookie_is_host_only_secure_httponly_lax(operator_site: Site) -> None:
    response = operator_site.login()

    assert response.status_code == 303
    [header] = set_cookies(response, SESSION)
    name, value, attrs = cookie_attributes(header)
    assert name.startswith("__Host-")
    assert len(value) >= 40  # 256 random bits, URL-safe
    assert "secure" in attrs
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert attrs["path"] == "/"
    assert "domain" not in attrs
    assert int(attrs["max-age"]) == operator_site.settings.session_max_hours * 3600


def test_login_then_logout_and_the_old_cookie_is_dead(operator_site: Site) -> None:
    site = operator_site
    assert site.whoami() is None
    assert site.login().headers["location"] == "/"
    cookie = site.session_cookie
    assert cookie
    assert site.whoami() == OPERATOR_EMAIL
    assert site.client.get("/login", follow_redirects=False).status_code == 303  # signed in

    response = site.logout()

    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    [cleared] = set_cookies(response, SESSION)
    _, value, attrs = cookie_attributes(cleared)
    assert value in ("", '""')
    assert attrs["max-age"] == "0"
    # A browser ignores a `__Host-` deletion that lacks these.
    assert "secure" in attrs
    assert attrs["path"] == "/"
    assert site.session_cookie is None
    assert site.whoami() is None
    assert site.sessions() == 0
    # Replaying the old cookie (copied before logout) gets a signed-out answer.
    assert site.whoami(cookie=cookie) is None
    response, doc = site.page("/login", headers={"cookie": f"{SESSION}={cookie}"})
    assert response.status_code == 200
    assert doc.find("form", action="/login")


def test_each_login_gets_a_new_session_id(operator_site: Site) -> None:
    site = operator_site
    site.login()
    first = site.session_cookie
    site.login()  # the browser still sends the first cookie: that session ends
    second = site.session_cookie

    assert first and second and first != second
    assert site.whoami(cookie=first) is None
    assert site.whoami(cookie=second) == OPERATOR_EMAIL
    assert site.sessions() == 1


def test_wrong_password_re_renders_the_form_with_401(operator_site: Site) -> None:
    response = operator_site.login(password="not-the-password")

    assert response.status_code == 401
    doc = operator_site.parse(response.text)
    assert error_text(doc) == "Wrong e-mail or password"
    assert doc.find("input", name="email").attrs["value"] == OPERATOR_EMAIL
    assert "value" not in doc.find("input", name="password").attrs
    assert "not-the-password" not in response.text
    assert not set_cookies(response, SESSION)
    # An unknown account answers exactly the same way.
    other = operator_site.login(email="nobody@agency.example", password="whatever-it-is")
    assert other.status_code == 401
    assert error_text(operator_site.parse(other.text)) == "Wrong e-mail or password"


def test_idle_sessions_end(open_site: SiteFactory) -> None:
    site = open_site(session_idle_minutes=30, session_max_hours=12)
    set_up_operator(site)
    assert site.whoami() == OPERATOR_EMAIL

    site.advance(25 * 60)
    assert site.whoami() == OPERATOR_EMAIL  # activity moves the idle deadline
    site.settle()
    site.advance(25 * 60)  # 50 minutes after login, 25 after the last request
    assert site.whoami() == OPERATOR_EMAIL
    site.settle()
    site.advance(30 * 60 + 1)
    assert site.whoami() is None
    assert site.sessions() == 0


def test_sessions_end_after_the_absolute_timeout_even_when_active(open_site: SiteFactory) -> None:
    site = open_site(session_idle_minutes=30, session_max_hours=1)
    set_up_operator(site)
    for _ in range(3):
        site.advance(19 * 60)
        assert site.whoami() == OPERATOR_EMAIL
        site.settle()
    site.advance(4 * 60)  # 61 minutes after login, 4 after the last request
    assert site.whoami() is None


def test_posts_without_the_csrf_token_are_refused(operator_site: Site) -> None:
    site = operator_site
    site.form_fields("/login")  # the CSRF cookie is there; the form field is not sent
    response = site.client.post("/login", data={"email": OPERATOR_EMAIL,
                                                "password": OPERATOR_PASSWORD},
                                follow_redirects=False)
    assert response.status_code == 403
    assert site.sessions() == 0
    assert not set_cookies(response, SESSION)

    site.login()
    response = site.client.post("/logout", follow_redirects=False)
    assert response.status_code == 403
    response = site.client.post("/logout", data={"_csrf_token": "forged" * 20},
                                follow_redirects=False)
    assert response.status_code == 403
    assert site.whoami() == OPERATOR_EMAIL
    # The header works as well as the form field (HTMX sends the header).
    response = site.client.post("/logout", headers={"X-CSRFToken": site.csrf()},
                                follow_redirects=False)
    assert response.status_code == 303
    assert site.whoami() is None


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "https://evil.example",
        "http://evil.example/path",
        "/\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        "javascript:alert(1)",
        "evil.example",
    ],
)
def test_next_never_leaves_the_site(operator_site: Site, target: str) -> None:
    response = operator_site.login(next_path=target)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    # Already signed in, the login page redirects the same safe way.
    response = operator_site.client.get("/login", params={"next": target},
                                        follow_redirects=False)
    assert response.headers["location"] == "/"


def test_next_returns_to_a_local_page(operator_site: Site) -> None:
    _, doc = operator_site.page("/login", params={"next": "/admin/tenants?page=2"})
    assert doc.find("input", name="next").attrs["value"] == "/admin/tenants?page=2"
    response = operator_site.submit("/login", "/login?next=/admin/tenants%3Fpage%3D2",
                                    email=OPERATOR_EMAIL, password=OPERATOR_PASSWORD)
    assert response.headers["location"] == "/admin/tenants?page=2"


def test_next_with_non_ascii_characters_is_escaped(operator_site: Site) -> None:
    response = operator_site.login(next_path="/numbers/caf\u00e9 \u20ac?q=a%20b")
    assert response.status_code == 303
    assert response.headers["location"] == "/numbers/caf%C3%A9%20%E2%82%AC?q=a%20b"


def test_guessing_locks_the_account_then_the_lock_expires(operator_site: Site) -> None:
    site = operator_site
    answers = [site.login(password=f"guess-number-{i}") for i in range(20)]

    assert [r.status_code for r in answers[:5]] == [401] * 5
    assert [r.status_code for r in answers[5:]] == [429] * 15
    for response in answers[5:]:
        assert 0 < int(response.headers["retry-after"]) <= logins.LOCK
        assert "Too many failed sign-in attempts" in error_text(site.parse(response.text))
    locked = site.login()
    assert locked.status_code == 429  # the right password too, while locked
    assert site.sessions() == 0

    site.advance(int(locked.headers["retry-after"]) + 1)
    response = site.login()
    assert response.status_code == 303
    assert site.whoami() == OPERATOR_EMAIL


def test_users_of_a_suspended_workspace_cannot_sign_in(operator_site: Site) -> None:
    site = operator_site
    tenant = site.call(tenants.create_tenant, site.store, CLI, name="Acme", now=site.now[0])
    _, token = site.call(users.invite, site.store, CLI, tenant.id, email="amy@acme.example",
                         role="owner", now=site.now[0])
    site.call(users.accept_invite, site.store, token, password=OPERATOR_PASSWORD,
              now=site.now[0])
    site.call(tenants.update_tenant, site.store, CLI, tenant.id, status="suspended",
              now=site.now[0])

    response = site.login(email="amy@acme.example")

    assert response.status_code == 403
    assert "suspended" in error_text(site.parse(response.text))
    assert site.sessions() == 0


def test_login_page_offers_a_form_and_the_signed_out_nav(site: Site) -> None:
    response, doc = site.page("/login")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    form = doc.find("form", action="/login")
    assert form.attrs["method"] == "post"
    assert form.find("input", name="_csrf_token").attrs["value"]
    assert form.find("input", name="password").attrs["type"] == "password"
    assert not doc.find_all("form", action="/logout")
    # Before the first operator exists, the page says how to get one.
    assert "set-up link" in doc.find(id="first-run").text
    set_up_operator(site)
    site.logout()
    assert not site.page("/login")[1].find_all(id="first-run")


def test_a_guarded_page_sends_signed_out_visitors_to_login(site: Site) -> None:
    response = site.client.get("/_test/private?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/_test/private%3Fx%3D1"
    response = site.client.get("/_test/private", headers={"HX-Request": "true"},
                               follow_redirects=False)
    assert response.headers["hx-redirect"] == "/login?next=/_test/private"


def test_a_huge_email_is_not_stored_whole(operator_site: Site) -> None:
    response = operator_site.login(email="x" * 100_000 + "@agency.example")
    assert response.status_code == 401
    longest = operator_site.count("SELECT max(length(key)) FROM login_failures")
    assert longest <= len("account:") + 254


def test_logout_when_signed_out_just_goes_to_login(site: Site) -> None:
    response = site.logout()
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
