"""Accepting an invitation: see who is invited to what, choose a password, be signed in."""

from __future__ import annotations

import httpx
import pytest

from whatsdex.identity import links, tenants, users
from whatsdex.identity.principal import CLI

from .conftest import OPERATOR_PASSWORD, Site, error_text

INVITEE = "amy@acme.example"


def invite(site: Site, role: str = "member", email: str = INVITEE) -> str:
    tenant = site.call(tenants.create_tenant, site.store, CLI, name="Acme Bakery",
                       now=site.now[0])
    _, token = site.call(users.invite, site.store, CLI, tenant.id, email=email, role=role,
                         now=site.now[0])
    return token


def accept(site: Site, token: str, password: str = OPERATOR_PASSWORD,
           confirm: str | None = None) -> httpx.Response:
    return site.submit("/invite", f"/invite?token={token}", name="Amy",
                       password=password,
                       password_confirm=password if confirm is None else confirm)


def tenant_users(site: Site) -> int:
    return site.count("SELECT count(*) FROM users WHERE tenant_id IS NOT NULL")


@pytest.mark.parametrize("role", ["member", "owner"])
def test_an_invitation_shows_who_is_invited_and_signs_them_in(site: Site, role: str) -> None:
    token = invite(site, role)

    response, doc = site.page(f"/invite?token={token}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert doc.find(id="invite-email").text == INVITEE
    assert doc.find(id="invite-workspace").text == "Acme Bakery"
    assert doc.find(id="invite-role").text == role

    response = accept(site, token)

    assert response.status_code == 303
    assert response.headers["location"] == "/"
    assert site.whoami() == INVITEE
    assert site.client.get("/_test/whoami").json()["role"] == role
    assert tenant_users(site) == 1


def test_a_used_invitation_is_refused(site: Site) -> None:
    token = invite(site)
    assert accept(site, token).status_code == 303
    site.client.cookies.clear()

    response, doc = site.page(f"/invite?token={token}")
    assert response.status_code == 404
    assert doc.find("p", class_="lead").text == links.INVALID
    response = site.client.post("/invite", data={
        "_csrf_token": site.csrf(), "token": token, "password": "another-fine-passphrase",
        "password_confirm": "another-fine-passphrase",
    }, follow_redirects=False)
    assert response.status_code == 404
    assert tenant_users(site) == 1
    assert site.whoami() is None


def test_an_expired_invitation_is_refused(site: Site) -> None:
    token = invite(site)
    response, _ = site.page(f"/invite?token={token}")
    assert response.status_code == 200
    csrf = site.csrf()

    site.advance(links.INVITE_TTL + 1)

    response, _ = site.page(f"/invite?token={token}")
    assert response.status_code == 404
    response = site.client.post("/invite", data={
        "_csrf_token": csrf, "token": token, "password": OPERATOR_PASSWORD,
        "password_confirm": OPERATOR_PASSWORD,
    }, follow_redirects=False)
    assert response.status_code == 404
    assert tenant_users(site) == 0


@pytest.mark.parametrize(
    ("password", "confirm", "message"),
    [
        ("2short", None, "at least 8 characters"),
        ("iloveyou1", None, "too common"),
        ("QWERTYUIOP", None, "too common"),  # the check ignores case
        ("amy-is-my-name", None, None),  # the e-mail name is 3 letters: allowed
        (OPERATOR_PASSWORD, "something-else-entirely", "do not match"),
    ],
)
def test_weak_passwords_are_refused_with_a_message(
    site: Site, password: str, confirm: str | None, message: str | None
) -> None:
    token = invite(site)
    response = accept(site, token, password, confirm)
    if message is None:
        assert response.status_code == 303
        return

    assert response.status_code == 400
    doc = site.parse(response.text)
    assert message in error_text(doc)
    assert doc.find("input", name="name").attrs["value"] == "Amy"
    assert doc.find(id="invite-email").text == INVITEE
    assert password not in response.text
    assert tenant_users(site) == 0
    assert accept(site, token).status_code == 303  # still usable


def test_the_invitation_refuses_a_password_containing_the_email_name(site: Site) -> None:
    token = invite(site, email="amelia@acme.example")
    response = accept(site, token, "Amelia-2026-bakery")
    assert response.status_code == 400
    assert "e-mail name" in error_text(site.parse(response.text))


@pytest.mark.parametrize("query", ["", "?token=", "?token=made-up"])
def test_an_unknown_invitation_is_a_readable_404(site: Site, query: str) -> None:
    response, doc = site.page(f"/invite{query}")
    assert response.status_code == 404
    assert doc.find("h1").text == "This link cannot be used"
    assert not doc.find_all("form")


def test_accepting_while_signed_in_as_someone_else_replaces_that_session(site: Site) -> None:
    token = invite(site)
    first = invite(site, email="bob@acme.example")
    assert accept(site, first).status_code == 303
    bob = site.session_cookie
    assert site.whoami() == "bob@acme.example"

    assert accept(site, token).status_code == 303

    assert site.whoami() == INVITEE
    assert site.whoami(cookie=bob) is None
