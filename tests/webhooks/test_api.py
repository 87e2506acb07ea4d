"""`/api/v1/webhooks` on a running app: owners manage their own webhooks, the secret is shown
once, the log pages, replays and test events go out through the app's dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from whatsdex.clock import iso, parse_iso

from .conftest import App, Receiver, build_app, signed_by

API = "/api/v1/webhooks"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from build_app(tmp_path_factory.mktemp("webhooks-api") / "data")


def create(env: App, url: str, **body: Any) -> dict[str, Any]:
    answer = env.api("owner", "POST", API, json={"url": url, **body})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def remove_all(env: App) -> None:
    for hook in env.api("owner", "GET", API).json():
        assert env.api("owner", "DELETE", f"{API}/{hook['id']}").status_code == 204


def test_create_shows_the_secret_once_and_stores_it_sealed(env: App, receiver: Receiver
                                                           ) -> None:
    created = create(env, receiver.url + "/one", events=["message.*", "session.status"],
                     description="CRM")
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["message.*", "session.status"]
    assert created["enabled"] is True and created["description"] == "CRM"
    listed = env.api("owner", "GET", API).json()
    one = env.api("owner", "GET", f"{API}/{created['id']}").json()
    assert created["id"] in [h["id"] for h in listed]
    for shown in (listed, one):
        assert created["secret"] not in str(shown) and "secret" not in str(shown).replace(
            "previous_secret_valid_until", "")
    [row] = env.fetchall("SELECT secret FROM webhooks WHERE id = ?", (created["id"],))
    assert created["secret"].encode() not in row["secret"]
    assert created["secret"].removeprefix("whsec_").encode() not in row["secret"]
    [audit] = env.fetchall("SELECT action, actor_type, detail FROM audit_log WHERE object_id = ?",
                           (created["id"],))
    assert audit["action"] == "webhook.created" and audit["actor_type"] == "api_key"
    assert created["secret"] not in audit["detail"]
    remove_all(env)


def test_validation_names_the_field(env: App) -> None:
    for body, field in (({"url": "ftp://x.example/"}, "url"),
                        ({"url": "http://127.0.0.1/", "events": ["nope"]}, "events"),
                        ({"url": "http://127.0.0.1/", "events": []}, "events"),
                        ({"url": "http://127.0.0.1/", "description": "x" * 501}, "description"),
                        ({"url": "http://127.0.0.1/", "secret": "mine"}, "secret")):
        answer = env.api("owner", "POST", API, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert field in answer.text, answer.text


def test_private_targets_are_refused_unless_allowed(tmp_path: Path) -> None:
    for env in build_app(tmp_path / "data", allow_private=False):
        for url in ("http://127.0.0.1:8080/hook", "http://10.0.0.5/", "http://[::1]/",
                    "http://169.254.169.254/", "http://localhost/"):
            answer = env.api("owner", "POST", API, json={"url": url})
            assert answer.status_code == 400, answer.text
            assert answer.json()["detail"]["field"] == "url"
            assert answer.json()["message"].startswith("url: ")
        assert env.api("owner", "GET", API).json() == []


def test_the_plan_limits_webhooks(env: App) -> None:
    limit = 20
    for n in range(limit):
        create(env, f"http://127.0.0.1:9/{n}")
    answer = env.api("owner", "POST", API, json={"url": "http://127.0.0.1:9/over"})
    assert answer.status_code == 403
    assert answer.json()["detail"]["limit"] == "max_webhooks" and "webhooks" in answer.json()[
        "message"]
    remove_all(env)


def test_update_enable_disable_and_delete(env: App) -> None:
    hook = create(env, "http://127.0.0.1:9/a")
    path = f"{API}/{hook['id']}"
    changed = env.api("owner", "PATCH", path, json={"url": "http://127.0.0.1:9/b",
                                                    "events": ["session.*"],
                                                    "description": "Ops"}).json()
    assert (changed["url"], changed["events"], changed["description"]) == (
        "http://127.0.0.1:9/b", ["session.*"], "Ops")
    off = env.api("owner", "PATCH", path, json={"enabled": False}).json()
    assert off["enabled"] is False and off["disabled_reason"].startswith("Disabled by")
    on = env.api("owner", "PATCH", path, json={"enabled": True}).json()
    assert on["enabled"] is True and on["disabled_reason"] == ""
    assert env.api("owner", "PATCH", path, json={"url": "gopher://x"}).status_code == 400
    actions = [r["action"] for r in env.fetchall(
        "SELECT action FROM audit_log WHERE object_id = ? ORDER BY id", (hook["id"],))]
    assert actions == ["webhook.created", "webhook.updated", "webhook.disabled",
                       "webhook.enabled"]
    assert env.api("owner", "DELETE", path).status_code == 204
    assert env.api("owner", "GET", path).status_code == 404
    assert env.api("owner", "DELETE", path).status_code == 404


def test_rotate_secret(env: App, receiver: Receiver) -> None:
    hook = create(env, receiver.url + "/rotate")
    answer = env.api("owner", "POST", f"{API}/{hook['id']}/rotate-secret")
    assert answer.status_code == 200
    rotated = answer.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    assert parse_iso(rotated["previous_valid_until"]) == pytest.approx(env.now[0] + 86_400,
                                                                       abs=0.01)
    shown = env.api("owner", "GET", f"{API}/{hook['id']}").json()
    assert shown["previous_secret_valid_until"] == rotated["previous_valid_until"]
    assert env.api("owner", "POST", f"{API}/{hook['id']}/test").status_code == 202
    env.drain()
    [got] = receiver.delivered("/rotate")
    assert signed_by(rotated["secret"], got) and signed_by(hook["secret"], got)
    remove_all(env)


def test_test_event_log_replay_and_since(env: App, receiver: Receiver) -> None:
    hook = create(env, receiver.url + "/log")
    base = f"{API}/{hook['id']}"
    receiver.script("/log", 500)
    sent = env.api("owner", "POST", f"{base}/test")
    assert sent.status_code == 202
    test_delivery = sent.json()
    assert test_delivery["event_type"] == "webhook.test" and test_delivery["status"] == "pending"
    env.drain()
    failed_once = env.api("owner", "GET", f"{base}/deliveries/{test_delivery['id']}").json()
    assert failed_once["status"] == "pending" and failed_once["attempts"] == 1
    assert failed_once["last_status"] == 500 and failed_once["last_error"].startswith("HTTP 500")
    assert failed_once["payload"]["type"] == "webhook.test"
    assert "webhook-signature: v1," in failed_once["request_excerpt"]
    # Try it now instead of in 5 s.
    retried = env.api("owner", "POST", f"{base}/deliveries/{test_delivery['id']}/replay")
    assert retried.status_code == 202 and retried.json()["attempts"] == 1
    env.drain()
    assert env.api("owner", "GET", f"{base}/deliveries/{test_delivery['id']}").json()[
        "status"] == "delivered"

    # More events, then the log: newest first, paged, filtered.
    for _ in range(4):
        assert env.api("owner", "POST", f"{base}/test").status_code == 202
    env.drain()
    page = env.api("owner", "GET", f"{base}/deliveries", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_before"] == page["items"][-1]["id"]
    ids = [d["id"] for d in page["items"]]
    rest = env.api("owner", "GET", f"{base}/deliveries",
                   params={"limit": 10, "before": page["next_before"]}).json()
    ids += [d["id"] for d in rest["items"]]
    assert rest["next_before"] is None
    assert ids == sorted(ids, reverse=True) and len(ids) == 5
    assert env.api("owner", "GET", f"{base}/deliveries",
                   params={"status": "failed"}).json()["items"] == []
    assert len(env.api("owner", "GET", f"{base}/deliveries",
                       params={"status": "delivered"}).json()["items"]) == 5
    assert env.api("owner", "GET", f"{base}/deliveries",
                   params={"status": "lost"}).status_code == 400

    # Replay one delivered event: same webhook-id, delivered again.
    first_id = ids[-1]
    again = env.api("owner", "POST", f"{base}/deliveries/{first_id}/replay").json()
    assert again["status"] == "pending" and again["attempts"] == 0
    env.drain()
    by_id = [r.headers["webhook-id"] for r in receiver.delivered("/log")]
    assert by_id.count(test_delivery["event_id"]) == 2

    # Replay since a time: only what was created from then on, in order.
    middle = env.fetchall("SELECT created_at FROM webhook_deliveries WHERE id = ?",
                          (ids[1],))[0]["created_at"]
    before = len(receiver.delivered("/log"))
    answer = env.api("owner", "POST", f"{base}/replay", json={"since": middle})
    assert answer.status_code == 202 and answer.json() == {"replayed": 2}
    env.drain()
    replayed = receiver.delivered("/log")[before:]
    assert [r.event["type"] for r in replayed] == ["webhook.test"] * 2
    assert [r.headers["webhook-id"] for r in replayed] == [
        d["event_id"] for d in sorted(page["items"], key=lambda d: d["id"])]
    assert env.api("owner", "POST", f"{base}/replay",
                   json={"since": "2020-01-01T00:00:00Z", "only_failed": True}).json() == {
        "replayed": 0}
    assert env.api("owner", "POST", f"{base}/replay", json={"since": "yesterday"}
                   ).status_code == 400
    actions = [r["action"] for r in env.fetchall(
        "SELECT action FROM audit_log WHERE object_id = ? ORDER BY id", (hook["id"],))]
    assert actions.count("webhook.tested") == 5 and actions.count("webhook.replayed") == 4
    remove_all(env)


def test_a_disabled_webhook_cannot_send_a_test(env: App) -> None:
    hook = create(env, "http://127.0.0.1:9/off")
    env.api("owner", "PATCH", f"{API}/{hook['id']}", json={"enabled": False})
    answer = env.api("owner", "POST", f"{API}/{hook['id']}/test")
    assert answer.status_code == 409 and "disabled" in answer.json()["message"]
    remove_all(env)


def test_who_may_do_what(env: App) -> None:
    mine = create(env, "http://127.0.0.1:9/mine")
    base = f"{API}/{mine['id']}"
    env.api("owner", "POST", f"{base}/test")
    delivery = env.api("owner", "GET", f"{base}/deliveries").json()["items"][0]["id"]
    calls: list[tuple[str, str, Any]] = [
        ("GET", API, None), ("POST", API, {"url": "http://127.0.0.1:9/x"}),
        ("GET", base, None), ("PATCH", base, {"description": "x"}),
        ("POST", f"{base}/rotate-secret", None), ("GET", f"{base}/deliveries", None),
        ("GET", f"{base}/deliveries/{delivery}", None),
        ("POST", f"{base}/deliveries/{delivery}/replay", None),
        ("POST", f"{base}/replay", {"since": iso(0)}), ("POST", f"{base}/test", None),
        ("DELETE", base, None),
    ]
    for method, path, body in calls:
        assert env.api(None, method, path, json=body).status_code == 401, (method, path)
        assert env.api("member", method, path, json=body).status_code == 403, (method, path)
        if path != API:
            assert env.api("other", method, path, json=body).status_code == 404, (method, path)
    assert env.api("other", "GET", API).json() == []
    # The other tenant's replay or test touched nothing of ours.
    assert len(env.api("owner", "GET", f"{base}/deliveries").json()["items"]) == 1
    assert env.api("owner", "GET", base).status_code == 200
    remove_all(env)


def test_openapi_documents_the_routes(env: App) -> None:
    schema = env.client.get("/schema/openapi.json")
    if schema.status_code != 200:
        schema = env.client.get("/api/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/webhooks" in paths and "/api/v1/webhooks/{webhook_id}/replay" in paths


def test_pending_deliveries_are_sent_after_the_app_restarts(tmp_path: Path,
                                                            receiver: Receiver) -> None:
    data_dir = tmp_path / "data"
    for first in build_app(data_dir):
        hook = create(first, receiver.url + "/after-restart")
        receiver.script("/after-restart", 503)
        first.api("owner", "POST", f"{API}/{hook['id']}/test")
        first.drain()  # the first attempt fails; the retry is due in 5 s
        first.api("owner", "POST", f"{API}/{hook['id']}/test")  # not attempted: order
        assert len(receiver.to("/after-restart")) == 1
    for second in build_app(data_dir):  # same data dir and key file: a restart
        second.tick(10)
        second.drain()
        delivered = receiver.delivered("/after-restart")
        assert len(delivered) == 2
        assert delivered[0].headers["webhook-id"] == receiver.to(
            "/after-restart")[0].headers["webhook-id"]
        assert all(signed_by(hook["secret"], r) for r in receiver.to("/after-restart"))
