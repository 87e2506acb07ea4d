"""The operator's tenant and plan lifecycle: suspension, deletion, validation, the audit trail."""

from __future__ import annotations

from typing import Any

import pytest

from whatsdex.identity import apikeys, links, logins, users
from whatsdex.identity.principal import CLI
from whatsdex.store import users as user_rows
from whatsdex.store.records import Tenant

from .conftest import PASSWORD, World

ADMIN = "/api/v1/admin"


def populated_tenant(w: World, name: str) -> tuple[Tenant, str, str]:
    """A tenant with an owner who signed in, a key, an invitation, a client link and audit rows.

    Returns the tenant, its owner key and the owner's session token.
    """
    tenant = w.fresh_tenant(name)
    now = w.clock()
    email = f"boss@{tenant.id}.example"
    _, token = w.run(users.invite, w.db, CLI, tenant.id, email=email, role="owner", now=now)
    w.run(users.accept_invite, w.db, token, password=PASSWORD, now=now)
    session = w.run(logins.login, w.db, email=email, password=PASSWORD, ip="testclient",
                    user_agent="pytest", now=now, limits=w.services.session_limits)
    _, key = w.run(apikeys.create_key, w.db, CLI, tenant.id, name="main", now=now)
    w.fresh_invite(tenant.id)
    w.run(links.create_client_link, w.db, CLI, tenant.id, "num_1", now=now)
    return tenant, key, session.token


def tenant_rows(w: World, tenant_id: str) -> dict[str, int]:
    """Rows per table that has a tenant_id column: found in the schema, so new tables count."""
    tables = [r["name"] for r in w.run(
        w.db.fetchall, "SELECT name FROM sqlite_master WHERE type = 'table' "
        "AND name NOT LIKE 'sqlite_%'")]
    counts = {}
    for table in tables:
        cols = {r["name"] for r in w.run(w.db.fetchall,
                                           "SELECT name FROM pragma_table_info(?)", (table,))}
        if "tenant_id" in cols:
            counts[table] = w.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = ?",
                                       (tenant_id,))
    return counts


# -- Suspension ------------------------------------------------------------------------------

def test_suspended_tenant_keys_and_sessions_get_403(world: World) -> None:
    tenant, key, session = populated_tenant(world, "Sleepy Cafe")
    world.keys["sleepy"], world.sessions["sleepy"] = key, session
    assert world.api("sleepy", "GET", "/api/v1/me").status_code == 200
    assert world.page("sleepy", "GET", "/settings/users").status_code == 200

    suspended = world.api("operator", "POST", f"{ADMIN}/tenants/{tenant.id}/suspend")
    assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"

    refused = world.api("sleepy", "GET", "/api/v1/me")
    assert refused.status_code == 403
    assert "suspended" in refused.json()["message"]
    page = world.page("sleepy", "GET", "/settings/users")
    assert page.status_code == 403 and "suspended" in page.text
    toast = world.page("sleepy", "POST", "/settings/api-keys", form={"name": "x"})
    assert toast.status_code == 403 and "suspended" in toast.text
    assert toast.headers["hx-retarget"] == "#toasts"

    resumed = world.api("operator", "POST", f"{ADMIN}/tenants/{tenant.id}/resume")
    assert resumed.json()["status"] == "active"
    assert world.api("sleepy", "GET", "/api/v1/me").status_code == 200
    assert world.page("sleepy", "GET", "/settings/users").status_code == 200


def test_suspend_through_patch_and_the_page(world: World, parse_html: Any) -> None:
    tenant = world.fresh_tenant("Patchable")
    patched = world.api("operator", "PATCH", f"{ADMIN}/tenants/{tenant.id}",
                        json={"status": "suspended"})
    assert patched.json()["status"] == "suspended"
    resumed = world.page("operator", "POST", f"/admin/tenants/{tenant.id}/resume")
    summary = parse_html(resumed.text).find(id="tenant-summary")
    assert summary.find(class_="badge").text == "active"
    # Active again: the only action offered is to suspend, and it asks first.
    button = summary.find("button", **{"hx-post": f"/admin/tenants/{tenant.id}/suspend"})
    assert "Suspend Patchable?" in button.attrs["hx-confirm"]


# -- Deletion --------------------------------------------------------------------------------

@pytest.mark.parametrize("confirm", [None, "", "doomed bakery", "Doomed Bakery ", "Doomed"])
def test_delete_without_the_exact_name_deletes_nothing(world: World, confirm: str | None
                                                       ) -> None:
    tenant, _, _ = populated_tenant(world, f"Doomed Bakery {world.unique('#')}")
    before = tenant_rows(world, tenant.id)
    query = None if confirm is None else {"confirm": confirm}
    response = world.api("operator", "DELETE", f"{ADMIN}/tenants/{tenant.id}", query=query)
    assert response.status_code == 400
    assert response.json()["detail"] == {"field": "confirm"}
    assert tenant_rows(world, tenant.id) == before
    assert world.api("operator", "GET", f"{ADMIN}/tenants/{tenant.id}").status_code == 200


