"""The JSON API's contract: shapes, secrets shown once, pagination, errors and the OpenAPI docs."""

from __future__ import annotations

from typing import Any

import pytest

from whatsdex.identity import links, users
from whatsdex.identity.principal import CLI
from whatsdex.store.plans import LIMITS

from .conftest import PASSWORD, World


def keys_of(value: Any) -> set[str]:
    """Every object key anywhere in a JSON document."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def test_me_names_the_key_its_tenant_and_plan(world: World) -> None:
    me = world.api("member", "GET", "/api/v1/me").json()
    assert me["identity"] == {"kind": "api_key", "id": me["identity"]["id"], "name": "main",
                              "role": "member"}
    assert me["tenant"]["id"] == world.a.id and me["tenant"]["name"] == "Acme Bakery"
    assert me["plan"]["id"] == world.a.plan_id
    assert all(isinstance(me["plan"][limit], int) for limit in LIMITS)


def test_plan_shows_limits_and_the_counts_that_exist(world: World) -> None:
    usage = world.api("member", "GET", "/api/v1/plan").json()
    assert [row["limit"] for row in usage["limits"]] == list(LIMITS)
    free = world.api("operator", "GET", "/api/v1/admin/plans").json()
    allowed = next(p for p in free if p["id"] == world.a.plan_id)
    assert all(row["allowed"] == allowed[row["limit"]] for row in usage["limits"])
    users_in_a = world.fetchval("SELECT count(*) FROM users WHERE tenant_id = ?", (world.a.id,))
    active = world.fetchval("SELECT count(*) FROM api_keys WHERE tenant_id = ? "
                            "AND revoked_at IS NULL", (world.a.id,))
    assert (usage["users"], usage["active_api_keys"]) == (users_in_a, active)
    used = {row["limit"]: row["used"] for row in usage["limits"]}
    numbers = world.fetchval("SELECT count(*) FROM wa_sessions WHERE tenant_id = ?",
                             (world.a.id,))
    contacts = world.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = ?", (world.a.id,))
    hooks = world.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = ?", (world.a.id,))
    assert used == {**dict.fromkeys(LIMITS), "max_numbers": numbers, "max_contacts": contacts,
                    "max_webhooks": hooks}


def test_a_key_is_shown_once_and_never_its_hash(world: World) -> None:
    created = world.api("owner", "POST", "/api/v1/api-keys", json={"name": "Zapier",
                                                                   "role": "member"})
    assert created.status_code == 201
    key = created.json()
    secret = key["key"]
    assert secret.startswith(key["prefix"]) and len(secret) > 40
    world.keys["zapier"] = secret
    assert world.api("zapier", "GET", "/api/v1/me").json()["identity"]["role"] == "member"

    documents = [world.api("owner", "GET", path).json() for path in
                 ("/api/v1/api-keys", "/api/v1/me", "/api/v1/audit", "/api/v1/invitations")]
    documents += [world.api("operator", "GET", path).json() for path in
                  ("/api/v1/admin/audit", f"/api/v1/admin/tenants/{world.a.id}/api-keys")]
    for document in documents:
        text = str(document)
        assert secret not in text
        assert not {k for k in keys_of(document) if "hash" in k or k in ("key", "password")}
    listed = next(k for k in documents[0] if k["id"] == key["id"])
    assert listed["prefix"] == key["prefix"] and "key" not in listed

    assert world.api("owner", "DELETE", f"/api/v1/api-keys/{key['id']}").status_code == 204
    assert world.api("zapier", "GET", "/api/v1/me").status_code == 401
    assert world.api("owner", "DELETE", f"/api/v1/api-keys/{key['id']}").status_code == 204


def test_operator_onboarding_key_and_invitation(world: World) -> None:
    tenant = world.fresh_tenant("Onboarded")
    base = f"/api/v1/admin/tenants/{tenant.id}"
    key = world.api("operator", "POST", f"{base}/api-keys", json={"name": "setup"}).json()
    world.keys["onboarded"] = key["key"]
    me = world.api("onboarded", "GET", "/api/v1/me").json()
    assert me["tenant"]["id"] == tenant.id and me["identity"]["role"] == "owner"

    invited = world.api("operator", "POST", f"{base}/invitations",
                        json={"email": "Boss@Onboarded.example", "role": "owner"})
    assert invited.status_code == 201
    body = invited.json()
    assert set(body) == {"id", "email", "role", "url", "expires_at"}
    assert body["email"] == "boss@onboarded.example"
    prefix = "https://wa.agency.example/invite?token="
    assert body["url"].startswith(prefix)
    token = body["url"].removeprefix(prefix)
    link = world.run(links.resolve, world.db, token, "invite", now=world.clock())
    assert link.tenant_id == tenant.id and link.role == "owner"
    user = world.run(users.accept_invite, world.db, token, password=PASSWORD, now=world.clock())
    assert user.tenant_id == tenant.id and user.role == "owner"
    listed = world.api("onboarded", "GET", "/api/v1/invitations").json()
    assert [(i["id"], i["status"]) for i in listed] == [(body["id"], "accepted")]
    again = world.api("operator", "POST", f"{base}/invitations",
                      json={"email": "boss@onboarded.example"})
    assert again.status_code == 409


def test_invitations_can_be_revoked(world: World) -> None:
    made = world.api("owner", "POST", "/api/v1/invitations", json={"email": "temp@acme.example"})
    invite_id = made.json()["id"]
    assert world.api("owner", "DELETE", f"/api/v1/invitations/{invite_id}").status_code == 204
    listed = {i["id"]: i["status"] for i in world.api("owner", "GET", "/api/v1/invitations").json()}
    assert listed[invite_id] == "revoked"
    token = made.json()["url"].split("token=")[1]
    with pytest.raises(Exception, match="invalid"):
        world.run(links.resolve, world.db, token, "invite", now=world.clock())


def test_a_client_link_is_not_an_invitation(world: World) -> None:
    """Revoking goes through the invitations route only for invitations."""
    link, _ = world.run(links.create_client_link, world.db, CLI, world.a.id, "num_x",
                        now=world.clock())
    assert world.api("owner", "DELETE", f"/api/v1/invitations/{link.id}").status_code == 404
    assert world.fetchval("SELECT revoked_at FROM link_tokens WHERE id = ?", (link.id,)) is None


@pytest.mark.parametrize("who", ["owner", "operator"])
def test_audit_pages_follow_the_cursor(world: World, who: str) -> None:
    for n in range(7):
        world.api("owner", "POST", "/api/v1/invitations", json={"email": f"p{n}@acme.example"})
    path = "/api/v1/audit" if who == "owner" else "/api/v1/admin/audit"
    query = {"limit": "3"} if who == "owner" else {"limit": "3", "tenant_id": world.a.id}
    seen: list[int] = []
    while True:
        page = world.api(who, "GET", path, query=query).json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        assert {item["tenant_id"] for item in page["items"]} <= {world.a.id}
        if page["next_before"] is None:
            break
        assert page["next_before"] == seen[-1]
        query = {**query, "before": str(page["next_before"])}
    assert seen == sorted(seen, reverse=True)
    everything = world.run(world.db.fetchall, "SELECT id FROM audit_log WHERE tenant_id = ? "
                           "ORDER BY id DESC", (world.a.id,))
    assert seen == [row["id"] for row in everything]


def test_operator_audit_covers_every_tenant(world: World) -> None:
    items = world.api("operator", "GET", "/api/v1/admin/audit", query={"limit": "200"}).json()
    tenants = {item["tenant_id"] for item in items["items"]}
    assert {world.a.id, world.b.id, None} <= tenants
    entry = items["items"][0]
    assert isinstance(entry["detail"], dict)


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "201"}, {"limit": "x"},
                                   {"before": "0"}, {"before": "soon"}])
def test_audit_paging_limits(world: World, query: dict[str, str]) -> None:
    response = world.api("owner", "GET", "/api/v1/audit", query=query)
    assert response.status_code == 400
    assert next(iter(query)) in str(response.json()["detail"])


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/v1/api-keys", {"name": "x", "role": "operator"}, "role"),
    ("/api/v1/api-keys", {"name": ""}, "name"),
    ("/api/v1/api-keys", {"name": "x" * 101}, "name"),
    ("/api/v1/invitations", {"email": "not-an-address"}, "email"),
    ("/api/v1/invitations", {"email": "a@b.example", "role": "admin"}, "role"),
    ("/api/v1/invitations", {}, "email"),
    ("/api/v1/admin/tenants", {"name": ""}, "name"),
    ("/api/v1/admin/tenants", {"name": "Fine", "plan": "nope"}, "plan"),
])
def test_bad_bodies_answer_400_naming_the_field(world: World, path: str, body: Any, field: str
                                                ) -> None:
    who = "operator" if "/admin/" in path else "owner"
    response = world.api(who, "POST", path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"status", "message", "detail"} and error["status"] == 400
    assert field in str(error["detail"])


def test_not_json_answers_400(world: World) -> None:
    world.tick()
    response = world.client.post("/api/v1/api-keys", content=b"{nope",
                                 headers={"Authorization": f"Bearer {world.keys['owner']}",
                                          "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["status"] == 400


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer wdx_not-a-key", "Token x"])
def test_malformed_credentials_answer_401(world: World, header: str) -> None:
    world.tick()
    response = world.client.get("/api/v1/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["status"] == 401


def test_a_session_cookie_does_not_open_the_api(world: World) -> None:
    world.tick()
    world.client.cookies.clear()
    response = world.client.get("/api/v1/admin/tenants",
                                headers={"Cookie": f"__Host-whatsdex={world.sessions['operator']}"})
    assert response.status_code == 401


def test_openapi_documents_every_route_with_tags_and_the_bearer_scheme(world: World) -> None:
    spec = world.client.get("/api/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    operations = [(path, method, op) for path, item in spec["paths"].items()
                  if path.startswith("/api/v1") for method, op in item.items()]
    assert len(operations) >= 25
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("tags"), where
        assert op.get("summary"), where
        assert op.get("security") == [{"apiKey": []}], where
    delete = spec["paths"]["/api/v1/admin/tenants/{tenant_id}"]["delete"]
    assert "confirm" in delete["description"]
    assert any(p["name"] == "confirm" and p["in"] == "query" for p in delete["parameters"])
    schemas = spec["components"]["schemas"]
    create = next(s for name, s in schemas.items() if name.endswith("TenantCreate"))
    assert create["properties"]["name"]["maxLength"] == 100
    limits = next(s for name, s in schemas.items() if name.endswith("PlanCreate"))
    assert limits["properties"]["max_numbers"]["minimum"] == 0
    created = next(s for name, s in schemas.items() if name.endswith("ApiKeyCreated"))
    assert "key" in created["properties"]
    assert not any("hash" in prop for s in schemas.values() for prop in s.get("properties", {}))
