"""CSV import rules (dry run, mapping, duplicates, existing contacts, consent, plan limit, file
formats and sizes) and the export round trip."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from whatsdex.contacts import importer

from .conftest import World, csv_bytes


def upload(world: World, content: bytes, who: str = "owner", filename: str = "contacts.csv",
           **fields: Any) -> Any:
    data = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in fields.items()}
    return world.api("POST", "/api/v1/contacts/import", who,
                     files={"file": (filename, content, "text/csv")}, data=data)


def run_import(world: World, content: bytes, who: str = "owner", **fields: Any
               ) -> dict[str, Any]:
    response = upload(world, content, who, **fields)
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["url"] == f"/api/v1/contacts/imports/{started['job_id']}"
    return world.wait_import(started["job_id"], who)


def contacts_of(world: World, who: str) -> dict[str, dict[str, Any]]:
    """Every contact of the key's tenant, by phone."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = world.api("GET", "/api/v1/contacts", who, params=params).json()
        found.update({c["phone"]: c for c in page["items"]})
        cursor = page["next_cursor"]
        if cursor is None:
            return found


@pytest.fixture
def fresh(world: World) -> str:
    """A new tenant for one test; returns the name of its key in `world.keys`."""
    tenant, key = world.fresh_tenant()
    name = world.unique("tenant")
    world.keys[name] = key
    world.tenant_of[name] = tenant.id
    return name


SAMPLE = [
    ["Full Name", "Mobile", "City", "Labels", "Consent"],
    ["Ana Lima", "030 1111111", "Berlin", "VIP; fair", "yes"],
    ["Bo Berg", "+33 6 11 11 11 11", "Paris", "", ""],
    ["Cy", "not a phone", "Rome", "", ""],
    ["", "", "Oslo", "", ""],
    ["Di", "+49 30 1111111", "Bonn", "", ""],  # the same phone as line 2
    ["Ed", "+49 30 2222222", "Kiel", "", "maybe"],
]


def test_dry_run_previews_and_writes_nothing(world: World, fresh: str) -> None:
    before = world.fetchval("SELECT count(*) FROM contacts")
    jobs = world.fetchval("SELECT count(*) FROM contact_imports")
    response = upload(world, csv_bytes(SAMPLE), fresh, dry_run="true", default_country="DE")
    assert response.status_code == 200, response.text
    p = response.json()
    assert [(c["name"], c["field"]) for c in p["columns"]] == [
        ("Full Name", "name"), ("Mobile", "phone"), ("City", "custom.city"),
        ("Labels", "tags"), ("Consent", "opt_status")]
    assert p["columns"][1]["samples"] == ["030 1111111", "+33 6 11 11 11 11", "not a phone"]
    assert p["ready"] is True
    assert (p["total"], p["valid"], p["invalid"], p["duplicate_in_file"]) == (6, 2, 3, 1)
    assert (p["existing"], p["new"], p["over_limit"]) == (0, 2, 0)
    assert p["rows"][0] == {"line": 2, "phone": "+49301111111", "name": "Ana Lima",
                            "tags": ["vip", "fair"], "custom": {"city": "Berlin"},
                            "opt_status": "opted_in"}
    assert p["errors"] == [
        {"line": 4, "reason": "invalid phone: contains letters or symbols",
         "value": "not a phone"},
        {"line": 5, "reason": "missing phone", "value": ""},
        {"line": 6, "reason": "duplicate of line 2", "value": "+49 30 1111111"},
        {"line": 7, "reason": "unknown opt_status 'maybe' (use opted_in or opted_out)",
         "value": "+49 30 2222222"},
    ]
    assert world.fetchval("SELECT count(*) FROM contacts") == before
    assert world.fetchval("SELECT count(*) FROM contact_imports") == jobs


