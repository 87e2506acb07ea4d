"""The navigation partial: links by role, who is signed in, and a working sign-out form."""

from __future__ import annotations

from typing import Any

import pytest

from whatsdex.identity import tenants, users
from whatsdex.identity.principal import CLI

from .conftest import OPERATOR_EMAIL, OPERATOR_PASSWORD, Site

LINKS = {
    "operator": ["/admin/tenants", "/admin/plans", "/admin/audit", "/admin/api-keys"],
    "owner": ["/numbers", "/inbox", "/contacts", "/templates", "/campaigns", "/webhooks",
              "/settings/users", "/settings/api-keys", "/settings/audit", "/settings/plan"],
    "member": ["/numbers", "/inbox", "/contacts", "/templates", "/campaigns", "/settings/plan"],
}


def nav_links(site: Site) -> tuple[list[str], Any]:
    response, doc = site.page("/_test/nav")
    assert response.status_code == 200
    nav = doc.find("nav")
    return [a.attrs["href"] for a in nav.find_all("a")], nav


def sign_in_tenant_user(site: Site, role: str) -> str:
    tenant = site.call(tenants.create_tenant, site.store, CLI, name=f"{role} shop",
                       now=site.now[0])
    email = f"{role}@shop.example"
    _, token = site.call(users.invite, site.store, CLI, tenant.id, email=email, role=role,
                         now=site.now[0])
    site.call(users.accept_invite, site.store, token, password=OPERATOR_PASSWORD,
              now=site.now[0])
    assert site.login(email=email).status_code == 303
    return email


@pytest.mark.parametrize("role", ["operator", "owner", "member"])
def test_the_nav_follows_the_role(operator_site: Site, role: str) -> None:
    site = operator_site
    if role == "operator":
        site.login()
        email = OPERATOR_EMAIL
    else:
        email = sign_in_tenant_user(site, role)

    hrefs, nav = nav_links(site)

    assert hrefs == LINKS[role]
    assert nav.find(id="nav-user").text == email
    form = nav.find("form", action="/logout")
    assert form.attrs["method"] == "post"
    token = form.find("input", name="_csrf_token").attrs["value"]
    assert token
    # The form's own token signs out.
    response = site.client.post("/logout", data={"_csrf_token": token},
                                follow_redirects=False)
    assert response.status_code == 303
    assert site.whoami() is None


def test_signed_out_visitors_see_only_sign_in(site: Site) -> None:
    hrefs, nav = nav_links(site)
    assert hrefs == ["/login"]
    assert not nav.find_all("form")
