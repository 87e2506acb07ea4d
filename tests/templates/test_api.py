"""`/api/v1/templates`: save, list, change, delete, preview; problems answered with positions,
names unique per workspace, attachments checked, and nothing of one tenant visible to another."""

from __future__ import annotations

from typing import Any

import pytest

from whatsdex.templates import syntax

from .conftest import Env

URL = "/api/v1/templates"


def test_create_read_list_update_delete(env: Env) -> None:
    created = env.api("member", "POST", URL, json={
        "name": "  Spring   offer ", "category": "marketing",
        "body": "{Hi|Hello} {{first_name|there}}, {{custom.company}} has news"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "Spring offer"  # whitespace tidied like every other name
    assert body["category"] == "marketing"
    assert body["variables"] == ["custom.company", "first_name"]
    assert body["variants"] == 2
    assert body["media"] is None
    assert body["id"].startswith("tpl_")
    template_id = body["id"]

    read = env.api("owner", "GET", f"{URL}/{template_id}")
    assert read.status_code == 200 and read.json() == body

    env.create(name="aaa first by name", category="Marketing")
    listed = env.api("member", "GET", URL).json()
    names = [t["name"] for t in listed]
    assert names == sorted(names, key=str.lower)
    assert {"Spring offer", "aaa first by name"} <= set(names)
    only = env.api("member", "GET", URL, query={"category": "MARKETING"}).json()
    assert {t["name"] for t in only} == {"Spring offer", "aaa first by name"}

    changed = env.api("member", "PATCH", f"{URL}/{template_id}",
                      json={"body": "Bye {{name}}", "category": ""})
    assert changed.status_code == 200, changed.text
    assert changed.json()["body"] == "Bye {{name}}"
    assert changed.json()["name"] == "Spring offer"  # not sent, not changed
    assert changed.json()["category"] == ""
    assert changed.json()["updated_at"] > body["updated_at"]

    assert env.api("member", "DELETE", f"{URL}/{template_id}").status_code == 204
    assert env.api("member", "GET", f"{URL}/{template_id}").status_code == 404
    assert env.api("member", "DELETE", f"{URL}/{template_id}").status_code == 404

    actions = [row["action"] for row in env.fetchall(
        "SELECT action FROM audit_log WHERE object_id = ? ORDER BY id", (template_id,))]
    assert actions == ["template.created", "template.updated", "template.deleted"]


def test_problems_answer_400_with_every_position(env: Env) -> None:
    before = len(env.api("owner", "GET", URL).json())
    answer = env.api("owner", "POST", URL, json={
        "name": env.unique("Broken"), "body": "Hi {{Name}},\r\n{great|} offer }"})
    assert answer.status_code == 400
    error = answer.json()
    assert error["status"] == 400
    assert "3 problems" in error["message"]
    # CRLF from a browser counts as one character: positions match what the user sees.
    assert [(d["position"], d["line"], d["column"], d["code"]) for d in error["detail"]] == [
        (3, 1, 4, "unknown_variable"),
        (20, 2, 8, "empty_option"),
        (28, 2, 16, "unmatched_close"),
    ]
    assert all(d["problem"] for d in error["detail"])
    assert len(env.api("owner", "GET", URL).json()) == before  # nothing saved


def test_length_limits(env: Env) -> None:
    ok = env.api("owner", "POST", URL, json={"name": env.unique("Long"),
                                             "body": "x" * syntax.MAX_LENGTH})
    assert ok.status_code == 201
    too_long = env.api("owner", "POST", URL, json={"name": env.unique("Long"),
                                                   "body": "x" * (syntax.MAX_LENGTH + 1)})
    assert too_long.status_code == 400
    assert too_long.json()["detail"] == [{
        "position": 4096, "line": 1, "column": 4097, "code": "too_long",
        "problem": "The template has 4,097 characters: WhatsApp allows at most 4,096 in a message",
    }]
    huge = env.api("owner", "POST", URL, json={"name": env.unique("Huge"), "body": "x" * 20_000})
    assert huge.status_code == 400


def test_update_with_problems_changes_nothing(env: Env) -> None:
    template = env.create(body="Hello {{name}}")
    answer = env.api("owner", "PATCH", f"{URL}/{template['id']}",
                     json={"body": "Hello {{nmae}}", "name": "Renamed"})
    assert answer.status_code == 400
    assert answer.json()["detail"][0]["code"] == "unknown_variable"
    assert "did you mean `{{name}}`" in answer.json()["detail"][0]["problem"]
    assert env.api("owner", "GET", f"{URL}/{template['id']}").json() == template


@pytest.mark.parametrize(("payload", "field"), [
    ({"name": "   ", "body": "x"}, "name"),
    ({"name": "ok", "body": "x", "category": "c" * 51}, None),  # schema limit
    ({"name": "ok", "body": "x", "surprise": 1}, None),
    ({"name": "ok"}, None),
])
def test_other_invalid_input_is_400(env: Env, payload: dict[str, Any], field: str | None) -> None:
    answer = env.api("owner", "POST", URL, json=payload)
    assert answer.status_code == 400, answer.text
    if field:
        assert answer.json()["detail"] == {"field": field}


def test_an_empty_message_needs_an_attachment(env: Env) -> None:
    answer = env.api("owner", "POST", URL, json={"name": env.unique("Empty"), "body": "  "})
    assert answer.status_code == 400
    assert answer.json()["detail"][0]["code"] == "empty_body"
    media_id = env.media(env.a.id)
    with_file = env.api("owner", "POST", URL, json={"name": env.unique("Photo only"),
                                                    "body": "", "media_id": media_id})
    assert with_file.status_code == 201, with_file.text
    detached = env.api("owner", "PATCH", f"{URL}/{with_file.json()['id']}",
                       json={"media_id": None})
    assert detached.status_code == 400
    assert detached.json()["detail"][0]["code"] == "empty_body"


def test_names_are_unique_per_workspace_ignoring_case(env: Env) -> None:
    env.create(name="Welcome back")
    again = env.api("member", "POST", URL, json={"name": "WELCOME BACK", "body": "x"})
    assert again.status_code == 409
    assert again.json()["detail"] == {"field": "name"}
    # Another workspace may use the same name.
    assert env.api("other", "POST", URL, json={"name": "Welcome back", "body": "x"}
                   ).status_code == 201
    second = env.create(name="Second")
    renamed = env.api("member", "PATCH", f"{URL}/{second['id']}", json={"name": "welcome Back"})
    assert renamed.status_code == 409
    # Renaming to itself (another case) is fine.
    same = env.api("member", "PATCH", f"{URL}/{second['id']}", json={"name": "SECOND"})
    assert same.status_code == 200 and same.json()["name"] == "SECOND"


def test_nothing_to_change_is_400(env: Env) -> None:
    template = env.create()
    assert env.api("owner", "PATCH", f"{URL}/{template['id']}", json={}).status_code == 400


# -- Who may do what -------------------------------------------------------------------------------

def test_another_tenant_gets_404_for_everything(env: Env) -> None:
    template = env.create()
    path = f"{URL}/{template['id']}"
    assert env.api("other", "GET", path).status_code == 404
    assert env.api("other", "PATCH", path, json={"name": "mine"}).status_code == 404
    assert env.api("other", "DELETE", path).status_code == 404
    assert env.api("other", "POST", f"{path}/preview", json={}).status_code == 404
    assert template["id"] not in {t["id"] for t in env.api("other", "GET", URL).json()}
    assert env.api("owner", "GET", path).json() == template  # untouched


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("operator", 403)])
def test_only_a_workspace_identity_gets_in(env: Env, who: str | None, status: int) -> None:
    template = env.create()
    for method, path, payload in (("GET", URL, None), ("POST", URL, {"name": "x", "body": "y"}),
                                  ("GET", f"{URL}/{template['id']}", None),
                                  ("POST", f"{URL}/preview", {"body": "x"})):
        assert env.api(who, method, path, json=payload).status_code == status, (method, path)


