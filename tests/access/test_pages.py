"""The operator and settings pages, parsed: CSP-safe markup, CSRF on every form, secrets shown once,
confirmations on destructive buttons, partial swaps and "load more"."""

from __future__ import annotations

import json
from typing import Any

import pytest

from whatsdex.identity import links, logins, users
from whatsdex.identity.principal import CLI
from whatsdex.store.plans import LIMITS

from .conftest import PASSWORD, World

PAGES = [
    ("operator", "/admin/tenants"),
    ("operator", "/admin/plans"),
    ("operator", "/admin/audit"),
    ("operator", "/admin/api-keys"),
    ("owner", "/settings/users"),
    ("owner", "/settings/api-keys"),
    ("owner", "/settings/audit"),
    ("owner", "/settings/plan"),
    ("member", "/settings/plan"),
]
HX_WRITES = ("hx-post", "hx-put", "hx-patch", "hx-delete")


@pytest.mark.parametrize(("who", "path"), [*PAGES, ("operator", "tenant")])
def test_pages_are_csp_safe_and_csrf_protected(world: World, parse_html: Any, who: str,
                                               path: str) -> None:
    if path == "tenant":
        path = f"/admin/tenants/{world.a.id}"
    response = world.page(who, "GET", path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    doc = parse_html(response.text)
    assert doc.find("title").text.endswith("WhatsDeX")
    assert doc.find("h1").text
    for el in doc.iter():
        assert "style" not in el.attrs, f"style attribute on <{el.tag}>"
        assert not [a for a in el.attrs if a.startswith("on")], f"handler on <{el.tag}>"
        assert not (el.tag == "script" and "src" not in el.attrs), "inline script"
        assert not [a for a in el.attrs if a.startswith("hx-on")], "hx-on is inline script"
    token = doc.find("meta", name="csrf-token").attrs["content"]
    assert token
    for form in doc.find_all("form"):
        if form.attrs.get("action") == "/logout":
            continue
        hidden = form.find_all("input", name="_csrf_token")
        assert hidden and hidden[0].attrs["value"] == token, form.attrs
    for el in doc.iter():
        if "hx-delete" in el.attrs:
            assert el.attrs.get("hx-confirm"), f"{el.attrs['hx-delete']} deletes without asking"
    # Labels point at fields that exist.
    ids = {el.attrs["id"] for el in doc.iter() if "id" in el.attrs}
    for label in doc.find_all("label"):
        if "for" in label.attrs:
            assert label.attrs["for"] in ids


def test_tenants_page_lists_tenants_and_creates_one(world: World, parse_html: Any) -> None:
    doc = parse_html(world.page("operator", "GET", "/admin/tenants").text)
    row = doc.find("tr", id=f"tenant-{world.a.id}")
    assert row.find("a").attrs["href"] == f"/admin/tenants/{world.a.id}"
    assert "Acme Bakery" in row.text and "active" in row.text
    form = doc.find("form", id="new-tenant")
    assert form.attrs["hx-post"] == "/admin/tenants"
    assert {o.attrs["value"] for o in form.find("select", name="plan").find_all("option")} >= {
        "free", "premium"}

    created = world.page("operator", "POST", "/admin/tenants",
                         form={"name": "Fresh Flowers", "plan": "premium"})
    target = created.headers["hx-redirect"]
    tenant_id = target.rsplit("/", 1)[1]
    page = parse_html(world.page("operator", "GET", target).text)
    assert page.find("h1").text == "Fresh Flowers"
    assert "premium" in page.find(id="tenant-summary").text
    assert tenant_id in page.find(id="tenant-summary").text

    empty = world.page("operator", "POST", "/admin/tenants", form={"name": " ", "plan": "free"})
    assert empty.status_code == 400 and empty.headers["hx-retarget"] == "#toasts"
    toast = parse_html(empty.text).find(class_="toast-error")
    assert "name must not be empty" in toast.text


def test_tenant_page_rename_and_plan_change(world: World, parse_html: Any) -> None:
    tenant = world.fresh_tenant("Old Name")
    doc = parse_html(world.page("operator", "GET", f"/admin/tenants/{tenant.id}").text)
    form = doc.find("form", id="tenant-edit")
    assert form.attrs["hx-patch"] == f"/admin/tenants/{tenant.id}"
    assert form.attrs["hx-target"] == "#tenant-summary"
    saved = world.page("operator", "PATCH", f"/admin/tenants/{tenant.id}",
                       form={"name": "New Name", "plan": "premium"})
    summary = parse_html(saved.text)
    assert summary.find(id="summary-heading").text == "New Name"
    selected = [o for o in summary.find("select", name="plan").find_all("option")
                if "selected" in o.attrs]
    assert [o.attrs["value"] for o in selected] == ["premium"]
    toast = summary.find("div", id="toasts")
    assert toast.attrs["hx-swap-oob"] == "beforeend" and "Tenant saved" in toast.text
    # The rest of the page follows the new name: the title and the delete confirmation.
    assert summary.find("h1", id="tenant-title").attrs["hx-swap-oob"] == "true"
    assert summary.find("h1", id="tenant-title").text == "New Name"
    danger = summary.find("section", id="danger")
    assert danger.attrs["hx-swap-oob"] == "true"
    assert "Type New Name to confirm" in danger.find("label").text
    assert "Delete New Name" in danger.find("form").attrs["hx-confirm"]


def test_tenant_delete_form_asks_for_the_name(world: World, parse_html: Any) -> None:
    tenant = world.fresh_tenant("Careful Ltd")
    doc = parse_html(world.page("operator", "GET", f"/admin/tenants/{tenant.id}").text)
    form = doc.find("form", id="delete-tenant")
    assert form.attrs["hx-delete"] == f"/admin/tenants/{tenant.id}"
    assert "Careful Ltd" in form.attrs["hx-confirm"]
    assert form.find("input", name="confirm").attrs.get("autocomplete") == "off"
    assert "Careful Ltd" in form.find("label").text
    wrong = world.page("operator", "DELETE", f"/admin/tenants/{tenant.id}",
                       query={"confirm": "careful ltd"})
    assert wrong.status_code == 400
    assert "type its name exactly" in parse_html(wrong.text).find(class_="toast").text
    assert world.fetchval("SELECT count(*) FROM tenants WHERE id = ?", (tenant.id,)) == 1


def test_invitation_link_is_shown_once_with_a_copy_button(world: World, parse_html: Any) -> None:
    tenant = world.fresh_tenant("Invites R Us")
    doc = parse_html(world.page("operator", "GET", f"/admin/tenants/{tenant.id}").text)
    form = doc.find("form", id="invite-form")
    assert form.attrs["hx-target"] == "#invite-result"
    assert doc.find(id="invite-result")
    made = world.page("operator", "POST", f"/admin/tenants/{tenant.id}/invitations",
                      form={"email": "owner@invites.example", "role": "owner"})
    part = parse_html(made.text)
    button = part.find("button", class_="btn")
    target = button.attrs["data-copy"]
    url = part.find("code", id=target.removeprefix("#")).text
    assert url.startswith("https://wa.agency.example/invite?token=")
    link = world.run(links.resolve, world.db, url.split("token=")[1], "invite",
                     now=world.clock())
    assert (link.tenant_id, link.subject, link.role) == (tenant.id, "owner@invites.example",
                                                         "owner")
    again = world.page("operator", "GET", f"/admin/tenants/{tenant.id}")
    assert url.split("token=")[1] not in again.text


@pytest.mark.parametrize(("who", "base", "page"), [
    ("operator", "/admin/api-keys", "/admin/api-keys"),
    ("owner", "/settings/api-keys", "/settings/api-keys"),
    ("operator", "/admin/tenants/{a}/api-keys", "/admin/tenants/{a}"),
])
def test_api_key_is_shown_once_and_can_be_revoked(world: World, parse_html: Any, who: str,
                                                  base: str, page: str) -> None:
    base, page = base.format(a=world.a.id), page.format(a=world.a.id)
    form = parse_html(world.page(who, "GET", page).text).find("form", **{"hx-post": base})
    assert form.attrs["hx-target"] == "#api-keys"
    roles = form.find_all("select", name="role")
    assert bool(roles) == (base != "/admin/api-keys")  # operator keys have no role

    card = parse_html(world.page(who, "POST", base, form={"name": "Shown once",
                                                          "role": "member"}).text)
    secret = card.find("code", id="new-key").text
    assert card.find("button", **{"data-copy": "#new-key"})
    world.keys["shown-once"] = secret
    if base == "/admin/api-keys":
        assert world.api("shown-once", "GET", "/api/v1/admin/tenants").status_code == 200
    else:
        me = world.api("shown-once", "GET", "/api/v1/me").json()
        assert (me["tenant"]["id"], me["identity"]["role"]) == (world.a.id, "member")
    reloaded = world.page(who, "GET", page)
    assert secret not in reloaded.text and secret[:12] in reloaded.text

    row = next(r for r in parse_html(reloaded.text).find(id="api-keys").find_all("tr")
               if "Shown once" in r.text and "active" in r.text)
    revoke = row.find("button", class_="btn-danger")
    assert "Shown once" in revoke.attrs["hx-confirm"]
    after = parse_html(world.page(who, "DELETE", revoke.attrs["hx-delete"]).text)
    assert "revoked" in after.find("tr", id=row.attrs["id"]).text
    assert world.api("shown-once", "GET", "/api/v1/me").status_code == 401


def test_members_change_role_and_removal(world: World, parse_html: Any) -> None:
    member = world.fresh_member(world.a.id)
    doc = parse_html(world.page("owner", "GET", "/settings/users").text)
    row = doc.find("tr", id=f"user-{member.id}")
    select = row.find("select", name="role")
    assert select.attrs["hx-patch"] == f"/settings/users/{member.id}"
    assert select.attrs["hx-trigger"] == "change"
    me_row = doc.find("tr", id=f"user-{world.users['owner'].id}")
    assert "(you)" in me_row.text

    changed = parse_html(world.page("owner", "PATCH", f"/settings/users/{member.id}",
                                    form={"role": "owner"}).text)
    options = changed.find("tr", id=f"user-{member.id}").find_all("option")
    assert [o.attrs["value"] for o in options if "selected" in o.attrs] == ["owner"]
    assert "is now owner" in changed.find("div", id="toasts").text

    removed = world.page("owner", "DELETE", f"/settings/users/{member.id}")
    assert removed.status_code == 200
    body = parse_html(removed.text)
    assert not body.find_all("tr")  # the row's swap target is replaced by nothing
    assert "User removed" in body.find("div", id="toasts").text


def test_the_last_owner_cannot_leave(world: World, parse_html: Any) -> None:
    tenant = world.fresh_tenant("One Owner")
    now = world.clock()
    _, token = world.run(users.invite, world.db, CLI, tenant.id, email="solo@one.example",
                         role="owner", now=now)
    solo = world.run(users.accept_invite, world.db, token, password=PASSWORD, now=now)
    world.sessions["solo"] = world.run(
        logins.login, world.db, email="solo@one.example", password=PASSWORD, ip="testclient",
        user_agent="pytest", now=now, limits=world.services.session_limits).token

    removed = world.page("solo", "DELETE", f"/settings/users/{solo.id}")
    assert removed.status_code == 409
    assert "at least one owner" in parse_html(removed.text).find(class_="toast").text
    demoted = world.page("solo", "PATCH", f"/settings/users/{solo.id}", form={"role": "member"})
    assert demoted.status_code == 409
    assert world.fetchval("SELECT role FROM users WHERE id = ?", (solo.id,)) == "owner"

    # With a second owner, the first may step down.
    second = world.fresh_member(tenant.id)
    promoted = world.page("solo", "PATCH", f"/settings/users/{second.id}", form={"role": "owner"})
    assert promoted.status_code == 200
    stepped_down = world.page("solo", "PATCH", f"/settings/users/{solo.id}",
                              form={"role": "member"})
    assert stepped_down.status_code == 200


def test_invitations_on_the_users_page(world: World, parse_html: Any) -> None:
    made = parse_html(world.page("owner", "POST", "/settings/invitations",
                                 form={"email": "clerk@acme.example", "role": "member"}).text)
    section = made.find("section", id="invitations")
    code = section.find("code")
    assert section.find("button", **{"data-copy": f"#{code.attrs['id']}"})
    row = next(r for r in section.find_all("tr") if "clerk@acme.example" in r.text)
    revoke = row.find("button")
    assert revoke.attrs["hx-target"] == "#invitations"
    after = parse_html(world.page("owner", "DELETE", revoke.attrs["hx-delete"]).text)
    assert "clerk@acme.example" not in after.text
    bad = world.page("owner", "POST", "/settings/invitations", form={"email": "nope"})
    assert bad.status_code == 400
    assert "valid e-mail" in parse_html(bad.text).find(class_="toast").text


def test_plan_page_shows_each_limit(world: World, parse_html: Any) -> None:
    doc = parse_html(world.page("member", "GET", "/settings/plan").text)
    rows = doc.find("table", id="limits").find_all("tr")
    limits = {r.attrs["data-limit"]: r for r in rows if "data-limit" in r.attrs}
    assert list(limits) == list(LIMITS)
    free = next(p for p in world.api("operator", "GET", "/api/v1/admin/plans").json()
                if p["id"] == world.a.plan_id)
    for limit, row in limits.items():
        assert row.find_all("td")[2].text == str(free[limit])


def test_plans_page_edits_limits(world: World, parse_html: Any) -> None:
    plan = world.fresh_plan()
    doc = parse_html(world.page("operator", "GET", "/admin/plans").text)
    form = doc.find("form", id=f"plan-{plan.id}")
    assert form.attrs["hx-put"] == f"/admin/plans/{plan.id}"
    fields = {i.attrs["name"]: i.attrs.get("value", "") for i in form.find_all("input")
              if i.attrs.get("name") != "_csrf_token"}
    assert set(fields) == {"name", *LIMITS}
    fields["max_numbers"] = "9"
    saved = parse_html(world.page("operator", "PUT", f"/admin/plans/{plan.id}", form=fields).text)
    assert saved.find("input", name="max_numbers").attrs["value"] == "9"
    for bad, message in (("-1", "max_numbers must be a whole number from 0"),
                         ("two", "must be a whole number")):
        response = world.page("operator", "PUT", f"/admin/plans/{plan.id}",
                              form={**fields, "max_numbers": bad})
        assert response.status_code == 400
        assert message in parse_html(response.text).find(class_="toast").text
    assert world.fetchval("SELECT max_numbers FROM plans WHERE id = ?", (plan.id,)) == 9


@pytest.mark.parametrize(("who", "page", "query"), [
    ("owner", "/settings/audit", {}),
    ("operator", "/admin/audit", {}),
    ("operator", "/admin/audit", {"tenant_id": "A"}),
])
def test_audit_load_more_walks_back_in_time(world: World, parse_html: Any, who: str, page: str,
                                           query: dict[str, str]) -> None:
    query = {k: world.a.id if v == "A" else v for k, v in query.items()}
    for n in range(60):
        world.fresh_invite(world.a.id)
        if n % 20 == 0:
            world.fresh_invite(world.b.id)
    doc = parse_html(world.page(who, "GET", page, query=query).text)
    rows = [r for r in doc.find("table", id="audit").find("tbody").find_all("tr")
            if r.attrs.get("id") != "audit-more"]
    assert len(rows) == 50
    seen = len(rows)
    more = doc.find("tr", id="audit-more").find("button")
    while True:
        assert more.attrs["hx-target"] == "#audit-more"
        assert more.attrs["hx-swap"] == "outerHTML"
        url = more.attrs["hx-get"]
        if query:
            assert f"tenant_id={world.a.id}" in url
        part = parse_html(world.page(who, "GET", url, htmx=True).text)
        batch = [r for r in part.find_all("tr") if r.attrs.get("id") != "audit-more"]
        assert batch and len(batch) <= 50
        if who == "owner" or query:
            assert "Zenith" not in part.text and world.b.id not in part.text
        seen += len(batch)
        following = part.find_all("tr", id="audit-more")
        if not following:
            break
        more = following[0].find("button")
    where = "" if who == "operator" and not query else " WHERE tenant_id = ?"
    params = () if not where else (world.a.id,)
    assert seen == world.fetchval(f"SELECT count(*) FROM audit_log{where}", params)


def test_failed_htmx_requests_answer_with_a_toast(world: World, parse_html: Any) -> None:
    response = world.page("owner", "DELETE", "/settings/api-keys/key_missing")
    assert response.status_code == 404
    assert response.headers["hx-retarget"] == "#toasts"
    assert response.headers["hx-reswap"] == "beforeend"
    toast = parse_html(response.text).find(class_="toast-error")
    assert toast.attrs["role"] == "alert" and "API key not found" in toast.text


def test_forms_without_a_csrf_token_are_refused(world: World) -> None:
    world.tick()
    world.client.cookies.clear()
    cookie = f"__Host-whatsdex={world.sessions['operator']}"
    response = world.client.post("/admin/tenants", data={"name": "Forged"},
                                 headers={"Cookie": cookie, "HX-Request": "true"})
    assert response.status_code == 403
    assert world.fetchval("SELECT count(*) FROM tenants WHERE name = 'Forged'") == 0


def test_audit_detail_is_readable(world: World, parse_html: Any) -> None:
    doc = parse_html(world.page("owner", "GET", "/settings/audit").text)
    details = [c.text for c in doc.find("table", id="audit").find_all("code")
               if c.text.startswith("{")]
    assert details and all(isinstance(json.loads(d), dict) for d in details)
