"""Client links: a page without login that shows one number's QR code, pairing code and status,
and grants nothing else."""

from __future__ import annotations

import time
from typing import Any

import pytest

from whatsdex.web.api import events
from whatsdex.web.ui import client_link

from .conftest import PUBLIC_URL, Env


def new_link(env: Env, session_id: str, ttl_hours: int = 24) -> tuple[str, str]:
    """(link id, token) of a new client link for one of tenant A's numbers."""
    created = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/client-links",
                      json={"ttl_hours": ttl_hours})
    assert created.status_code == 201, created.text
    body = created.json()
    prefix = f"{PUBLIC_URL}/link/"
    assert body["url"].startswith(prefix)
    return body["id"], body["url"][len(prefix):]


@pytest.fixture(scope="module")
def pairing(env: Env) -> tuple[str, str, str]:
    """A number waiting for a scan, with a client link: (session id, link id, token)."""
    session_id = env.create(name="Client's <phone>")
    link_id, token = new_link(env, session_id)
    return session_id, link_id, token


def test_link_page_shows_the_qr_and_nothing_else(env: Env, pairing: tuple[str, str, str],
                                                 parse_html: Any) -> None:
    session_id, _, token = pairing
    env.wait_status(session_id, "pairing")
    page = env.anonymous("GET", f"/link/{token}")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers, "the client page sets no cookie at all"
    doc = parse_html(page.text)
    assert "Client's <phone>" in doc.find("h1").text  # escaped in the page, parsed back here
    assert doc.find("div", id="link-live").attrs["sse-connect"] == f"/link/{token}/events"
    panel = doc.find("div", id="link-panel")
    assert panel.attrs["hx-trigger"] == "sse:status, htmx:sseOpen from:#link-live, every 10s"
    assert panel.attrs["hx-get"].startswith(f"/link/{token}/panel?seen=")
    box = doc.find("div", id="qr-box")
    assert box.attrs["hx-trigger"] == "sse:qr, every 4s"
    assert box.find("svg") is not None
    assert any("data-countdown" in el.attrs for el in box.iter()), "no expiry countdown"
    form = doc.find("form", id="pairing-form")
    assert form.attrs["hx-post"] == f"/link/{token}/pairing-code"
    assert not form.find_all("input", name="_csrf_token")
    # Nothing of the workspace: no navigation, no other number, no tenant name.
    assert not doc.find_all("a", href="/numbers")
    assert env.a.name not in page.text
    assert "Sign out" not in page.text
    for el in doc.iter():
        assert "style" not in el.attrs and not (el.tag == "script" and "src" not in el.attrs)


def test_link_partials_refresh_and_say_when_nothing_changed(
        env: Env, pairing: tuple[str, str, str], parse_html: Any) -> None:
    session_id, _, token = pairing
    env.wait_status(session_id, "pairing")
    hx = {"HX-Request": "true"}
    panel = env.anonymous("GET", f"/link/{token}/panel", headers=hx)
    assert panel.status_code == 200
    seen = parse_html(panel.text).find("div", id="link-panel").attrs["hx-get"]
    assert env.anonymous("GET", seen, headers=hx).status_code == 204

    qr = env.anonymous("GET", f"/link/{token}/qr", headers=hx)
    assert qr.status_code == 200
    box = parse_html(qr.text).find("div", id="qr-box")
    assert box.find("svg") is not None
    again = env.anonymous("GET", box.attrs["hx-get"], headers=hx)
    assert again.status_code in (200, 204)  # 200 only if the code rotated meanwhile