# -- Preview ---------------------------------------------------------------------------------------

def test_preview_against_a_contact(env: Env) -> None:
    contact = env.contact(env.a.id, name="Ana Lima", phone="15551230001",
                          custom={"company": "Acme", "city": ""})
    template = env.create(body="{Hi|Hello} {{first_name|there}} from {{custom.company}} "
                               "({{phone}}) in {{custom.city}}{{custom.zip|}}")
    answer = env.api("member", "POST", f"{URL}/{template['id']}/preview",
                     json={"contact_id": contact, "seed": "rcp_1"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    expected = syntax.render(syntax.parse(template["body"]),
                             syntax.contact_fields("Ana Lima", "15551230001",
                                                   {"company": "Acme", "city": ""}),
                             seed="rcp_1")
    assert result["text"] == expected
    assert result["text"].endswith("Ana from Acme (+15551230001) in ")
    assert result["missing"] == ["custom.city"]  # custom.zip has a (blank) default
    assert result["variables"] == ["custom.city", "custom.company", "custom.zip", "first_name",
                                   "phone"]
    assert result["variants"] == 2
    assert result["length"] == len(result["text"])
    # Same seed, same text; the sample fields override the contact's.
    again = env.api("member", "POST", f"{URL}/{template['id']}/preview",
                    json={"contact_id": contact, "seed": "rcp_1"}).json()
    assert again == result
    overridden = env.api("member", "POST", f"{URL}/{template['id']}/preview", json={
        "contact_id": contact, "seed": "rcp_1",
        "fields": {"name": "Bea Costa", "custom": {"city": "Porto"}}}).json()
    assert "Bea from Acme (+15551230001) in Porto" in overridden["text"]
    assert overridden["missing"] == []


def test_preview_uses_the_whatsapp_name_when_no_name_is_saved(env: Env) -> None:
    contact = env.contact(env.a.id, push_name="Zé Carlos")
    answer = env.api("owner", "POST", f"{URL}/preview",
                     json={"body": "Olá {{first_name|amigo}}", "contact_id": contact})
    assert answer.json()["text"] == "Olá Zé"


def test_preview_of_another_tenants_contact_is_404(env: Env) -> None:
    theirs = env.contact(env.b.id, name="Zed")
    template = env.create()
    for path, payload in ((f"{URL}/{template['id']}/preview", {"contact_id": theirs}),
                          (f"{URL}/preview", {"body": "x", "contact_id": theirs})):
        answer = env.api("owner", "POST", path, json=payload)
        assert answer.status_code == 404
        assert answer.json()["message"] == "Contact not found"


def test_preview_of_an_unsaved_body(env: Env) -> None:
    answer = env.api("owner", "POST", f"{URL}/preview", json={
        "body": "Hi {{name|you}} at {{custom.company}}",
        "fields": {"custom.company": "Acme"}})
    assert answer.status_code == 200
    assert answer.json() == {"text": "Hi you at Acme", "variables": ["custom.company", "name"],
                             "missing": [], "variants": 1, "length": 14}
    broken = env.api("owner", "POST", f"{URL}/preview", json={"body": "Hi {a|b"})
    assert broken.status_code == 400
    assert broken.json()["detail"][0] == {
        "position": 3, "line": 1, "column": 4, "code": "unclosed_choice",
        "problem": broken.json()["detail"][0]["problem"]}
    unseeded = {env.api("owner", "POST", f"{URL}/preview", json={"body": "{a|b|c|d}"}
                        ).json()["text"] for _ in range(40)}
    assert len(unseeded) > 1


# -- Attachments -----------------------------------------------------------------------------------

def test_attach_an_uploaded_file(env: Env) -> None:
    photo = env.media(env.a.id, mimetype="image/png", filename="promo.png")
    created = env.create(media_id=photo)
    assert created["media"] == {"id": photo, "kind": "image", "filename": "promo.png"}
    as_document = env.api("owner", "PATCH", f"{URL}/{created['id']}",
                          json={"media_kind": "document", "filename": "../../Spring promo.png"})
    assert as_document.status_code == 200, as_document.text
    assert as_document.json()["media"] == {"id": photo, "kind": "document",
                                           "filename": "Spring promo.png"}
    # Changing only the text keeps the attachment as it was.
    kept = env.api("owner", "PATCH", f"{URL}/{created['id']}", json={"body": "New text"}).json()
    assert kept["media"] == as_document.json()["media"]
    # A new file starts from its own kind and name.
    pdf = env.media(env.a.id, mimetype="application/pdf", filename="menu.pdf")
    swapped = env.api("owner", "PATCH", f"{URL}/{created['id']}", json={"media_id": pdf}).json()
    assert swapped["media"] == {"id": pdf, "kind": "document", "filename": "menu.pdf"}
    detached = env.api("owner", "PATCH", f"{URL}/{created['id']}", json={"media_id": None})
    assert detached.json()["media"] is None
    row = env.fetchall("SELECT media_id, media_kind, filename FROM message_templates "
                       "WHERE id = ?", (created["id"],))[0]
    assert row == {"media_id": None, "media_kind": "", "filename": ""}


@pytest.mark.parametrize(("setup", "field"), [
    ("other_tenant", "media_id"),
    ("unknown", "media_id"),
    ("inbound", "media_id"),
    ("wrong_kind", "media_kind"),
    ("kind_without_file", "media_id"),
])
def test_attachments_are_checked(env: Env, setup: str, field: str) -> None:
    payload: dict[str, Any] = {"name": env.unique("Attach"), "body": "x"}
    if setup == "other_tenant":
        payload["media_id"] = env.media(env.b.id)
    elif setup == "unknown":
        payload["media_id"] = "med_nope"
    elif setup == "inbound":
        payload["media_id"] = env.media(env.a.id, origin="inbound")
    elif setup == "wrong_kind":
        payload.update(media_id=env.media(env.a.id, mimetype="image/jpeg"), media_kind="video")
    else:
        payload["media_kind"] = "image"
    answer = env.api("owner", "POST", URL, json=payload)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"] == {"field": field}


def test_a_deleted_file_leaves_a_text_template(env: Env) -> None:
    clip = env.media(env.a.id, mimetype="video/mp4", filename="clip.mp4")
    template = env.create(media_id=clip)
    assert template["media"]["kind"] == "video"
    env.sql("DELETE FROM media WHERE id = ?", (clip,))
    after = env.api("owner", "GET", f"{URL}/{template['id']}").json()
    assert after["media"] is None
    row = env.fetchall("SELECT media_kind, filename FROM message_templates WHERE id = ?",
                       (template["id"],))[0]
    assert row == {"media_kind": "", "filename": ""}


def test_the_api_is_documented(env: Env) -> None:
    schema = env.client.get("/api/openapi.json").json()
    paths = schema["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/templates"])
    assert {"get", "patch", "delete"} <= set(paths["/api/v1/templates/{template_id}"])
    assert "post" in paths["/api/v1/templates/{template_id}/preview"]
    assert "post" in paths["/api/v1/templates/preview"]
    create = paths["/api/v1/templates"]["post"]
    assert "400" in create["responses"] and "409" in create["responses"]
