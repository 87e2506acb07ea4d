"""Live events: the API's server-sent event stream and the dashboard's fragment stream, their
keep-alives, their end when the caller loses access, and no subscription left behind."""

from __future__ import annotations

import json
import time

import pytest

from whatsdex.bus import BusEvent
from whatsdex.identity import apikeys
from whatsdex.identity.principal import CLI
from whatsdex.web.api import events

from .conftest import Env


def wait_for_no_subscribers(env: Env, tenant_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while env.subscribers(tenant_id):
        assert time.monotonic() < deadline, "the stream's subscription was not released"
        time.sleep(0.02)


def test_api_stream_follows_a_number_from_qr_to_connected(env: Env) -> None:
    assert env.subscribers(env.a.id) == 0
    stream = env.stream("/api/v1/events", who="member")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.headers["cache-control"] == "no-store"
    hello = stream.event()
    assert hello == {"comment": "connected", "retry": str(events.RETRY_MS)}
    assert env.subscribers(env.a.id) == 1
    try:
        session_id = env.create(name="Streamed")
        seen = stream.events_until(lambda m: m.get("event") == "session.qr")
        statuses = [json.loads(m["data"]) for m in seen if m.get("event") == "session.status"]
        assert [(s["previous"], s["status"]) for s in statuses] == [
            ("new", "connecting"), ("connecting", "pairing")]
        assert all(s["id"] == session_id and s["since"] for s in statuses)
        qr = json.loads(seen[-1]["data"])
        assert qr["id"] == session_id and qr["expires_at"].endswith("Z")

        assert env.scan(session_id, "+15552220001").status_code == 200
        connected = stream.events_until(lambda m: m.get("event") == "session.status"
                                        and json.loads(m["data"])["status"] == "connected")
        assert json.loads(connected[-1]["data"]) | {"since": ""} == {
            "id": session_id, "status": "connected", "previous": "pairing", "reason": "",
            "since": ""}

        assert env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}").status_code == 204
        deleted = stream.events_until(lambda m: m.get("event") == "session.deleted")
        assert json.loads(deleted[-1]["data"]) == {"id": session_id}
    finally:
        stream.close()
    wait_for_no_subscribers(env, env.a.id)


def test_api_stream_shows_only_the_callers_tenant(env: Env) -> None:
    stream = env.stream("/api/v1/events", who="other")
    try:
        assert stream.event() is not None
        env.create(name="Not for B")
        assert stream.event(timeout=1.5) is None, "tenant B saw tenant A's events"
    finally:
        stream.close()
    wait_for_no_subscribers(env, env.b.id)


def test_keep_alive_then_end_when_the_key_is_revoked(env: Env,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.2)
    key, secret = env.run(apikeys.create_key, env.services.store, CLI, env.b.id,
                          name="short-lived", role="member", now=env.services.clock())
    env.keys["short-lived"] = secret
    stream = env.stream("/api/v1/events", who="short-lived")
    assert stream.event() is not None
    assert stream.event(timeout=2) == {"comment": "keep-alive"}
    env.run(apikeys.revoke_key, env.services.store, CLI, env.b.id, key.id,
            now=env.services.clock())
    stream.body(timeout=3)  # the stream ends by itself at the next keep-alive
    assert stream.ended
    stream.close()
    wait_for_no_subscribers(env, env.b.id)


@pytest.mark.parametrize(("who", "status"), [(None, 401), ("operator", 403)])
def test_api_stream_needs_a_tenant_key(env: Env, who: str | None, status: int) -> None:
    stream = env.stream("/api/v1/events", who=who)
    assert stream.status == status
    assert json.loads(stream.body())["status"] == status
    stream.close()


def test_dashboard_stream_sends_rows_to_swap(env: Env, parse_html: object) -> None:
    stream = env.stream("/ui/events", cookie_of="member")
    assert stream.status == 200
    assert stream.event() is not None
    try:
        session_id = env.create(name="Row <b>safe</b>")
        seen = stream.events_until(lambda m: m.get("event") == f"qr-{session_id}")
        # A new number is not on the page yet: the list fetches itself; later changes are rows.
        assert seen[0] == {"event": "number-added", "data": session_id}
        rows = [m for m in seen if m.get("event") == f"session-{session_id}"]
        assert rows, seen
        row = parse_html(rows[-1]["data"]).find("tr")  # type: ignore[operator]
        assert row.attrs["id"] == f"number-{session_id}"
        assert row.attrs["sse-swap"] == f"session-{session_id},deleted-{session_id}"
        assert row.attrs["hx-swap"] == "outerHTML"
        assert row.find("span", class_="badge").attrs["data-status"] == "pairing"
        assert "<b>" not in rows[-1]["data"], "names are escaped"
        assert row.find("a").attrs["href"] == f"/numbers/{session_id}"

        env.api("owner", "DELETE", f"/api/v1/sessions/{session_id}")
        gone = stream.events_until(lambda m: m.get("event") == f"deleted-{session_id}")
        assert gone[-1]["data"] == "<!-- deleted -->"
    finally:
        stream.close()
    wait_for_no_subscribers(env, env.a.id)


def test_dashboard_stream_needs_a_signed_in_tenant_user(env: Env) -> None:
    anonymous = env.stream("/ui/events")
    assert anonymous.status == 303
    assert anonymous.headers["location"] == "/login?next=/ui/events"
    anonymous.close()
    operator = env.stream("/ui/events", cookie_of="operator")
    assert operator.status == 403
    operator.close()
    # An API key is not a dashboard identity.
    keyed = env.stream("/ui/events", who="owner")
    assert keyed.status == 303
    keyed.close()
    assert env.subscribers(env.a.id) == 0


def test_streams_end_when_the_server_closes(env: Env) -> None:
    api = env.stream("/api/v1/events", who="owner")
    page = env.stream("/ui/events", cookie_of="owner")
    for stream in (api, page):
        assert stream.event() is not None
    env.services.bus.publish(BusEvent(env.a.id, events.CLOSING))
    for stream in (api, page):
        stream.body(timeout=3)
        assert stream.ended
        stream.close()
    wait_for_no_subscribers(env, env.a.id)