def test_dry_run_without_a_phone_column_says_so(world: World, fresh: str) -> None:
    p = upload(world, csv_bytes([["Who", "Where"], ["Ana", "Berlin"]]), fresh,
               dry_run="true").json()
    assert p["ready"] is False and "phone" in p["problem"]
    assert [c["field"] for c in p["columns"]] == ["custom.who", "custom.where"]
    fixed = upload(world, csv_bytes([["Who", "Where"], ["Ana", "+4930999"]]), fresh,
                   dry_run="true", mapping={"Where": "phone", "Who": "name"}).json()
    assert fixed["ready"] is True and fixed["rows"][0]["name"] == "Ana"
    refused = upload(world, csv_bytes([["Who"], ["Ana"]]), fresh)
    assert refused.status_code == 400 and "phone" in refused.json()["message"]


def test_import_reports_rows_and_applies_options(world: World, fresh: str) -> None:
    job = run_import(world, csv_bytes(SAMPLE), fresh, default_country="DE",
                     tags="Imported, 2025", opt_status="opted_out")
    assert job["status"] == "done" and job["filename"] == "contacts.csv"
    assert (job["total"], job["processed"], job["imported"], job["skipped"]) == (6, 6, 2, 4)
    assert [e["line"] for e in job["errors"]] == [4, 5, 6, 7]
    found = contacts_of(world, fresh)
    assert set(found) == {"+49301111111", "+33611111111"}
    ana, bo = found["+49301111111"], found["+33611111111"]
    assert ana["tags"] == ["vip", "fair", "imported", "2025"]
    assert ana["custom"] == {"city": "Berlin"}
    assert ana["opt_status"] == "opted_in" and ana["opt_source"] == "import"  # the row says yes
    assert bo["opt_status"] == "opted_out" and bo["opt_source"] == "import"  # the option
    errors = world.api("GET", f"/api/v1/contacts/imports/{job['id']}/errors.csv", fresh)
    assert errors.status_code == 200 and errors.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(errors.text.lstrip("\ufeff"))))
    assert rows[0] == ["line", "value", "reason"]
    assert rows[1] == ["4", "not a phone", "invalid phone: contains letters or symbols"]
    listed = world.api("GET", "/api/v1/contacts/imports", fresh).json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_existing_contacts_are_updated_never_opted_back_in(world: World, fresh: str) -> None:
    out = world.api("POST", "/api/v1/contacts", fresh, json={
        "phone": "+49 30 3000001", "name": "Keep Me", "tags": ["old"],
        "custom": {"city": "Kiel", "since": 2020}}).json()
    world.api("POST", f"/api/v1/contacts/{out['id']}/opt-out", fresh)
    same = world.api("POST", "/api/v1/contacts", fresh, json={
        "phone": "+49 30 3000002", "name": "Same", "tags": ["x"]}).json()
    rows = [["phone", "name", "tags", "custom.city", "opt_status"],
            ["+49 30 3000001", "", "new", "Bonn", "opted_in"],
            ["+49 30 3000002", "Same", "x", "", ""],
            ["+49 30 3000003", "Fresh", "", "", "opted_in"]]
    job = run_import(world, csv_bytes(rows), fresh)
    assert (job["imported"], job["updated"], job["unchanged"], job["kept_opted_out"]) == (
        1, 1, 1, 1)
    found = contacts_of(world, fresh)
    kept = found["+49303000001"]
    assert kept["id"] == out["id"] and kept["name"] == "Keep Me"  # an empty cell keeps the name
    assert kept["tags"] == ["old", "new"]
    assert kept["custom"] == {"city": "Bonn", "since": 2020}
    assert kept["opt_status"] == "opted_out" and kept["opt_source"] == "api"
    assert found["+49303000002"]["updated_at"] == same["updated_at"]
    assert found["+49303000003"]["opt_status"] == "opted_in"
    assert len(found) == 3


def test_an_import_can_opt_out(world: World, fresh: str) -> None:
    made = world.api("POST", "/api/v1/contacts", fresh, json={
        "phone": "+49 30 3100001", "opt_status": "opted_in"}).json()
    run_import(world, csv_bytes([["phone", "opt_status"], ["+49 30 3100001", "unsubscribed"]]),
               fresh)
    after = world.api("GET", f"/api/v1/contacts/{made['id']}", fresh).json()
    assert after["opt_status"] == "opted_out" and after["opt_source"] == "import"


