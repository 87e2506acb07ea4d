"""The numbers pages, parsed: live markup (SSE swaps, fallback polls), owner-only actions, the
linking panel, client links shown once, sandbox helpers, and who may see what."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Env


def csp_safe(doc: Any) -> None:
    for el in doc.iter():
        assert "style" not in el.attrs, f"style attribute on <{el.tag}>"
        assert not [a for a in el.attrs if a.startswith(("on", "hx-on"))], f"handler on <{el.tag}>"
        assert not (el.tag == "script" and "src" not in el.attrs), "inline script"
    ids = {el.attrs["id"] for el in doc.iter() if "id" in el.attrs}
    for label in doc.find_all("label"):
        if "for" in label.attrs:
            assert label.attrs["for"] in ids, label.attrs["for"]
    for el in doc.iter():
        if "hx-delete" in el.attrs:
            assert el.attrs.get("hx-confirm"), f"{el.attrs['hx-delete']} deletes without asking"


def test_list_page_rows_update_live_and_poll(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Listed")
    page = env.page("owner", "GET", "/numbers")
    assert page.status_code == 200
    doc = parse_html(page.text)
    csp_safe(doc)
    assert doc.find("h1").text == "Numbers"
    assert doc.find("section", id="numbers-live").attrs["sse-connect"] == "/ui/events"
    body = doc.find("tbody", id="number-rows")
    assert body.attrs["hx-get"] == "/numbers/rows"
    assert body.attrs["hx-trigger"] == (
        "sse:number-added, htmx:sseOpen from:#numbers-live, every 10s")
    row = body.find("tr", id=f"number-{session_id}")
    assert row.attrs["sse-swap"] == f"session-{session_id},deleted-{session_id}"
    assert "Listed" in row.text
    assert doc.find("a", href="/numbers").attrs.get("aria-current") == "page"
    form = doc.find("form", id="add-number")
    assert form.attrs["hx-post"] == "/numbers"
    assert form.find("input", name="_csrf_token").attrs["value"]

    rows = env.page("owner", "GET", "/numbers/rows", htmx=True)
    assert f'id="number-{session_id}"' in rows.text
    assert parse_html(rows.text).find("tr", id=f"number-{session_id}")


def test_members_see_numbers_but_no_owner_controls(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Seen by member")
    env.wait_status(session_id, "pairing")
    doc = parse_html(env.page("member", "GET", "/numbers").text)
    assert doc.find("tr", id=f"number-{session_id}")
    assert not doc.find_all("form", id="add-number")
    number = parse_html(env.page("member", "GET", f"/numbers/{session_id}").text)
    assert not number.find_all(id="number-actions")
    assert not number.find_all(id="client-links") and not number.find_all(id="sandbox")
    assert number.find("div", id="qr-box").find("svg") is not None
    for method, path, form in (("POST", "/numbers", {"name": "No"}),
                               ("POST", f"/numbers/{session_id}/stop", None),
                               ("DELETE", f"/numbers/{session_id}", None),
                               ("POST", f"/numbers/{session_id}/client-links", {"ttl_hours": "1"}),
                               ("POST", f"/numbers/{session_id}/sandbox/scan", {"phone": "1"})):
        refused = env.page("member", method, path, form=form)
        assert refused.status_code == 403, (method, path)
        assert refused.headers["hx-retarget"] == "#toasts"
    assert env.session(session_id)["status"] == "pairing"


def test_operator_and_other_tenants_are_kept_out(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Private")
    operator = env.page("operator", "GET", "/numbers")
    assert operator.status_code == 403
    assert "tenant" in parse_html(operator.text).find("p", class_="lead").text
    other = env.page("other", "GET", f"/numbers/{session_id}")
    assert other.status_code == 404 and "Private" not in other.text
    assert session_id not in env.page("other", "GET", "/numbers").text
    anonymous = env.page(None, "GET", f"/numbers/{session_id}")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == f"/login?next=/numbers/{session_id}"


def test_add_a_number_and_link_it_from_its_page(env: Env, parse_html: Any) -> None:
    created = env.page("owner", "POST", "/numbers", form={"name": "Reception"})
    assert created.status_code == 200
    target = created.headers["hx-redirect"]
    session_id = target.rsplit("/", 1)[1]
    env.wait_status(session_id, "pairing")

    doc = parse_html(env.page("owner", "GET", target).text)
    csp_safe(doc)
    assert doc.find("h1").text == "Reception"
    assert doc.find("div", id="number-live").attrs["sse-connect"] == "/ui/events"
    panel = doc.find("div", id="number-panel")
    assert panel.attrs["hx-trigger"] == (
        f"sse:session-{session_id}, sse:deleted-{session_id}, "
        "htmx:sseOpen from:#number-live, every 10s")
    assert doc.find("span", id="number-status").attrs["data-status"] == "pairing"
    box = doc.find("div", id="qr-box")
    assert box.attrs["hx-trigger"] == f"sse:qr-{session_id}, every 4s"
    assert box.find("svg") is not None
    assert "Link with phone number instead" not in doc.text  # shown with a code only
    assert doc.find("script", src="/static/js/numbers.js")
    assert doc.find(id="sandbox").find("form", id="sandbox-scan")
    assert "sandbox" in doc.find(id="sandbox").text.lower()

    # Polls find nothing new until something changes.
    hx = panel.attrs["hx-get"]
    assert env.page("owner", "GET", hx, htmx=True).status_code == 204
    assert env.page("owner", "GET", box.attrs["hx-get"], htmx=True).status_code in (200, 204)

    # The pairing code alternative, with its steps.
    code = env.page("owner", "POST", f"/numbers/{session_id}/pairing-code",
                    form={"phone": "+15554440001"})
    assert code.status_code == 200
    result = parse_html(code.text)
    assert len(result.find("code", id="pairing-code").text) == 9
    assert "Link with phone number instead" in result.text and "Linked devices" in result.text
    wrong = env.page("owner", "POST", f"/numbers/{session_id}/pairing-code", form={"phone": "1"})
    assert wrong.status_code == 400 and wrong.headers["hx-retarget"] == "#pairing-result"

    # The simulated phone scans; the panel's next poll brings the new state.
    scanned = env.page("owner", "POST", f"/numbers/{session_id}/sandbox/scan",
                       form={"phone": "+15554440001"})
    assert scanned.status_code == 200
    assert "Sandbox: scanned" in parse_html(scanned.text).find(class_="toast").text
    env.wait_status(session_id, "connected")
    fresh = env.page("owner", "GET", hx, htmx=True)
    assert fresh.status_code == 200
    live = parse_html(fresh.text)
    assert live.find("span", id="number-status").attrs["data-status"] == "connected"
    facts = live.find("dl", id="identity").text
    assert "+15554440001" in facts and "15554440001@s.whatsapp.net" in facts
    assert not live.find_all(id="qr-box")
    history = live.find("table", id="history").text
    assert "connected" in history and "waiting for a scan" in history

    inbound = env.page("owner", "POST", f"/numbers/{session_id}/sandbox/inbound",
                       form={"from": "+15557654321", "text": "Hello"})
    assert inbound.status_code == 200
    assert "sent a message" in inbound.text


def test_actions_answer_with_the_new_panel(env: Env, parse_html: Any) -> None:
    session_id = env.linked(name="Actions", phone="+15554440002")
    stopped = env.page("owner", "POST", f"/numbers/{session_id}/stop")
    assert stopped.status_code == 200
    panel = parse_html(stopped.text)
    assert panel.find("span", id="number-status").attrs["data-status"] == "stopped"
    assert "Number stopped" in panel.find(class_="toast").text
    start = panel.find("button", hx_post=f"/numbers/{session_id}/start")
    assert start.text == "Start"
    started = env.page("owner", "POST", f"/numbers/{session_id}/start")
    assert started.status_code == 200
    env.wait_status(session_id, "connected")
    logout_button = parse_html(env.page("owner", "GET", f"/numbers/{session_id}").text).find(
        "button", hx_post=f"/numbers/{session_id}/logout")
    assert "new scan" in logout_button.attrs["hx-confirm"]
    logged_out = parse_html(env.page("owner", "POST", f"/numbers/{session_id}/logout").text)
    assert logged_out.find("span", id="number-status").attrs["data-status"] == "logged_out"
    assert logged_out.find("button", hx_post=f"/numbers/{session_id}/start").text == "Link again"
    deleted = env.page("owner", "DELETE", f"/numbers/{session_id}")
    assert deleted.headers["hx-redirect"] == "/numbers"
    assert env.page("owner", "GET", f"/numbers/{session_id}").status_code == 404
    # A page still open on the deleted number goes back to the list at its next refresh.
    for part in ("panel", "qr"):
        stale = env.page("owner", "GET", f"/numbers/{session_id}/{part}", htmx=True)
        assert stale.status_code == 200 and stale.headers["hx-redirect"] == "/numbers"


def test_client_link_is_shown_once_with_a_copy_button(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="For the client")
    doc = parse_html(env.page("owner", "GET", f"/numbers/{session_id}").text)
    form = doc.find("form", id="client-link-form")
    assert form.attrs["hx-post"] == f"/numbers/{session_id}/client-links"
    assert form.attrs["hx-target"] == "#client-links"

    created = env.page("owner", "POST", f"/numbers/{session_id}/client-links",
                       form={"ttl_hours": "72"})
    assert created.status_code == 200
    card = parse_html(created.text)
    url = card.find("code", id="client-link-url").text
    assert url.startswith("https://wa.agency.example/link/")
    assert card.find("button", data_copy="#client-link-url")
    rows = card.find("table", id="client-link-list").find_all("tr")
    assert len(rows) == 2  # header and the new link
    token = url.rsplit("/", 1)[1]
    assert env.anonymous("GET", f"/link/{token}").status_code == 200

    # Shown once: the page and the list afterwards never carry the token again.
    later = env.page("owner", "GET", f"/numbers/{session_id}")
    assert token not in later.text
    revoke = parse_html(later.text).find("table", id="client-link-list").find("button")
    assert revoke.attrs["hx-confirm"]
    revoked = env.page("owner", "DELETE", revoke.attrs["hx-delete"])
    assert revoked.status_code == 200
    assert not parse_html(revoked.text).find_all("table", id="client-link-list")
    assert env.anonymous("GET", f"/link/{token}").status_code == 404

    odd = env.page("owner", "POST", f"/numbers/{session_id}/client-links",
                   form={"ttl_hours": "5"})
    assert odd.status_code == 400


@pytest.mark.parametrize("path", ["/numbers", "/numbers/{id}"])
def test_pages_need_the_csrf_token_for_changes(env: Env, path: str) -> None:
    session_id = env.create(name="CSRF")
    env.client.cookies.clear()
    forged = env.client.post(
        f"/numbers/{session_id}/stop" if "{id}" in path else "/numbers",
        data={"name": "Forged"},
        headers={"Cookie": f"__Host-whatsdex={env.cookies['owner']}", "HX-Request": "true"},
        follow_redirects=False)
    assert forged.status_code == 403
    assert env.session(session_id)["desired"] == "running"