def test_pairing_code_on_the_link_page_is_rate_limited(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Code by link")
    _, token = new_link(env, session_id)
    env.wait_status(session_id, "pairing")
    hx = {"HX-Request": "true"}
    bad = env.anonymous("POST", f"/link/{token}/pairing-code", form={"phone": "12"}, headers=hx)
    assert bad.status_code == 400
    assert bad.headers["hx-retarget"] == "#pairing-result"
    assert "international format" in parse_html(bad.text).find("p", class_="field-error").text

    for _ in range(client_link.PAIRING_LIMIT - 1):
        ok = env.anonymous("POST", f"/link/{token}/pairing-code",
                           form={"phone": "+15553330001"}, headers=hx)
        assert ok.status_code == 200, ok.text
        code = parse_html(ok.text).find("code", id="pairing-code").text
        assert len(code) == 9 and code[4] == "-"
        assert "Link with phone number instead" in ok.text
    refused = env.anonymous("POST", f"/link/{token}/pairing-code",
                            form={"phone": "+15553330001"}, headers=hx)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    message = parse_html(refused.text).find("p", class_="field-error").text
    assert "Too many pairing codes" in message and "minute" in message
    # Each request is in the number's audit trail, by the link.
    assert env.audit_actions(session_id).count("number.pairing_code") == 4

    env.scan(session_id, "+15553330001")
    env.wait_status(session_id, "connected")
    done = env.anonymous("GET", f"/link/{token}")
    assert "Connected — you can close this page" in parse_html(done.text).find("h2").text


def test_revoked_or_unknown_link_is_a_readable_404(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Revoked")
    link_id, token = new_link(env, session_id)
    assert env.anonymous("GET", f"/link/{token}").status_code == 200
    listed = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/client-links").json()
    assert [(link["id"], link["status"]) for link in listed] == [(link_id, "active")]
    assert token not in str(listed)

    revoked = env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}/client-links/{link_id}")
    assert revoked.status_code == 204
    for path in (f"/link/{token}", f"/link/{token}/panel", f"/link/{token}/qr",
                 "/link/not-a-real-token"):
        gone = env.anonymous("GET", path)
        assert gone.status_code == 404
        assert "This link cannot be used" in parse_html(gone.text).find("h1").text
    hx = env.anonymous("GET", f"/link/{token}/panel", headers={"HX-Request": "true"})
    assert hx.status_code == 404 and hx.headers["hx-retarget"] == "#link-panel"
    assert "no longer works" in hx.text
    posted = env.anonymous("POST", f"/link/{token}/pairing-code", form={"phone": "+1555"})
    assert posted.status_code == 404
    listed = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/client-links").json()
    assert listed[0]["status"] == "revoked"
    again = env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}/client-links/{link_id}")
    assert again.status_code == 404


def test_deleting_the_number_ends_its_links(env: Env) -> None:
    session_id = env.create(name="Deleted later")
    _, token = new_link(env, session_id)
    env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}")
    assert env.anonymous("GET", f"/link/{token}").status_code == 404
    revoked = env.run(env.services.store.fetchval,
                      "SELECT count(*) FROM link_tokens WHERE subject = ? "
                      "AND revoked_at IS NOT NULL", (session_id,))
    assert revoked == 1


def test_the_token_opens_nothing_else(env: Env, pairing: tuple[str, str, str]) -> None:
    session_id, _, token = pairing
    as_bearer = env.client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401
    as_bearer = env.client.get(f"/api/v1/sessions/{session_id}/qr",
                               headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401
    for path in ("/numbers", f"/numbers/{session_id}", f"/numbers/{session_id}/qr"):
        as_cookie = env.anonymous("GET", path, headers={"Cookie": f"__Host-whatsdex={token}"})
        assert as_cookie.status_code == 303 and as_cookie.headers["location"].startswith("/login")
        as_query = env.anonymous("GET", f"{path}?token={token}")
        assert as_query.status_code == 303
    # Another link's path with this token's number: the token is tied to its own path only.
    assert env.anonymous("GET", f"/link/{session_id}").status_code == 404


def test_link_page_restarts_expired_codes(env: Env, parse_html: Any) -> None:
    session_id = env.create(name="Late client")
    _, token = new_link(env, session_id)
    env.wait_status(session_id, "pairing")
    env.api("owner", "POST", f"/api/v1/sessions/{session_id}/stop")
    doc = parse_html(env.anonymous("GET", f"/link/{token}").text)
    button = doc.find("button", hx_post=f"/link/{token}/start")
    assert "new QR code" in button.text
    restarted = env.anonymous("POST", f"/link/{token}/start", headers={"HX-Request": "true"})
    assert restarted.status_code == 200
    env.wait_status(session_id, "pairing")
    # Not for a linked number: the client may only ask for codes.
    linked = env.linked(name="Linked, stopped", phone="+15553330009")
    _, linked_token = new_link(env, linked)
    env.api("owner", "POST", f"/api/v1/sessions/{linked}/stop")
    refused = env.anonymous("POST", f"/link/{linked_token}/start")
    assert refused.status_code == 409
    assert env.session(linked)["status"] == "stopped"


def test_link_stream_carries_only_its_number_and_ends_on_revoke(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.3)
    session_id = env.create(name="Streamed link")
    link_id, token = new_link(env, session_id)
    env.wait_status(session_id, "pairing")
    stream = env.stream(f"/link/{token}/events")
    assert stream.status == 200
    assert "set-cookie" not in stream.headers
    assert stream.event() is not None
    try:
        env.create(name="Unrelated number")  # its events must not reach this page
        assert env.scan(session_id, "+15553330002").status_code == 200
        seen = stream.events_until(lambda m: m.get("event") == "status"
                                   and m.get("data") == "connected")
        assert {m.get("event") for m in seen} <= {"status", "qr", None}
        assert "Unrelated" not in str(seen)
        env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}/client-links/{link_id}")
        stream.body(timeout=3)  # ended at the next keep-alive
    finally:
        stream.close()
    deadline = time.monotonic() + 3
    while env.subscribers(env.a.id):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    refused = env.stream(f"/link/{token}/events")
    assert refused.status == 404
    refused.close()
