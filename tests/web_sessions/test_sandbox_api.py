"""The sandbox-only API: a simulated phone and injected faults; absent with the real engine."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whatsdex.clock import iso
from whatsdex.store import wa_sessions
from whatsdex.store.records import WaSession

from .conftest import Env, build_env


def test_inbound_receipts_and_faults_on_a_connected_number(env: Env) -> None:
    session_id = env.linked(name="Sandboxed", phone="+15556660001")
    inbound = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/inbound",
                      json={"from": "+15557654321", "text": "Hi there", "count": 3})
    assert inbound.status_code == 200, inbound.text
    assert len(inbound.json()["result"]["wa_ids"]) == 3

    receipts = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/receipts",
                       json={"delivered_after": 0.5, "read_after": 2})
    assert receipts.json()["result"] == {"delivered_after": 0.5, "read_after": 2.0}
    negative = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/receipts",
                       json={"read_after": -1})
    assert negative.status_code == 400

    dropped = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/faults",
                      json={"kind": "disconnect"})
    assert dropped.status_code == 200
    env.wait_status(session_id, "connected")
    history = env.api("owner", "GET", f"/api/v1/sessions/{session_id}/history").json()
    assert ("connected", "reconnecting") in [(h["previous"], h["status"]) for h in history]

    failing = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/faults",
                      json={"kind": "fail_sends", "count": 2})
    assert failing.json()["result"] == {"fail_sends": 2}
    unknown = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/faults",
                      json={"kind": "meteor"})
    assert unknown.status_code == 400

    # Scanning a number that is not waiting for a scan is refused with the reason.
    rescan = env.scan(session_id, "+15556660001")
    assert rescan.status_code == 409 and "not waiting for a scan" in rescan.json()["message"]
    actions = env.audit_actions(session_id)
    assert {"sandbox.scan", "sandbox.inbound", "sandbox.receipts", "sandbox.disconnect",
            "sandbox.fail_sends"} <= set(actions)


def test_logout_from_the_phone_and_stopped_numbers(env: Env) -> None:
    session_id = env.linked(name="Removed on the phone", phone="+15556660002")
    removed = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/faults",
                      json={"kind": "logout"})
    assert removed.status_code == 200
    gone = env.wait_status(session_id, "logged_out")
    assert gone["reason"] == "sandbox: removed from the phone" and gone["jid"] == ""
    idle = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/inbound",
                   json={"from": "15557654321", "text": "anyone?"})
    assert idle.status_code == 409 and "not running" in idle.json()["message"]


def test_a_crashed_engine_host_comes_back_with_its_numbers(env: Env) -> None:
    session_id = env.linked(name="Survivor", phone="+15556660003")
    crash = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{session_id}/faults",
                    json={"kind": "crash_host"})
    assert crash.status_code == 200
    env.wait_status(session_id, "reconnecting", timeout=5)
    env.wait_status(session_id, "connected", timeout=20)


@pytest.fixture
def neonize_env(tmp_path: Path) -> Iterator[Env]:
    """The real engine, with no numbers: nothing ever connects to WhatsApp."""
    yield from build_env(tmp_path / "data", engine="neonize")


def test_sandbox_routes_do_not_exist_with_the_real_engine(neonize_env: Env) -> None:
    for action, body in (("scan", {"phone": "+15550000000"}),
                         ("inbound", {"from": "15550000000", "text": "x"}),
                         ("faults", {"kind": "crash_host"}),
                         ("receipts", {"read_after": 1})):
        answer = neonize_env.api("owner", "POST", f"/api/v1/sandbox/sessions/ses_x/{action}",
                                 json=body)
        assert answer.status_code == 404
        assert answer.json()["status"] == 404
    spec = neonize_env.client.get("/api/openapi.json").json()
    assert not [p for p in spec["paths"] if p.startswith("/api/v1/sandbox")]
    assert neonize_env.api("owner", "GET", "/api/v1/sessions").json() == []


def test_number_page_has_no_sandbox_phone_with_the_real_engine(neonize_env: Env,
                                                              parse_html: Any) -> None:
    # A stopped number's row, written directly: the supervisor never starts it.
    stamp = iso(time.time())
    row = WaSession(id="ses_stopped", tenant_id=neonize_env.a.id, name="Real", status="stopped",
                    status_reason="stopped by the user", status_since=stamp, desired="stopped",
                    phone="", jid="", lid="", push_name="", created_at=stamp, updated_at=stamp)
    neonize_env.run(neonize_env.services.store.write,
                    lambda conn: wa_sessions.insert(conn, row))
    page = neonize_env.page("owner", "GET", "/numbers/ses_stopped")
    assert page.status_code == 200
    doc = parse_html(page.text)
    assert doc.find("h1").text == "Real"
    assert doc.find_all(id="client-links")
    assert not doc.find_all(id="sandbox")
    assert "Sandbox mode" not in page.text
