"""The dashboard's template pages: the list, the editor with its live preview (as htmx asks for
it), problems shown inline with positions, saving, deleting, and who may see what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from whatsdex.templates import syntax

from .conftest import Env

ParseHtml = Callable[[str], Any]  # the root conftest's `parse_html`: text -> Element


def sample_form(body: str, **extra: str) -> dict[str, str]:
    return {"body": body, "sample_name": "Ana Lima", "sample_phone": "+1 555 123 4567",
            "sample_custom": "company=Acme\ncity: Porto\nnot a field", "seed": "fixed",
            **extra}


def test_list_shows_the_workspaces_templates(env: Env, parse_html: ParseHtml) -> None:
    mine = env.create(name="Listed here", body="{Hi|Hello} {{first_name}}", category="promo")
    theirs = env.create("other", name="Not for A")
    answer = env.page("member", "GET", "/templates")
    assert answer.status_code == 200
    doc = parse_html(answer.text)
    row = doc.find("tr", id=f"template-{mine['id']}")
    assert row.find("a").attrs["href"] == f"/templates/{mine['id']}"
    assert "Listed here" in row.text and "promo" in row.text and "first_name" in row.text
    assert row.find("td", class_="num").text == "2"
    assert not doc.find_all("tr", id=f"template-{theirs['id']}")
    assert doc.find("a", href="/templates/new")


def test_the_editor_wires_the_live_preview(env: Env, parse_html: ParseHtml) -> None:
    env.contact(env.a.id, name="Zoe Zimmer", custom={"loyalty_tier": "gold"})
    env.contact(env.a.id, name="adam Abbott")
    env.contact(env.b.id, name="Other Tenant Person")
    answer = env.page("member", "GET", "/templates/new")
    assert answer.status_code == 200
    doc = parse_html(answer.text)
    body = doc.find("textarea", id="template-body")
    assert body.attrs["hx-post"] == "/templates/preview"
    assert body.attrs["hx-trigger"] == "input changed delay:300ms"
    assert body.attrs["hx-target"] == "#preview"
    assert body.attrs["name"] == "body"
    inserts = {b.attrs["data-insert"] for b in doc.find_all("button") if "data-insert" in b.attrs}
    assert {"{{name}}", "{{first_name}}", "{{phone}}", "{{custom.loyalty_tier}}"} <= inserts
    # The contact picker: this workspace's contacts by name, case-insensitively.
    labels = [o.text for o in doc.find("select", id="preview-contact").find_all("option")]
    assert labels[0].startswith("Sample contact")
    named = [label for label in labels[1:] if label.startswith(("adam", "Zoe"))]
    assert named[0].startswith("adam Abbott") and named[1].startswith("Zoe Zimmer")
    assert not any("Other Tenant" in label for label in labels)
    # The first preview is already on the page; no inline script (CSP), the editor's own file.
    assert doc.find("div", id="preview").find("div", id="preview-text")
    scripts = doc.find_all("script")
    assert all(s.attrs.get("src") for s in scripts)
    assert "/static/js/templates.js" in {s.attrs["src"] for s in scripts}
    assert env.page("member", "GET", "/static/js/templates.js").status_code == 200


def test_the_contact_picker_holds_at_most_100(env: Env, parse_html: ParseHtml) -> None:
    for k in range(105):
        env.contact(env.a.id, name=f"Bulk {k:03d}")
    doc = parse_html(env.page("owner", "GET", "/templates/new").text)
    options = doc.find("select", id="preview-contact").find_all("option")
    assert len(options) == 101  # the sample contact and 100 contacts


def test_the_preview_partial_follows_the_body(env: Env, parse_html: ParseHtml) -> None:
    answer = env.page("member", "POST", "/templates/preview",
                      form=sample_form("Hi {{first_name}} of {{custom.company}} in "
                                       "{{custom.city}}, {{phone}} {{custom.zip}}"))
    assert answer.status_code == 200
    doc = parse_html(answer.text)
    assert doc.find("div", id="preview-text").text == \
        "Hi Ana of Acme in Porto, +15551234567"
    assert doc.find("dd", id="preview-missing").find("span", class_="badge").text == "custom.zip"
    seed = doc.find("input", id="preview-seed")
    assert seed.attrs["hx-swap-oob"] == "true" and seed.attrs["value"] == "fixed"


def test_the_seed_keeps_choices_still_until_shuffled(env: Env, parse_html: ParseHtml) -> None:
    body = "{a|b|c|d|e|f|g|h} {a|b|c|d|e|f|g|h}"

    def preview(**extra: str) -> tuple[str, str]:
        doc = parse_html(env.page("owner", "POST", "/templates/preview",
                                  form=sample_form(body, **extra)).text)
        return doc.find("div", id="preview-text").text, doc.find("input", id="preview-seed"
                                                                 ).attrs["value"]

    text, seed = preview()
    assert {preview()[0] for _ in range(5)} == {text}
    assert text == syntax.render(syntax.parse(body), {}, seed="fixed")
    shuffled = [preview(shuffle="1") for _ in range(8)]
    assert all(new_seed != seed for _, new_seed in shuffled)
    assert len({t for t, _ in shuffled}) > 1


def test_problems_show_inline_with_positions(env: Env, parse_html: ParseHtml) -> None:
    answer = env.page("owner", "POST", "/templates/preview",
                      form=sample_form("Hi {{Name}}\r\n{a|}"))
    assert answer.status_code == 200
    doc = parse_html(answer.text)
    items = doc.find("ul", id="problems").find_all("li")
    assert [li.attrs["data-code"] for li in items] == ["unknown_variable", "empty_option"]
    buttons = [li.find("button") for li in items]
    assert [b.attrs["data-position"] for b in buttons] == ["3", "15"]
    assert [b.text for b in buttons] == ["Line 1, column 4", "Line 2, column 4"]
    assert "did you mean" in items[0].text
    assert [c.text for c in items[0].find_all("code")] == ["Name", "{{name}}"]
    assert not doc.find_all("div", id="preview-text")


def test_preview_for_a_contact(env: Env, parse_html: ParseHtml) -> None:
    contact = env.contact(env.a.id, name="Rui Costa", custom={"company": "Tasca"})
    answer = env.page("member", "POST", "/templates/preview",
                      form=sample_form("{{first_name}} @ {{custom.company}}",
                                       contact_id=contact))
    assert parse_html(answer.text).find("div", id="preview-text").text == "Rui @ Tasca"
    theirs = env.contact(env.b.id, name="Not Yours")
    refused = env.page("member", "POST", "/templates/preview",
                       form=sample_form("{{name}}", contact_id=theirs))
    assert refused.status_code == 404
    assert "Rui" not in refused.text and "Not Yours" not in refused.text


def test_save_a_new_template(env: Env) -> None:
    name = env.unique("From the editor")
    answer = env.page("member", "POST", "/templates",
                      form={"name": name, "category": "ops", "body": "Hello\r\n{{name|you}}",
                            "media_id": "", "media_kind": "", "filename": "", "seed": "s"})
    assert answer.status_code == 200, answer.text
    target = answer.headers["HX-Redirect"]
    assert target.startswith("/templates/tpl_")
    template_id = target.split("/")[2].split("?")[0]
    saved = env.api("member", "GET", f"/api/v1/templates/{template_id}").json()
    assert saved["body"] == "Hello\n{{name|you}}"  # the textarea's CRLF stored as \n
    page = env.page("member", "GET", target)
    assert page.status_code == 200
    # The body comes back exactly, even with a leading newline (HTML drops the first one).
    env.api("member", "PATCH", f"/api/v1/templates/{template_id}", json={"body": "\nHi"})
    page = env.page("member", "GET", f"/templates/{template_id}")
    assert "hx-sync=\"this:replace\">\n\nHi</textarea>" in page.text


def test_saving_problems_shows_them_next_to_the_form(env: Env, parse_html: ParseHtml) -> None:
    answer = env.page("owner", "POST", "/templates",
                      form={"name": env.unique("Broken"), "body": "{{Name}} {x|}"})
    assert answer.status_code == 400
    assert answer.headers["HX-Retarget"] == "#save-result"
    doc = parse_html(answer.text)
    assert [li.attrs["data-code"] for li in doc.find("ul", id="save-problems").find_all("li")
            ] == ["unknown_variable", "empty_option"]
    assert "fix these 2 problems" in doc.find("p", class_="field-error").text
    existing = env.create(name="Taken name")
    taken = env.page("owner", "POST", "/templates", form={"name": "taken NAME", "body": "x"})
    assert taken.status_code == 409
    assert "already exists" in parse_html(taken.text).find("p", class_="field-error").text
    broken_update = env.page("owner", "POST", f"/templates/{existing['id']}",
                             form={"name": "Taken name", "body": "{oops"})
    assert broken_update.status_code == 400
    assert parse_html(broken_update.text).find("li").attrs["data-code"] == "unclosed_choice"
    assert env.api("owner", "GET", f"/api/v1/templates/{existing['id']}").json() == existing


def test_without_htmx_a_failed_save_shows_the_page_again(env: Env, parse_html: ParseHtml
                                                         ) -> None:
    answer = env.page("owner", "POST", "/templates", htmx=False,
                      form={"name": env.unique("Plain form"), "body": "Hi {{nam}}"})
    assert answer.status_code == 400
    doc = parse_html(answer.text)
    assert doc.find("textarea", id="template-body").text == "Hi {{nam}}"
    assert doc.find("textarea", id="template-body").attrs["aria-invalid"] == "true"
    assert doc.find("div", id="save-result").find("li").attrs["data-code"] == "unknown_variable"
    # The preview shows the same problems; ids stay unique on the page.
    assert doc.find("ul", id="problems").find("li").attrs["data-code"] == "unknown_variable"
    ids = [el.attrs["id"] for el in doc.iter() if "id" in el.attrs]
    assert len(ids) == len(set(ids))
    ok = env.page("owner", "POST", "/templates", htmx=False,
                  form={"name": env.unique("Plain form"), "body": "Hi {{name}}"})
    assert ok.status_code == 303 and ok.headers["location"].startswith("/templates/tpl_")


def test_update_and_attach_from_the_editor(env: Env, parse_html: ParseHtml) -> None:
    template = env.create(name=env.unique("Editable"))
    photo = env.media(env.a.id, mimetype="image/jpeg", filename="cake.jpg")
    doc = parse_html(env.page("owner", "GET", f"/templates/{template['id']}").text)
    assert photo in {o.attrs["value"] for o in doc.find("select", id="template-media")
                     .find_all("option")}
    answer = env.page("owner", "POST", f"/templates/{template['id']}", form={
        "name": template["name"], "category": "", "body": "Fresh {{first_name}}",
        "media_id": photo, "media_kind": "", "filename": ""})
    assert answer.status_code == 200
    assert parse_html(answer.text).find("p", id="saved-notice")
    saved = env.api("owner", "GET", f"/api/v1/templates/{template['id']}").json()
    assert saved["body"] == "Fresh {{first_name}}"
    assert saved["media"] == {"id": photo, "kind": "image", "filename": "cake.jpg"}
    doc = parse_html(env.page("owner", "GET", f"/templates/{template['id']}").text)
    chosen = [o for o in doc.find("select", id="template-media").find_all("option")
              if "selected" in o.attrs]
    assert [o.attrs["value"] for o in chosen] == [photo]


def test_delete_from_the_editor(env: Env) -> None:
    template = env.create(name=env.unique("Doomed"))
    answer = env.page("member", "DELETE", f"/templates/{template['id']}")
    assert answer.status_code == 200 and answer.headers["HX-Redirect"] == "/templates"
    assert env.api("member", "GET", f"/api/v1/templates/{template['id']}").status_code == 404


@pytest.mark.parametrize(("who", "status"), [("other", 404), ("operator", 403)])
def test_other_identities_cannot_open_an_editor(env: Env, who: str, status: int) -> None:
    template = env.create()
    answer = env.page(who, "GET", f"/templates/{template['id']}")
    assert answer.status_code == status
    assert template["name"] not in answer.text
    changed = env.page(who, "POST", f"/templates/{template['id']}",
                       form={"name": "stolen", "body": "x"})
    assert changed.status_code == status
    assert env.api("owner", "GET", f"/api/v1/templates/{template['id']}").json() == template


def test_signed_out_visitors_go_to_login(env: Env) -> None:
    answer = env.page(None, "GET", "/templates")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/templates"
    assert env.page(None, "POST", "/templates/preview", form={"body": "x"}).status_code == 401


def test_saving_the_form_keeps_an_older_attachment(env: Env, parse_html: ParseHtml) -> None:
    old_file = env.media(env.a.id, mimetype="application/pdf", filename="old-menu.pdf")
    template = env.create(name=env.unique("Old file"), media_id=old_file)
    for k in range(101):  # the picker lists the 100 newest files
        env.media(env.a.id, filename=f"new-{k}.jpg")
    doc = parse_html(env.page("owner", "GET", f"/templates/{template['id']}").text)
    chosen = [o.attrs["value"] for o in doc.find("select", id="template-media")
              .find_all("option") if "selected" in o.attrs]
    assert chosen == [old_file]
    form = {"name": template["name"], "body": "Still with the menu", "media_id": old_file,
            "media_kind": "document", "filename": ""}
    assert env.page("owner", "POST", f"/templates/{template['id']}", form=form
                    ).status_code == 200
    saved = env.api("owner", "GET", f"/api/v1/templates/{template['id']}").json()
    assert saved["media"] == {"id": old_file, "kind": "document", "filename": "old-menu.pdf"}


def test_a_kind_without_a_file_is_ignored_by_the_editor(env: Env) -> None:
    answer = env.page("owner", "POST", "/templates", form={
        "name": env.unique("No file"), "body": "Text only", "media_id": "",
        "media_kind": "video", "filename": "ignored.mp4"})
    assert answer.status_code == 200, answer.text
    template_id = answer.headers["HX-Redirect"].split("/")[2].split("?")[0]
    assert env.api("owner", "GET", f"/api/v1/templates/{template_id}").json()["media"] is None