@pytest.mark.parametrize("via", ["api", "page"])
def test_delete_purges_everything_of_the_tenant(world: World, via: str) -> None:
    tenant, key, session = populated_tenant(world, f"Gone & Co {via}")
    world.keys["gone"], world.sessions["gone"] = key, session
    before = tenant_rows(world, tenant.id)
    for table in ("users", "api_keys", "link_tokens", "audit_log"):
        assert before[table] > 0, table
    user_ids = [u.id for u in world.run(user_rows.list_tenant_users, world.db, tenant.id)]
    marks = ", ".join("?" * len(user_ids))
    sessions = f"SELECT count(*) FROM login_sessions WHERE user_id IN ({marks})"
    assert world.fetchval(sessions, tuple(user_ids)) == 1

    started = world.tick()
    if via == "api":
        response = world.api("operator", "DELETE", f"{ADMIN}/tenants/{tenant.id}",
                             query={"confirm": tenant.name})
        assert response.status_code == 204
    else:
        response = world.page("operator", "DELETE", f"/admin/tenants/{tenant.id}",
                              query={"confirm": tenant.name})
        assert response.status_code == 200
        assert response.headers["hx-redirect"] == "/admin/tenants"

    assert set(tenant_rows(world, tenant.id).values()) == {0}
    assert world.fetchval(sessions, tuple(user_ids)) == 0
    assert world.api("operator", "GET", f"{ADMIN}/tenants/{tenant.id}").status_code == 404
    assert world.api("gone", "GET", "/api/v1/me").status_code == 401
    signed_out = world.page("gone", "GET", "/settings/users")
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")
    deleted = [e for e in world.audit_since(started) if e["action"] == "tenant.deleted"]
    assert len(deleted) == 1
    assert deleted[0]["tenant_id"] is None and deleted[0]["object_id"] == tenant.id
    assert deleted[0]["actor_type"] == ("api_key" if via == "api" else "user")


# -- Validation ------------------------------------------------------------------------------

def plan(**changes: Any) -> dict[str, Any]:
    return {"id": "gold", "name": "Gold", "max_numbers": 3, "max_messages_per_day": 5000,
            "max_contacts": 10000, "max_active_campaigns": 2, "max_webhooks": 2, **changes}