def test_plan_limit_stops_new_contacts_not_updates(world: World) -> None:
    _, key = world.fresh_tenant(max_contacts=3)
    world.keys["limited"] = key
    existing = world.api("POST", "/api/v1/contacts", "limited",
                         json={"phone": "+49 30 4000001", "name": "Old"}).json()
    rows = [["phone", "name"]] + [[f"+49 30 40000{i:02d}", f"N{i}"] for i in range(1, 7)]
    job = run_import(world, csv_bytes(rows), "limited")
    assert job["status"] == "done"
    assert (job["imported"], job["updated"], job["skipped"]) == (2, 1, 3)
    assert [e["line"] for e in job["errors"]] == [5, 6, 7]
    for error in job["errors"]:
        assert error["reason"].startswith("plan limit reached: the Plan plan-")
        assert error["reason"].endswith(" plan allows 3 contacts")
    found = contacts_of(world, "limited")
    assert len(found) == 3 and found["+49304000001"]["name"] == "N1"
    assert found["+49304000001"]["id"] == existing["id"]
    preview = upload(world, csv_bytes([*rows, ["+49 30 4000099", "More"]]), "limited",
                     dry_run="true").json()
    assert (preview["existing"], preview["new"], preview["over_limit"]) == (3, 4, 4)


@pytest.mark.parametrize(("content", "filename"), [
    (csv_bytes([["Phone", "Name"], ["+4930500001", "Ümit"]], bom=True), "bom.csv"),
    (csv_bytes([["Telefon", "Name"], ["+4930500001", "Ümit"]], delimiter=";"), "semi.csv"),
    (csv_bytes([["phone", "name"], ["+4930500001", "Ümit"]], delimiter="\t"), "tab.tsv"),
    ("\ufeffphone,name\r\n+4930500001,Ümit\r\n".encode("utf-16"), "excel.txt"),
    (b'"phone","name"\n"+49 30 500001","\xc3\x9cmit"\n', "quoted.csv"),
])
def test_encodings_and_delimiters(world: World, fresh: str, content: bytes,
                                  filename: str) -> None:
    p = upload(world, content, fresh, filename=filename, dry_run="true").json()
    assert p["valid"] == 1, p
    assert p["rows"][0]["phone"] == "+4930500001" and p["rows"][0]["name"] == "Ümit"


@pytest.mark.parametrize(("content", "filename", "message"), [
    (b"", "empty.csv", "empty"),
    (b"phone\n+4930\xff\xfe1\n", "latin.csv", "not UTF-8"),
    (b"PK\x03\x04rest-of-a-zip", "book.xlsx", "CSV UTF-8"),
    (b"phone\n+49301\n", "book.xlsx", "CSV UTF-8"),
    (b"\x00\x01\x02binary", "blob.csv", "not a text file"),
])
def test_unreadable_files_are_refused(world: World, fresh: str, content: bytes, filename: str,
                                      message: str) -> None:
    response = upload(world, content, fresh, filename=filename)
    assert response.status_code == 400, response.text
    assert message in response.json()["message"]


