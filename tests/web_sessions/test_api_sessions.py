"""The sessions API end to end on the sandbox engine: link by QR or pairing code, the life cycle,
history, plan limits, and who may do what."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from .conftest import Env

SVG_NS = "{http://www.w3.org/2000/svg}"


def test_create_scan_connect_with_qr_json_and_svg(env: Env) -> None:
    created = env.api("owner", "POST", "/api/v1/sessions", json={"name": "Front desk"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "name", "status"}
    assert body["name"] == "Front desk" and body["id"].startswith("ses_")
    session_id = body["id"]

    env.wait_status(session_id, "pairing")
    qr = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/qr")
    assert qr.status_code == 200
    assert qr.headers["cache-control"] == "no-store"
    assert qr.json()["qr"].startswith("2@") and qr.json()["expires_at"].endswith("Z")

    svg = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/qr",
                  headers={"Accept": "image/svg+xml"})
    assert svg.status_code == 200
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.headers["cache-control"] == "no-store"
    root = ET.fromstring(svg.text)
    assert root.tag == f"{SVG_NS}svg" and root.get("viewBox")
    assert root.find(f"{SVG_NS}path") is not None
    # Members read the QR code too (it is what they show a client).
    assert env.api("member", "GET", f"/api/v1/sessions/{session_id}/qr").status_code == 200

    scanned = env.scan(session_id, "+15551110001")
    assert scanned.status_code == 200, scanned.text
    assert scanned.json()["action"] == "scan"
    connected = env.wait_status(session_id, "connected")
    assert connected["phone"] == "15551110001"
    assert connected["jid"] == "15551110001@s.whatsapp.net"
    assert connected["lid"].endswith("@lid") and connected["push_name"]
    assert connected["desired"] == "running" and connected["reason"] == ""
    assert set(connected) == {"id", "name", "status", "reason", "phone", "jid", "lid",
                              "push_name", "since", "desired", "created_at"}

    # Connected: no QR code to show, in either format.
    for accept in ("application/json", "image/svg+xml"):
        gone = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/qr",
                       headers={"Accept": accept})
        assert gone.status_code == 409
        assert gone.json()["detail"] == {"status": "connected"}
        assert "not waiting for a scan" in gone.json()["message"]

    history = env.api("member", "GET", f"/api/v1/sessions/{session_id}/history").json()
    assert [(h["previous"], h["status"]) for h in history] == [
        ("pairing", "connected"), ("connecting", "pairing"), ("new", "connecting")]
    assert history[0]["at"] >= history[1]["at"] >= history[2]["at"]

    listed = env.api("member", "GET", "/api/v1/sessions").json()
    assert session_id in [s["id"] for s in listed]


def test_pairing_code_links_the_number(env: Env) -> None:
    session_id = env.create(name="By code")
    env.wait_status(session_id, "pairing")
    bad = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/pairing-code",
                  json={"phone": "+1 (555) abc"})
    assert bad.status_code == 400 and bad.json()["detail"] == {"field": "phone"}

    answer = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/pairing-code",
                     json={"phone": "+1 555 111 0002"})
    assert answer.status_code == 200, answer.text
    code = answer.json()["code"]
    assert len(code) == 9 and code[4] == "-"
    assert "number.pairing_code" in env.audit_actions(session_id)

    # The phone types the code (in the sandbox: that phone "scans").
    assert env.scan(session_id, "+15551110002").status_code == 200
    assert env.wait_status(session_id, "connected")["phone"] == "15551110002"
    late = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/pairing-code",
                   json={"phone": "+15551110002"})
    assert late.status_code == 409


def test_stop_start_logout_delete_with_history(env: Env) -> None:
    session_id = env.linked(name="Cycle", phone="+15551110003")

    stopped = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/stop")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped" and stopped.json()["desired"] == "stopped"
    assert stopped.json()["jid"], "a stopped number stays linked"

    started = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/start")
    assert started.status_code == 202
    assert started.json()["desired"] == "running"
    env.wait_status(session_id, "connected")

    logged_out = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/logout")
    assert logged_out.status_code == 200
    assert logged_out.json()["status"] == "logged_out"
    assert logged_out.json()["jid"] == "" and logged_out.json()["desired"] == "stopped"

    history = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/history").json()
    moves = [(h["previous"], h["status"]) for h in reversed(history)]
    assert moves[:3] == [("new", "connecting"), ("connecting", "pairing"),
                         ("pairing", "connected")]
    assert ("connected", "stopped") in moves
    assert moves[-1] == ("connected", "logged_out")
    assert moves.index(("connected", "stopped")) < len(moves) - 1
    reasons = {h["status"]: h["reason"] for h in history}
    assert reasons["stopped"] == "stopped by the user"
    assert reasons["logged_out"] == "logged out by the user"

    # Starting a logged-out number offers QR codes again.
    again = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/start")
    assert again.status_code == 202
    env.wait_status(session_id, "pairing")

    assert env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}").status_code == 204
    assert env.api("owner", "GET", f"/api/v1/sessions/{session_id}").status_code == 404
    assert session_id not in [s["id"] for s in env.api("owner", "GET", "/api/v1/sessions").json()]
    actions = env.audit_actions(session_id)
    for action in ("number.created", "number.stopped", "number.started", "number.logged_out",
                   "number.deleted"):
        assert action in actions


def test_plan_limit_names_the_limit_and_creates_nothing(env: Env) -> None:
    first = env.api("free", "POST", "/api/v1/sessions", json={"name": "Only one"})
    assert first.status_code == 201
    second = env.api("free", "POST", "/api/v1/sessions", json={"name": "One too many"})
    assert second.status_code == 403
    assert "linked numbers" in second.json()["message"]
    assert second.json()["detail"]["limit"] == "max_numbers"
    listed = env.api("free", "GET", "/api/v1/sessions").json()
    assert [s["name"] for s in listed] == ["Only one"]
    count = env.run(env.services.store.fetchval,
                    "SELECT count(*) FROM wa_sessions WHERE tenant_id = ?", (env.f.id,))
    assert count == 1


def test_bad_bodies_are_400_with_the_field(env: Env) -> None:
    empty = env.api("owner", "POST", "/api/v1/sessions", json={"name": ""})
    assert empty.status_code == 400 and "name" in empty.text
    unknown = env.api("owner", "POST", "/api/v1/sessions", json={"name": "x", "plan": "y"})
    assert unknown.status_code == 400
    session_id = env.create(name="TTL")
    long = env.api("owner", "POST", f"/api/v1/sessions/{session_id}/client-links",
                   json={"ttl_hours": 721})
    assert long.status_code == 400 and "ttl_hours" in long.text


# -- Who may do what ---------------------------------------------------------------------------

OWNER_ROUTES = [
    ("POST", "/api/v1/sessions/{id}/pairing-code", {"phone": "+15551119999"}),
    ("POST", "/api/v1/sessions/{id}/start", None),
    ("POST", "/api/v1/sessions/{id}/stop", None),
    ("POST", "/api/v1/sessions/{id}/logout", None),
    ("DELETE", "/api/v1/sessions/{id}", None),
    ("POST", "/api/v1/sessions/{id}/client-links", {"ttl_hours": 1}),
    ("GET", "/api/v1/sessions/{id}/client-links", None),
    ("DELETE", "/api/v1/sessions/{id}/client-links/lnk_x", None),
    ("POST", "/api/v1/sandbox/sessions/{id}/scan", {"phone": "+15551119999"}),
    ("POST", "/api/v1/sandbox/sessions/{id}/inbound", {"from": "15557654321", "text": "hi"}),
    ("POST", "/api/v1/sandbox/sessions/{id}/faults", {"kind": "disconnect"}),
    ("POST", "/api/v1/sandbox/sessions/{id}/receipts", {"read_after": 1}),
]
MEMBER_ROUTES = [
    ("GET", "/api/v1/sessions/{id}", None),
    ("GET", "/api/v1/sessions/{id}/history", None),
    ("GET", "/api/v1/sessions/{id}/qr", None),
]
ALL_ROUTES = [*OWNER_ROUTES, *MEMBER_ROUTES]


@pytest.fixture(scope="module")
def victim(env: Env) -> str:
    """A number of tenant A, waiting for a scan, that others try to reach."""
    return env.create(name="Victim")


@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES, ids=lambda v: str(v))
def test_another_tenant_gets_404_and_nothing_changes(env: Env, victim: str, method: str,
                                                     path: str, body: object) -> None:
    answer = env.api("other", method, path.format(id=victim), json=body)
    assert answer.status_code == 404, answer.text
    assert victim not in answer.text and env.a.name not in answer.text
    assert env.session(victim)["status"] in ("connecting", "pairing", "stopped")
    assert "number.deleted" not in env.audit_actions(victim)


@pytest.mark.parametrize(("method", "path", "body"), OWNER_ROUTES, ids=lambda v: str(v))
def test_member_key_is_refused_owner_routes(env: Env, victim: str, method: str, path: str,
                                            body: object) -> None:
    answer = env.api("member", method, path.format(id=victim), json=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["message"] == "This needs the owner role"


@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES, ids=lambda v: str(v))
def test_operator_and_anonymous_are_refused(env: Env, victim: str, method: str, path: str,
                                            body: object) -> None:
    operator = env.api("operator", method, path.format(id=victim), json=body)
    assert operator.status_code == 403
    anonymous = env.api(None, method, path.format(id=victim), json=body)
    assert anonymous.status_code == 401
    assert set(anonymous.json()) == {"status", "message", "detail"}


def test_collections_only_show_the_callers_numbers(env: Env, victim: str) -> None:
    theirs = env.create(who="other", name="Theirs")
    mine = {s["id"] for s in env.api("owner", "GET", "/api/v1/sessions").json()}
    other = {s["id"] for s in env.api("other", "GET", "/api/v1/sessions").json()}
    assert victim in mine and theirs not in mine
    assert theirs in other and victim not in other
    created = env.api("operator", "POST", "/api/v1/sessions", json={"name": "Nobody's"})
    assert created.status_code == 403


def test_openapi_documents_every_route(env: Env) -> None:
    spec = env.client.get("/api/openapi.json").json()
    # Every API route of the product, not only the sessions ones: none may go undocumented.
    paths = {p: ops for p, ops in spec["paths"].items() if p.startswith("/api/v1/")}
    assert {"/api/v1/sessions", "/api/v1/events", "/api/v1/sandbox/sessions/{session_id}/scan",
            "/api/v1/sessions/{session_id}/qr"} <= set(paths)
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation.get("tags"), f"{method} {path} has no tags"
            assert operation.get("security") == [{"apiKey": []}], f"{method} {path}"
    qr = paths["/api/v1/sessions/{session_id}/qr"]["get"]
    assert {"200", "404", "409"} <= set(qr["responses"])
    assert "SessionOut" in str(paths["/api/v1/sessions/{session_id}"]["get"]["responses"]["200"])
