"""The contacts API: CRUD, validation, duplicates, tenancy, filters, pages, consent, plan limit."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import World


def create(world: World, who: str = "owner", **body: Any) -> dict[str, Any]:
    response = world.api("POST", "/api/v1/contacts", who, json=body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def audit_actions(world: World, contact_id: str) -> list[str]:
    rows = world.run(world.db.fetchall, "SELECT action FROM audit_log WHERE object_id = ? "
                     "ORDER BY id", (contact_id,))
    return [row[0] for row in rows]


def test_create_normalises_everything(world: World) -> None:
    created = create(world, "member", phone="030 2345678", default_country="de",
                     name="  Ana   Lima ", tags=[" VIP ", "vip", "Berlin  Mitte", ""],
                     custom={"company": "Acme", "orders": 3, "vip": True, "score": 4.5})
    assert created["phone"] == "+49302345678"
    assert created["jid"] == "49302345678@s.whatsapp.net"
    assert created["name"] == "Ana Lima"
    assert created["tags"] == ["vip", "berlin mitte"]
    assert created["custom"] == {"company": "Acme", "orders": 3, "vip": True, "score": 4.5}
    assert created["opt_status"] == "unknown" and created["opt_changed_at"] is None
    fetched = world.api("GET", f"/api/v1/contacts/{created['id']}").json()
    assert fetched == created
    assert audit_actions(world, created["id"]) == ["contact.created"]


def test_create_with_consent_records_source(world: World) -> None:
    created = create(world, phone="+33 6 11 22 33 44", opt_status="opted_in")
    assert created["opt_status"] == "opted_in"
    assert created["opt_source"] == "api" and created["opt_changed_at"]


@pytest.mark.parametrize(("body", "field", "message"), [
    ({"phone": "0301234567"}, "phone", "no country"),
    ({"phone": "not a number"}, "phone", "letters"),
    ({"phone": "030 1234567", "default_country": "XX"}, "default_country", "Unknown country"),
    ({"phone": "+4930111", "tags": ["a,b"]}, "tags", "','"),
    ({"phone": "+4930111", "tags": ["x" * 41]}, "tags", "at most 40"),
    ({"phone": "+4930111", "tags": [f"t{i}" for i in range(51)]}, "tags", "at most 50"),
    ({"phone": "+4930111", "custom": {"Company": "x"}}, "custom.Company", "lowercase"),
    ({"phone": "+4930111", "custom": {"1st": "x"}}, "custom.1st", "starting with a letter"),
    ({"phone": "+4930111", "custom": {"a": {"nested": 1}}}, "custom.a", "string, a number"),
    ({"phone": "+4930111", "custom": {"a": [1]}}, "custom.a", "string, a number"),
    ({"phone": "+4930111", "custom": {"a": None}}, "custom.a", "string, a number"),
    ({"phone": "+4930111", "custom": {"a": "x" * 1001}}, "custom.a", "longer than 1000"),
    ({"phone": "+4930111", "custom": {f"k{i}": 1 for i in range(51)}}, "custom", "at most 50"),
    ({"phone": "+4930111", "custom": {"a": 2**60}}, "custom.a", "too large"),
    ({"phone": "+4930111", "name": "x" * 201}, None, None),
    ({"phone": "+4930111", "opt_status": "maybe"}, None, None),
    ({"phone": "+4930111", "surprise": 1}, None, None),
])
def test_create_validation(world: World, body: dict[str, Any], field: str | None,
                           message: str | None) -> None:
    before = world.fetchval("SELECT count(*) FROM contacts")
    response = world.api("POST", "/api/v1/contacts", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    if field is not None:
        assert answer["detail"]["field"] == field
        assert message is not None and message in answer["message"]
    assert world.fetchval("SELECT count(*) FROM contacts") == before


def test_duplicate_phone_names_the_existing_contact(world: World) -> None:
    first = create(world, phone="+49 40 5550001")
    again = world.api("POST", "/api/v1/contacts", json={"phone": "040 5550001",
                                                        "default_country": "DE"})
    assert again.status_code == 409
    assert again.json()["detail"]["contact_id"] == first["id"]
    assert first["id"] in again.json()["message"]
    other = create(world, phone="+49 40 5550002")
    moved = world.api("PATCH", f"/api/v1/contacts/{other['id']}", json={"phone": "+494055500 01"})
    assert moved.status_code == 409
    assert moved.json()["detail"]["contact_id"] == first["id"]


def test_same_phone_in_two_tenants_is_fine(world: World) -> None:
    mine = create(world, phone="+49 40 5550003")
    theirs = create(world, "other", phone="+49 40 5550003")
    assert mine["id"] != theirs["id"]


def test_other_tenants_contact_is_not_found(world: World) -> None:
    theirs = create(world, "other", phone="+49 40 5550004", name="Secret Person")
    cid = theirs["id"]
    for method, path, body in [
        ("GET", f"/api/v1/contacts/{cid}", None),
        ("PATCH", f"/api/v1/contacts/{cid}", {"name": "x"}),
        ("DELETE", f"/api/v1/contacts/{cid}", None),
        ("POST", f"/api/v1/contacts/{cid}/opt-out", None),
        ("POST", f"/api/v1/contacts/{cid}/opt-in", None),
    ]:
        response = world.api(method, path, "owner", json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert "Secret" not in response.text and cid not in response.text
    listed = world.api("GET", "/api/v1/contacts", params={"search": "Secret", "limit": 200})
    assert listed.json()["items"] == []
    still = world.api("GET", f"/api/v1/contacts/{cid}", "other").json()
    assert still["name"] == "Secret Person" and still["opt_status"] == "unknown"


def test_update_changes_only_what_is_sent(world: World) -> None:
    created = create(world, phone="+49 40 5550005", name="Bo", tags=["a"],
                     custom={"city": "Kiel", "n": 1})
    cid = created["id"]
    renamed = world.api("PATCH", f"/api/v1/contacts/{cid}", json={"name": "Bo Berg"}).json()
    assert renamed["name"] == "Bo Berg" and renamed["tags"] == ["a"]
    assert renamed["custom"] == {"city": "Kiel", "n": 1}
    replaced = world.api("PATCH", f"/api/v1/contacts/{cid}",
                         json={"tags": ["B", "c"], "custom": {"city": "Bonn"}}).json()
    assert replaced["tags"] == ["b", "c"] and replaced["custom"] == {"city": "Bonn"}
    moved = world.api("PATCH", f"/api/v1/contacts/{cid}",
                      json={"phone": "040 5550006", "default_country": "DE"}).json()
    assert moved["phone"] == "+49405550006" and moved["jid"] == "49405550006@s.whatsapp.net"
    same = world.api("PATCH", f"/api/v1/contacts/{cid}", json={"name": "Bo Berg"}).json()
    assert same["updated_at"] == moved["updated_at"]  # nothing changed, nothing written
    assert audit_actions(world, cid) == ["contact.created"] + ["contact.updated"] * 3
    bad = world.api("PATCH", f"/api/v1/contacts/{cid}", json={"opt_status": "opted_in"})
    assert bad.status_code == 400  # consent changes only through opt-in / opt-out


def test_delete(world: World) -> None:
    created = create(world, phone="+49 40 5550007", tags=["gone"])
    response = world.api("DELETE", f"/api/v1/contacts/{created['id']}", "member")
    assert response.status_code == 204
    assert world.api("GET", f"/api/v1/contacts/{created['id']}").status_code == 404
    assert world.fetchval("SELECT count(*) FROM contact_tags WHERE contact_id = ?",
                          (created["id"],)) == 0
    assert world.api("DELETE", f"/api/v1/contacts/{created['id']}").status_code == 404
    assert audit_actions(world, created["id"]) == ["contact.created", "contact.deleted"]


def test_opt_out_and_in_record_time_and_source(world: World) -> None:
    created = create(world, phone="+49 40 5550008")
    cid = created["id"]
    out = world.api("POST", f"/api/v1/contacts/{cid}/opt-out", "member")
    assert out.status_code == 200
    assert out.json()["opt_status"] == "opted_out" and out.json()["opt_source"] == "api"
    assert out.json()["opt_changed_at"]
    again = world.api("POST", f"/api/v1/contacts/{cid}/opt-out").json()
    assert again["opt_changed_at"] == out.json()["opt_changed_at"]  # already out: unchanged
    back = world.api("POST", f"/api/v1/contacts/{cid}/opt-in").json()
    assert back["opt_status"] == "opted_in"
    assert audit_actions(world, cid) == ["contact.created", "contact.opted_out",
                                         "contact.opted_in"]


def test_list_filters_and_cursor_pages(world: World) -> None:
    tenant, key = world.fresh_tenant()
    world.keys["fresh"] = key
    made = []
    for i in range(7):
        made.append(create(world, "fresh", phone=f"+49 40 66600{i:02d}", name=f"Person {i}",
                           tags=["even"] if i % 2 == 0 else ["odd", "Extra"]))
    world.api("POST", f"/api/v1/contacts/{made[3]['id']}/opt-out", "fresh")

    def listed(**query: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        for _ in range(20):
            params = {**query, **({"cursor": cursor} if cursor else {})}
            page = world.api("GET", "/api/v1/contacts", "fresh", params=params).json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("endless pages")

    everyone = listed(limit=3)
    assert len(everyone) == 7 and len({c["id"] for c in everyone}) == 7
    assert [c["name"] for c in everyone] == [f"Person {i}" for i in reversed(range(7))]
    assert {c["name"] for c in listed(tag="odd")} == {"Person 1", "Person 3", "Person 5"}
    assert {c["name"] for c in listed(tag=" EXTRA ")} == {"Person 1", "Person 3", "Person 5"}
    assert [c["name"] for c in listed(opt_status="opted_out")] == ["Person 3"]
    assert [c["name"] for c in listed(tag="odd", opt_status="unknown", limit=1)] == [
        "Person 5", "Person 1"]
    assert [c["name"] for c in listed(search="son 4")] == ["Person 4"]
    assert [c["name"] for c in listed(search="4940666 0002")] == ["Person 2"]
    assert listed(search="%") == [] and listed(search="_") == []
    tags = world.api("GET", "/api/v1/contacts/tags", "fresh").json()
    assert tags == [{"tag": "even", "contacts": 4}, {"tag": "extra", "contacts": 3},
                    {"tag": "odd", "contacts": 3}]
    bad = world.api("GET", "/api/v1/contacts", "fresh", params={"cursor": "garbage"})
    assert bad.status_code == 400 and bad.json()["detail"]["field"] == "cursor"
    assert world.api("GET", "/api/v1/contacts", "fresh",
                     params={"limit": 201}).status_code == 400
    assert tenant.id


def test_plan_limit_on_create(world: World) -> None:
    _, key = world.fresh_tenant(max_contacts=2)
    world.keys["small"] = key
    create(world, "small", phone="+49 40 7770001")
    create(world, "small", phone="+49 40 7770002")
    refused = world.api("POST", "/api/v1/contacts", "small", json={"phone": "+49 40 7770003"})
    assert refused.status_code == 403
    assert refused.json()["detail"]["limit"] == "max_contacts"
    assert "allows 2 contacts" in refused.json()["message"]


def test_needs_a_tenant_key(world: World) -> None:
    world.client.cookies.clear()
    assert world.client.get("/api/v1/contacts").status_code == 401
