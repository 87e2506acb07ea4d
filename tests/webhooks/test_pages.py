"""The `/webhooks` pages, parsed: list and create (secret shown once with a copy button), one
webhook's page with its self-refreshing delivery log, the actions, and who may see what."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import App, Receiver, build_app

API = "/api/v1/webhooks"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    yield from build_app(tmp_path_factory.mktemp("webhooks-pages") / "data")


def csp_safe(doc: Any) -> None:
    for el in doc.iter():
        assert "style" not in el.attrs, f"style attribute on <{el.tag}>"
        assert not [a for a in el.attrs if a.startswith(("on", "hx-on"))], f"handler on <{el.tag}>"
        assert not (el.tag == "script" and "src" not in el.attrs), "inline script"
        if "hx-delete" in el.attrs:
            assert el.attrs.get("hx-confirm"), f"{el.attrs['hx-delete']} deletes without asking"
    ids = {el.attrs["id"] for el in doc.iter() if "id" in el.attrs}
    for label in doc.find_all("label"):
        if "for" in label.attrs:
            assert label.attrs["for"] in ids, label.attrs["for"]


def new_hook(env: App, url: str, events: list[str] | None = None) -> str:
    answer = env.api("owner", "POST", API, json={"url": url, "events": events or ["*"]})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def remove_all(env: App) -> None:
    for hook in env.api("owner", "GET", API).json():
        env.api("owner", "DELETE", f"{API}/{hook['id']}")


def test_list_and_create_with_the_secret_shown_once(env: App, receiver: Receiver,
                                                    parse_html: Any) -> None:
    page = env.page("owner", "GET", "/webhooks")
    assert page.status_code == 200
    doc = parse_html(page.text)
    csp_safe(doc)
    assert doc.find("h1").text == "Webhooks"
    form = doc.find("form", id="add-webhook")
    assert form.attrs["hx-post"] == "/webhooks" and form.attrs["hx-target"] == "#webhooks-card"
    assert form.find("input", name="_csrf_token").attrs["value"]
    choices = [box.attrs["value"] for box in form.find_all("input", type="checkbox")]
    assert choices[:2] == ["*", "message.*"] and "session.status" in choices
    assert doc.find("p", class_="empty").text == "No webhooks yet."

    created = env.page("owner", "POST", "/webhooks", form={
        "url": receiver.url + "/ui", "description": "From the page",
        "events": ["message.*", "session.status"]})
    assert created.status_code == 200, created.text
    card = parse_html(created.text)
    csp_safe(card)
    secret = card.find("code", id="webhook-secret").text
    assert secret.startswith("whsec_")
    assert card.find("button", data_copy="#webhook-secret")
    row = card.find("table", id="webhooks").find("tr")
    [hook] = env.api("owner", "GET", API).json()
    assert hook["events"] == ["message.*", "session.status"]
    assert hook["description"] == "From the page"
    assert card.find("tr", id=f"webhook-{hook['id']}")
    assert row is not None
    # Never again: not on the list, not on its page.
    again = env.page("owner", "GET", "/webhooks").text + env.page(
        "owner", "GET", f"/webhooks/{hook['id']}").text
    assert secret not in again and secret.removeprefix("whsec_") not in again
    remove_all(env)


def test_a_refused_url_is_an_error_toast(env: App) -> None:
    answer = env.page("owner", "POST", "/webhooks", form={"url": "ftp://x.example/",
                                                          "events": "*"})
    assert answer.status_code == 400
    assert answer.headers["hx-retarget"] == "#toasts" and "url:" in answer.text
    assert env.api("owner", "GET", API).json() == []


def test_webhook_page_log_polls_and_actions_work(env: App, receiver: Receiver,
                                                 parse_html: Any) -> None:
    hook_id = new_hook(env, receiver.url + "/page", ["session.*"])
    receiver.script("/page", (503, {"Retry-After": "60"}, b"busy"))
    env.api("owner", "POST", f"{API}/{hook_id}/test")
    env.drain()
    page = env.page("owner", "GET", f"/webhooks/{hook_id}")
    assert page.status_code == 200
    doc = parse_html(page.text)
    csp_safe(doc)
    log = doc.find("div", id="deliveries")
    assert log.attrs["hx-trigger"] == "every 5s"
    assert log.attrs["hx-get"].startswith(f"/webhooks/{hook_id}/deliveries?seen=")
    [row] = log.find_all("tr", data_status="pending")
    assert "webhook.test" in row.text and "HTTP 503" in row.text
    assert "busy" in row.find("details").text
    assert row.find("button").attrs["hx-post"].endswith("/replay")
    # A poll that finds the same page answers 204 (htmx keeps what is shown).
    seen = log.attrs["hx-get"].split("seen=")[1]
    assert env.page("owner", "GET", f"/webhooks/{hook_id}/deliveries",
                    params={"seen": seen}, htmx=True).status_code == 204
    assert doc.find("button", id="send-test").attrs["hx-post"] == f"/webhooks/{hook_id}/test"
    assert doc.find("form", id="edit-webhook").attrs["hx-patch"] == f"/webhooks/{hook_id}"
    edit_boxes = doc.find("form", id="edit-webhook").find_all("input", type="checkbox")
    assert [b.attrs["value"] for b in edit_boxes if "checked" in b.attrs] == ["session.*"]

    # Try now: delivered, and the refreshed log says so.
    retried = env.page("owner", "POST", f"/webhooks/{hook_id}/deliveries/999999/replay")
    assert retried.status_code == 404  # no such delivery
    delivery_id = row.attrs["id"].removeprefix("delivery-")
    retried = env.page("owner", "POST", f"/webhooks/{hook_id}/deliveries/{delivery_id}/replay")
    assert retried.status_code == 200 and "queued again" in retried.text
    env.drain()
    fresh = parse_html(env.page("owner", "GET", f"/webhooks/{hook_id}/deliveries",
                                params={"seen": seen}, htmx=True).text)
    assert fresh.find("tr", id=f"delivery-{delivery_id}").attrs["data-status"] == "delivered"
    assert not parse_html(env.page("owner", "GET", f"/webhooks/{hook_id}/deliveries",
                                   params={"status": "failed"}, htmx=True).text).find_all("tr")

    # Test event and replay since a time, in the workspace's time zone (UTC here).
    sent = env.page("owner", "POST", f"/webhooks/{hook_id}/test")
    assert sent.status_code == 200 and "Test event queued" in sent.text
    env.drain()
    replay = env.page("owner", "POST", f"/webhooks/{hook_id}/replay",
                      form={"since": "2000-01-01T00:00"})
    assert replay.status_code == 200 and "2 events queued again" in replay.text
    env.drain()
    assert len(receiver.delivered("/page")) == 4

    # Rotate: the new secret once, with a copy button; the window is shown.
    rotated = parse_html(env.page("owner", "POST", f"/webhooks/{hook_id}/rotate-secret").text)
    assert rotated.find("code", id="new-webhook-secret").text.startswith("whsec_")
    assert rotated.find("button", data_copy="#new-webhook-secret")
    assert parse_html(env.page("owner", "GET", f"/webhooks/{hook_id}").text).find(
        "p", id="rotation-window")

    # Disable (with the reason), enable, edit.
    off = parse_html(env.page("owner", "POST", f"/webhooks/{hook_id}/disable").text)
    assert "Disabled by owner" in off.find("p", id="disabled-reason").text
    assert off.find("button", hx_post=f"/webhooks/{hook_id}/enable")
    on = parse_html(env.page("owner", "POST", f"/webhooks/{hook_id}/enable").text)
    assert on.find("button", hx_post=f"/webhooks/{hook_id}/disable")
    edited = env.page("owner", "PATCH", f"/webhooks/{hook_id}", form={
        "url": receiver.url + "/page2", "description": "Renamed", "events": ["*"]})
    assert edited.status_code == 200 and "Webhook saved" in edited.text
    assert env.api("owner", "GET", f"{API}/{hook_id}").json()["url"] == receiver.url + "/page2"

    # Delete: back to the list.
    gone = env.page("owner", "DELETE", f"/webhooks/{hook_id}")
    assert gone.status_code == 200 and gone.headers["hx-redirect"] == "/webhooks"
    assert env.page("owner", "GET", f"/webhooks/{hook_id}").status_code == 404


def test_disabled_reason_is_on_the_list(env: App, receiver: Receiver, parse_html: Any) -> None:
    hook_id = new_hook(env, receiver.url + "/gone")
    receiver.script("/gone", 410)
    env.api("owner", "POST", f"{API}/{hook_id}/test")
    env.drain()
    doc = parse_html(env.page("owner", "GET", "/webhooks").text)
    row = doc.find("tr", id=f"webhook-{hook_id}")
    assert "disabled" in row.text and "410 Gone" in row.text
    remove_all(env)


def test_who_may_see_the_pages(env: App, parse_html: Any) -> None:
    hook_id = new_hook(env, "http://127.0.0.1:9/private")
    anonymous = env.page(None, "GET", "/webhooks")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    for path in ("/webhooks", f"/webhooks/{hook_id}"):
        assert env.page("member", "GET", path).status_code == 403
    assert env.page("member", "POST", "/webhooks", form={"url": "http://127.0.0.1:9/"}
                    ).status_code == 403
    other = env.page("other", "GET", f"/webhooks/{hook_id}")
    assert other.status_code == 404 and "private" not in other.text
    assert hook_id not in env.page("other", "GET", "/webhooks").text
    for method, path in (("POST", f"/webhooks/{hook_id}/disable"),
                         ("POST", f"/webhooks/{hook_id}/rotate-secret"),
                         ("POST", f"/webhooks/{hook_id}/test"),
                         ("DELETE", f"/webhooks/{hook_id}"),
                         ("GET", f"/webhooks/{hook_id}/deliveries")):
        assert env.page("other", method, path).status_code == 404, (method, path)
        assert env.page("member", method, path).status_code == 403, (method, path)
    assert env.api("owner", "GET", f"{API}/{hook_id}").json()["enabled"] is True
    # Forms need the CSRF token.
    env.client.cookies.clear()
    forged = env.client.post("/webhooks", data={"url": "http://127.0.0.1:9/"},
                             headers={"Cookie": f"__Host-whatsdex={env.cookies['owner']}"})
    assert forged.status_code == 403
    remove_all(env)
