"""The dashboard's contact pages, parsed: list, filters, pages, form, consent, import, export."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from .conftest import World, csv_bytes


def add(world: World, **form: str) -> str:
    response = world.page("POST", "/contacts", htmx=False, data=form)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/contacts/con_")
    return location.rsplit("/", 1)[1]


def test_list_filters_and_pages(world: World, html: Any) -> None:
    for i in range(55):
        world.api("POST", "/api/v1/contacts", json={
            "phone": f"+49 30 77700{i:02d}", "name": f"Listed {i:02d}",
            "tags": ["even"] if i % 2 == 0 else ["odd"]})
    page = world.page("GET", "/contacts")
    assert page.status_code == 200
    doc = html(page.text)
    rows = doc.find("table", id="contacts").find("tbody").find_all("tr")
    assert len(rows) == 50
    assert rows[0].text.startswith("Listed 54") and "+49 30 7770054" in rows[0].text
    assert {o.attrs["value"] for o in doc.find("select", id="tag").find_all("option")} >= {
        "", "even", "odd"}
    second = world.page("GET", doc.find("a", id="next-page").attrs["href"])
    rows2 = html(second.text).find("table", id="contacts").find("tbody").find_all("tr")
    assert [r.text.split(" ")[1] for r in rows2] == [f"{i:02d}" for i in range(4, -1, -1)]

    odd = html(world.page("GET", "/contacts", params={"tag": "odd", "search": "Listed 1"}).text)
    names = [r.find("a").text for r in odd.find("table", id="contacts").find_all("tr")[1:]]
    assert names == [f"Listed {i}" for i in (19, 17, 15, 13, 11)]
    export_link = odd.find("a", id="export-link").attrs["href"]
    assert export_link == "/contacts/export?search=Listed+1&tag=odd"
    exported = world.page("GET", "/contacts/export", params={"tag": "odd", "search": "Listed 1"})
    assert exported.status_code == 200
    assert len(list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))) == 5


def test_create_edit_and_errors(world: World, html: Any) -> None:
    contact_id = add(world, phone="030 7771111", default_country="DE", name="Form Person",
                     tags="VIP, berlin", custom="company: Acme\norders: 3")
    created = world.api("GET", f"/api/v1/contacts/{contact_id}").json()
    assert created["phone"] == "+49307771111" and created["tags"] == ["vip", "berlin"]
    assert created["custom"] == {"company": "Acme", "orders": "3"}
    world.api("PATCH", f"/api/v1/contacts/{contact_id}", json={"custom": {"company": "Acme",
                                                                         "orders": 3}})

    form = html(world.page("GET", f"/contacts/{contact_id}").text).find("form", id="contact-form")
    assert form.find("input", id="phone").attrs["value"] == "+49307771111"
    assert form.find("textarea", id="custom").text == "company: Acme orders: 3"
    saved = world.page("POST", f"/contacts/{contact_id}", htmx=False, data={
        "phone": "+49307771111", "name": "Renamed", "tags": "vip",
        "custom": "company: Acme\norders: 3\ncity: Kiel"})
    assert saved.status_code == 303
    after = world.api("GET", f"/api/v1/contacts/{contact_id}").json()
    assert after["name"] == "Renamed" and after["tags"] == ["vip"]
    assert after["custom"] == {"company": "Acme", "orders": 3, "city": "Kiel"}  # 3 stays a number

    refused = world.page("POST", "/contacts", htmx=False, data={
        "phone": "+49307771111", "name": "Twin"})
    assert refused.status_code == 409
    doc = html(refused.text)
    assert contact_id in doc.find("p", id="contact-error").text
    assert doc.find("input", id="name").attrs["value"] == "Twin"  # what was typed stays
    bad = world.page("POST", f"/contacts/{contact_id}", htmx=False, data={
        "phone": "+49307771111", "custom": "no colon here"})
    assert bad.status_code == 400 and "name: value" in html(bad.text).find(
        "p", id="contact-error").text


def test_consent_switch_and_delete(world: World, html: Any) -> None:
    contact_id = add(world, phone="+49 30 7772222", name="Switch")
    card = html(world.page("GET", f"/contacts/{contact_id}").text).find("section", id="opt-card")
    assert card.find("button", id="opt-toggle").attrs["hx-post"].endswith("/opt-out")
    out = world.page("POST", f"/contacts/{contact_id}/opt-out")
    assert out.status_code == 200
    card = html(out.text).find("section", id="opt-card")
    assert "opted out" in card.find("dd", id="opt-status").text
    assert card.find("button", id="opt-toggle").attrs["hx-post"].endswith("/opt-in")
    assert world.api("GET", f"/api/v1/contacts/{contact_id}").json()["opt_source"] == "ui"
    back = html(world.page("POST", f"/contacts/{contact_id}/opt-in").text)
    assert "opted in" in back.find("dd", id="opt-status").text

    gone = world.page("DELETE", f"/contacts/{contact_id}")
    assert gone.status_code == 200 and gone.headers["hx-redirect"] == "/contacts"
    assert world.page("GET", f"/contacts/{contact_id}").status_code == 404


def test_import_preview_choose_fields_progress_and_report(world: World, html: Any) -> None:
    page = html(world.page("GET", "/contacts/import").text)
    form = page.find("form", id="import-form")
    assert form.attrs["hx-post"] == "/contacts/import/preview"
    assert form.attrs["hx-encoding"] == "multipart/form-data"

    content = csv_bytes([["Who", "Number", "Shoe size"],
                         ["Ana", "0301231234", "38"],
                         ["Bo", "+49 30 1231235", "44"],
                         ["Cy", "call me", "40"]])
    files = {"file": ("people.csv", content, "text/csv")}
    first = world.page("POST", "/contacts/import/preview", files=files,
                       data={"default_country": "DE"})
    assert first.status_code == 200, first.text
    preview = html(first.text)
    columns = preview.find("table", id="preview-columns").find("tbody").find_all("tr")
    chosen = [c.find("select").find_all("option", selected="") for c in columns]
    assert [o[0].attrs["value"] for o in chosen] == ["custom", "phone", "custom"]
    assert [c.find("input", name=f"custom_{i}").attrs["value"]
            for i, c in enumerate(columns)] == ["who", "", "shoe_size"]
    assert "Import 2 contacts" in preview.find("button", id="start-import").text
    assert [r.find_all("td")[0].text for r in
            preview.find("table", id="preview-errors").find_all("tr")[1:]] == ["4"]

    # The user makes "Who" the name and ignores the shoe size; the preview follows.
    choice = {"default_country": "DE", "column_0": "Who", "field_0": "name",
              "column_1": "Number", "field_1": "phone", "column_2": "Shoe size", "field_2": ""}
    second = html(world.page("POST", "/contacts/import/preview", files=files, data=choice).text)
    first_row = second.find("table", id="preview-rows").find_all("tr")[1]
    assert [td.text for td in first_row.find_all("td")][:3] == ["2", "+49301231234", "Ana"]
    assert world.fetchval("SELECT count(*) FROM contacts WHERE phone = '49301231234'") == 0

    started = world.page("POST", "/contacts/import", files=files, data=choice)
    assert started.status_code == 200, started.text
    job_url = started.headers["hx-redirect"]
    assert job_url.startswith("/contacts/imports/imp_")
    job_page = html(world.page("GET", job_url).text)
    assert job_page.find("progress", id="import-bar").attrs["max"] == "100"

    for _ in range(200):
        part = html(world.page("GET", job_url + "/progress", htmx=True).text)
        section = part.find("section", id="import-progress")
        if "hx-trigger" not in section.attrs:  # finished: it stops polling
            break
        assert section.attrs["hx-trigger"] == "every 1s"
        time.sleep(0.05)
    else:
        raise AssertionError("the import page never finished")
    assert section.find("progress").attrs["value"] == "100"
    counts = section.find("dl", id="import-counts").text
    assert "New contacts 2" in counts and "Skipped 1" in counts
    errors = section.find("table", id="import-errors").find_all("tr")[1:]
    assert [td.text for td in errors[0].find_all("td")] == [
        "4", "call me", "invalid phone: contains letters or symbols"]
    report = world.page("GET", job_url + "/errors.csv")
    assert report.status_code == 200 and "call me" in report.text
    ana = world.api("GET", "/api/v1/contacts", params={"search": "Ana"}).json()["items"]
    assert [(c["name"], c["custom"]) for c in ana] == [("Ana", {})]
    assert job_url.rsplit("/", 1)[1] in world.page("GET", "/contacts/import").text


def test_import_page_errors_are_shown(world: World, html: Any) -> None:
    refused = world.page("POST", "/contacts/import/preview",
                         files={"file": ("book.xlsx", b"PK\x03\x04zip", "application/zip")})
    assert refused.status_code == 400
    assert refused.headers["hx-retarget"] == "#toasts"
    assert "CSV UTF-8" in refused.text
    nothing = world.page("POST", "/contacts/import/preview", data={"default_country": "DE"})
    assert nothing.status_code == 400 and "Choose a CSV file" in nothing.text


def test_pages_need_a_signed_in_member(world: World) -> None:
    world.client.cookies.clear()
    response = world.client.get("/contacts", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
