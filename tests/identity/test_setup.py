"""First run: the set-up link creates the operator once, signs them in, then stops working."""

from __future__ import annotations

import pytest

from whatsdex.identity import users
from whatsdex.identity.principal import CLI

from .conftest import (
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    Site,
    error_text,
    set_up_operator,
)


def operators(site: Site) -> int:
    return site.count("SELECT count(*) FROM users WHERE role = 'operator'")


def test_setup_link_creates_the_operator_and_signs_them_in(site: Site) -> None:
    token = site.services.setup_token
    assert token
    response, doc = site.page(f"/setup?token={token}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    form = doc.find("form", action="/setup")
    assert form.find("input", name="token").attrs["value"] == token
    assert {el.attrs["name"] for el in form.find_all("input")} >= {
        "_csrf_token", "email", "name", "password", "password_confirm"}

    response = set_up_operator(site)

    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert site.whoami() == OPERATOR_EMAIL
    assert operators(site) == 1
    assert site.services.setup_token is None
    with site.store.read_sync() as conn:
        row = conn.execute(
            "SELECT actor_type, actor_label FROM audit_log WHERE action = 'operator.created'"
        ).fetchone()
    assert tuple(row) == ("system", "first-run set-up link")


def test_setup_link_works_only_once(site: Site) -> None:
    token = site.services.setup_token
    assert set_up_operator(site).status_code == 303
    site.client.cookies.clear()

    response, doc = site.page(f"/setup?token={token}")
    assert response.status_code == 404
    assert "invalid" in doc.find("p", class_="lead").text
    assert not doc.find_all("form", action="/setup")

    # Replaying the form post (a second browser tab) creates nobody.
    response = site.client.post("/setup", data={
        "_csrf_token": site.csrf(), "token": token or "", "email": "second@agency.example",
        "password": OPERATOR_PASSWORD, "password_confirm": OPERATOR_PASSWORD,
    }, follow_redirects=False)
    assert response.status_code == 404
    assert operators(site) == 1
    assert site.whoami() is None


def test_setup_is_refused_once_an_operator_exists(site: Site) -> None:
    token = site.services.setup_token
    assert token
    site.call(users.create_operator, site.store, CLI, email="cli@agency.example",
              password=OPERATOR_PASSWORD, now=site.now[0])

    response, _ = site.page(f"/setup?token={token}")
    assert response.status_code == 404
    response = site.client.post("/setup", data={
        "_csrf_token": site.csrf(), "token": token, "email": OPERATOR_EMAIL,
        "password": OPERATOR_PASSWORD, "password_confirm": OPERATOR_PASSWORD,
    }, follow_redirects=False)
    assert response.status_code == 404
    assert operators(site) == 1
    assert site.session_cookie is None


@pytest.mark.parametrize("query", ["", "?token=", "?token=not-the-token"])
def test_setup_without_a_valid_token_is_a_readable_404(site: Site, query: str) -> None:
    response, doc = site.page(f"/setup{query}")
    assert response.status_code == 404
    assert doc.find("h1").text == "This link cannot be used"
    assert doc.find("a", href="/login")


@pytest.mark.parametrize(
    ("password", "confirm", "message"),
    [
        ("short", "short", "at least 8 characters"),
        ("password123", "password123", "too common"),
        ("Operator-kiwi-2026", "Operator-kiwi-2026", "e-mail name"),
        (OPERATOR_PASSWORD, OPERATOR_PASSWORD + "x", "do not match"),
    ],
)
def test_setup_refuses_bad_passwords_with_a_message(
    site: Site, password: str, confirm: str, message: str
) -> None:
    token = site.services.setup_token
    response = site.submit("/setup", f"/setup?token={token}", email=OPERATOR_EMAIL,
                           name="Agency", password=password, password_confirm=confirm)

    assert response.status_code == 400
    doc = site.parse(response.text)
    assert message in error_text(doc)
    # What was typed is kept, except the passwords.
    assert doc.find("input", name="email").attrs["value"] == OPERATOR_EMAIL
    assert doc.find("input", name="name").attrs["value"] == "Agency"
    for name in ("password", "password_confirm"):
        assert "value" not in doc.find("input", name=name).attrs
    assert password not in response.text
    assert operators(site) == 0
    # The link was not used up: the next attempt succeeds.
    assert set_up_operator(site).status_code == 303


def test_setup_post_without_csrf_token_is_refused(site: Site) -> None:
    token = site.services.setup_token
    site.form_fields(f"/setup?token={token}")  # the CSRF cookie is set, the field is left out
    response = site.client.post("/setup", data={
        "token": token or "", "email": OPERATOR_EMAIL,
        "password": OPERATOR_PASSWORD, "password_confirm": OPERATOR_PASSWORD,
    }, follow_redirects=False)
    assert response.status_code == 403
    assert operators(site) == 0
    assert set_up_operator(site).status_code == 303  # the link still works