@pytest.mark.parametrize(("body", "field"), [
    (plan(max_numbers=-1), "max_numbers"),
    (plan(max_webhooks=-5), "max_webhooks"),
    (plan(max_contacts=10**12), "max_contacts"),
    (plan(max_messages_per_day="many"), "max_messages_per_day"),
    (plan(max_active_campaigns=1.5), "max_active_campaigns"),
    (plan(id="Gold Plan"), "id"),
    (plan(id=""), "id"),
    (plan(name=""), "name"),
    (plan(name="x" * 101), "name"),
    ({k: v for k, v in plan().items() if k != "max_numbers"}, "max_numbers"),
    (plan(surprise=1), "surprise"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_plan_validation_names_the_field(world: World, body: dict[str, Any], field: str) -> None:
    response = world.api("operator", "POST", f"{ADMIN}/plans", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["status"] == 400 and error["message"]
    assert field in str(error["detail"])
    assert world.fetchval("SELECT count(*) FROM plans WHERE id = ?", (body.get("id"),)) == 0


def test_plan_crud(world: World) -> None:
    created = world.api("operator", "POST", f"{ADMIN}/plans", json=plan(id="silver"))
    assert created.status_code == 201 and created.json()["max_numbers"] == 3
    again = world.api("operator", "POST", f"{ADMIN}/plans", json=plan(id="silver"))
    assert again.status_code == 409
    body = {k: v for k, v in plan(max_numbers=7).items() if k != "id"}
    updated = world.api("operator", "PUT", f"{ADMIN}/plans/silver", json=body)
    assert updated.status_code == 200 and updated.json()["max_numbers"] == 7
    negative = world.api("operator", "PUT", f"{ADMIN}/plans/silver", json={**body,
                                                                         "max_numbers": -1})
    assert negative.status_code == 400 and "max_numbers" in str(negative.json()["detail"])
    assert world.api("operator", "PUT", f"{ADMIN}/plans/nope", json=body).status_code == 404
    listed = {p["id"]: p for p in world.api("operator", "GET", f"{ADMIN}/plans").json()}
    assert listed["silver"]["max_numbers"] == 7 and {"free", "premium"} <= set(listed)

    tenant = world.fresh_tenant(plan="silver")
    in_use = world.api("operator", "DELETE", f"{ADMIN}/plans/silver")
    assert in_use.status_code == 409 and "1 tenant" in in_use.json()["message"]
    assert world.fetchval("SELECT count(*) FROM plans WHERE id = 'silver'") == 1
    world.api("operator", "PATCH", f"{ADMIN}/tenants/{tenant.id}", json={"plan": "free"})
    assert world.api("operator", "DELETE", f"{ADMIN}/plans/silver").status_code == 204
    assert world.api("operator", "DELETE", f"{ADMIN}/plans/silver").status_code == 404


def test_plan_in_use_cannot_be_deleted_from_the_page(world: World) -> None:
    response = world.page("operator", "DELETE", "/admin/plans/free")
    assert response.status_code == 409
    assert response.headers["hx-retarget"] == "#toasts"
    assert "move them first" in response.text


@pytest.mark.parametrize(("body", "field"), [
    ({}, None),
    ({"status": "deleted"}, "status"),
    ({"plan": "platinum"}, "plan"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"tenant_id": "ten_other"}, "tenant_id"),
])
def test_tenant_update_validation(world: World, body: dict[str, Any], field: str | None) -> None:
    tenant = world.fresh_tenant()
    response = world.api("operator", "PATCH", f"{ADMIN}/tenants/{tenant.id}", json=body)
    assert response.status_code == 400, response.text
    if field:
        assert field in str(response.json()["detail"])
    after = world.api("operator", "GET", f"{ADMIN}/tenants/{tenant.id}").json()
    assert (after["name"], after["plan"], after["status"]) == (tenant.name, "free", "active")


# -- The audit trail -------------------------------------------------------------------------

def _fresh(w: World) -> dict[str, str]:
    tenant = w.fresh_tenant()
    return {"tenant": tenant.id, "key": w.fresh_key(tenant.id).id, "plan": w.fresh_plan().id,
            "member": w.fresh_member(w.a.id).id, "own_key": w.fresh_key(w.a.id).id}


AUDITED = [
    # who, method, path, body, action, audited tenant ("a": tenant A, "tenant": the fresh one)
    ("operator", "POST", "/api/v1/admin/tenants", {"name": "Audited"}, "tenant.created", "new"),
    ("operator", "PATCH", "/api/v1/admin/tenants/{tenant}", {"name": "Renamed"},
     "tenant.updated", "tenant"),
    ("operator", "POST", "/api/v1/admin/tenants/{tenant}/suspend", None, "tenant.suspended",
     "tenant"),
    ("operator", "POST", "/api/v1/admin/tenants/{tenant}/api-keys", {"name": "k"},
     "api_key.created", "tenant"),
    ("operator", "DELETE", "/api/v1/admin/tenants/{tenant}/api-keys/{key}", None,
     "api_key.revoked", "tenant"),
    ("operator", "POST", "/api/v1/admin/tenants/{tenant}/invitations",
     {"email": "first@owner.example", "role": "owner"}, "user.invited", "tenant"),
    ("operator", "PUT", "/api/v1/admin/plans/{plan}",
     {k: v for k, v in plan(name="Renamed").items() if k != "id"}, "plan.updated", None),
    ("operator", "DELETE", "/api/v1/admin/plans/{plan}", None, "plan.deleted", None),
    ("owner", "POST", "/api/v1/api-keys", {"name": "CRM", "role": "member"}, "api_key.created",
     "a"),
    ("owner", "DELETE", "/api/v1/api-keys/{own_key}", None, "api_key.revoked", "a"),
    ("owner", "POST", "/api/v1/invitations", {"email": "new@acme.example"}, "user.invited", "a"),
    ("owner", "PATCH", "/settings/users/{member}", {"role": "owner"}, "user.role_changed", "a"),
    ("owner", "DELETE", "/settings/users/{member}", None, "user.removed", "a"),
    ("operator", "POST", "/admin/api-keys", {"name": "deploy"}, "api_key.created", None),
]


@pytest.mark.parametrize(("who", "method", "path", "body", "action", "scope"), AUDITED,
                         ids=[f"{row[1]} {row[2]}" for row in AUDITED])
def test_changes_are_audited_with_actor_and_tenant(
    world: World, who: str, method: str, path: str, body: Any, action: str, scope: str | None,
) -> None:
    ids = _fresh(world)
    url = path.format(**ids)
    started = world.clock() + 1
    if url.startswith("/api/"):
        response = world.api(who, method, url, json=body)
    else:
        response = world.page(who, method, url, form=body)
    assert response.status_code < 300, response.text
    entries = [e for e in world.audit_since(started) if e["action"] == action]
    assert len(entries) == 1, world.audit_since(started)
    entry = entries[0]
    expected_tenant = {"a": world.a.id, "tenant": ids["tenant"], None: None}.get(scope, "?")
    if scope == "new":
        expected_tenant = response.json()["id"]
    assert entry["tenant_id"] == expected_tenant
    assert entry["actor_type"] == ("api_key" if url.startswith("/api/") else "user")
    assert entry["ip"] == "testclient"