def test_bad_options_are_refused(world: World, fresh: str) -> None:
    content = csv_bytes([["phone"], ["+4930600001"]])
    for fields, field in [({"mapping": {"Nope": "phone"}}, "mapping"),
                          ({"mapping": {"phone": "colour"}}, "mapping"),
                          ({"mapping": "not json"}, "mapping"),
                          ({"default_country": "XX"}, "default_country"),
                          ({"opt_status": "maybe"}, "opt_status"),
                          ({"tags": "a" * 41}, "tags")]:
        response = upload(world, content, fresh, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["detail"]["field"] == field


def test_file_size_cap(world: World, fresh: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "MAX_FILE_BYTES", 1000)
    response = upload(world, csv_bytes([["phone"]] + [["+4930700001"]] * 200), fresh)
    assert response.status_code == 413
    assert response.json()["detail"]["field"] == "file"


def test_one_import_at_a_time(world: World, fresh: str) -> None:
    tenant_id = world.tenant_of[fresh]
    world.run(world.db.write, lambda conn: conn.execute(
        "INSERT INTO contact_imports (id, tenant_id, status, created_at, updated_at) "
        "VALUES ('imp_busy', ?, 'running', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (tenant_id,)))
    response = upload(world, csv_bytes([["phone"], ["+4930800001"]]), fresh)
    assert response.status_code == 409 and response.json()["detail"]["job_id"] == "imp_busy"


def test_a_stale_job_is_reported_interrupted(world: World, fresh: str) -> None:
    job = run_import(world, csv_bytes([["phone"], ["+4930900001"]]), fresh)
    world.run(world.db.write, lambda conn: conn.execute(
        "UPDATE contact_imports SET status = 'running', finished_at = NULL, "
        "updated_at = '2000-01-01T00:00:00.000Z' WHERE id = ?", (job["id"],)))
    listed = world.api("GET", "/api/v1/contacts/imports", fresh).json()
    assert listed[0]["status"] == "failed" and "interrupted" in listed[0]["status_reason"]
    again = world.api("GET", f"/api/v1/contacts/imports/{job['id']}", fresh).json()
    assert again["status"] == "failed" and "interrupted" in again["status_reason"]
    assert upload(world, csv_bytes([["phone"], ["+4930900002"]]), fresh).status_code == 202


def test_other_tenants_import_is_not_found(world: World, fresh: str) -> None:
    job = run_import(world, csv_bytes([["phone"], ["+4930910001"]]), fresh)
    for path in (f"/api/v1/contacts/imports/{job['id']}",
                 f"/api/v1/contacts/imports/{job['id']}/errors.csv"):
        assert world.api("GET", path, "other").status_code == 404


def test_export_round_trip(world: World, fresh: str) -> None:
    people = [
        {"phone": "+49 30 9200001", "name": "=HYPERLINK(\"x\")", "tags": ["vip", "b"],
         "custom": {"company": "Acme, Inc.", "orders": 3, "note": "line1\nline2"}},
        {"phone": "+33 6 92 00 00 02", "name": "Zoë", "opt_status": "opted_in"},
        {"phone": "+1 555 920 0003", "name": "-minus", "custom": {"company": "@home"}},
    ]
    for body in people:
        assert world.api("POST", "/api/v1/contacts", fresh, json=body).status_code == 201
    last = contacts_of(world, fresh)["+15559200003"]
    world.api("POST", f"/api/v1/contacts/{last['id']}/opt-out", fresh)
    exported = world.api("GET", "/api/v1/contacts/export", fresh)
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    assert exported.content.startswith(b"\xef\xbb\xbf")
    table = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert len(table) == 3
    assert list(table[0]) == ["id", "phone", "name", "push_name", "tags", "opt_status",
                              "opt_changed_at", "opt_source", "created_at", "updated_at",
                              "custom.company", "custom.note", "custom.orders"]
    first = next(r for r in table if r["phone"] == "+49309200001")
    assert first["name"] == "'=HYPERLINK(\"x\")"  # a spreadsheet shows text, runs nothing
    vip = world.api("GET", "/api/v1/contacts/export", fresh, params={"tag": "vip"})
    assert len(list(csv.DictReader(io.StringIO(vip.text.lstrip("\ufeff"))))) == 1

    _, key = world.fresh_tenant()
    world.keys["copy"] = key
    job = run_import(world, exported.content, "copy", filename="export.csv")
    assert (job["imported"], job["skipped"]) == (3, 0), job
    original, copy = contacts_of(world, fresh), contacts_of(world, "copy")
    assert set(original) == set(copy)
    for phone, before in original.items():
        after = copy[phone]
        for field in ("name", "tags", "custom", "opt_status"):
            assert after[field] == (before[field] if field != "custom" else
                                    {k: str(v) for k, v in before[field].items()}), (phone, field)
