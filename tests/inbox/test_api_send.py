"""Sending through the API on the sandbox engine: 202 once committed, the status walk from the
contacts' receipts, idempotency over HTTP, errors that name the field, body limits, tenancy
and roles."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest

from whatsdex.messaging import media as media_core
from whatsdex.web.api import messages as api_messages

from .conftest import PNG, Inbox, wait_until

CONTACT = "+15557000001"
CONTACT_JID = "15557000001@s.whatsapp.net"
ORDER = ["queued", "sending", "sent", "delivered", "read"]


def test_text_is_accepted_then_sent_delivered_and_read(env: Inbox) -> None:
    slow = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{env.number}/receipts",
                   json={"delivered_after": 0.4, "read_after": 0.9})
    assert slow.status_code == 200, slow.text
    try:
        sent = env.send(to=CONTACT, type="text", text="Your order is ready")
        assert sent.status_code == 202, sent.text
        body = sent.json()
        assert set(body) == {"id", "status"} and body["status"] == "queued"
        assert body["id"].startswith("msg_")
        # Committed before the answer: it is in the history at once.
        assert env.message(body["id"])["status"] in ORDER

        seen: list[str] = []
        deadline = time.monotonic() + 10
        while not seen or seen[-1] != "read":
            assert time.monotonic() < deadline, f"stuck after {seen}"
            status = env.message(body["id"])["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            time.sleep(0.02)
    finally:
        env.api("owner", "POST", f"/api/v1/sandbox/sessions/{env.number}/receipts",
                json={"delivered_after": 0.05, "read_after": 0.2})
    # Only ever forward, and each receipt was seen on its own.
    assert seen == sorted(seen, key=ORDER.index)
    assert {"sent", "delivered", "read"} <= set(seen)

    message = env.message(body["id"])
    stamps = message["timestamps"]
    assert stamps["received"] is None and stamps["failed"] is None
    assert stamps["queued"] <= stamps["sent"] <= stamps["delivered"] <= stamps["read"]
    assert message | {"timestamps": None, "created_at": None, "wa_id": None, "sender": None} == {
        "id": body["id"], "session_id": env.number, "chat_id": message["chat_id"],
        "direction": "out", "type": "text", "text": "Your order is ready", "status": "read",
        "reason": "", "source": "api", "wa_id": None, "sender": None, "quoted_id": "",
        "media": None, "location": None, "reaction": None, "timestamps": None,
        "created_at": None, "edited_at": None, "deleted_at": None}
    assert message["wa_id"]

    # The contact saw it exactly once, under the message's own id.
    shown = [d for d in env.deliveries() if d["outbox_id"] == body["id"]]
    assert len(shown) == 1
    assert shown[0]["to_jid"] == CONTACT_JID and shown[0]["text"] == "Your order is ready"
    assert shown[0]["wa_id"] == message["wa_id"]


def test_idempotency_key_over_http(env: Inbox) -> None:
    key = {"Idempotency-Key": "order-1234-confirmation"}
    first = env.send(to=CONTACT, type="text", text="Order 1234 confirmed", headers=key)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    env.wait_message(first.json()["id"], "read")

    # The same request again (the phone written another way): the first answer, nothing new.
    again = env.send(to="15557000001@s.whatsapp.net", type="text", text="Order 1234 confirmed",
                     headers=key)
    assert again.status_code == 202
    assert again.json() == first.json() == {"id": first.json()["id"], "status": "queued"}
    assert again.headers["idempotent-replayed"] == "true"
    # Another member of the workspace (another key) shares the workspace's keys.
    by_owner = env.send("owner", to=CONTACT, type="text", text="Order 1234 confirmed",
                        headers=key)
    assert by_owner.status_code == 202 and by_owner.json() == first.json()

    conflict = env.send(to=CONTACT, type="text", text="Order 1234 cancelled", headers=key)
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == {"field": "Idempotency-Key"}
    assert "Idempotency-Key" in conflict.json()["message"]

    too_long = env.send(to=CONTACT, type="text", text="x",
                        headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400
    assert too_long.json()["detail"] == {"field": "Idempotency-Key"}
    assert env.send(to=CONTACT, type="text", text="longest key",
                    headers={"Idempotency-Key": "k" * 255}).status_code == 202

    # Another workspace may use the same key for its own message.
    other = env.send("other", env.other_number, to=CONTACT, type="text", text="Hi",
                     headers=key)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]

    shown = [d for d in env.deliveries() if d["outbox_id"] == first.json()["id"]]
    assert len(shown) == 1 and shown[0]["attempts"] == 1


UPLOADED: dict[str, str] = {}

BAD_SENDS: list[tuple[str, dict[str, Any], str]] = [
    ("not a phone", {"to": "hello", "type": "text", "text": "x"}, "to"),
    ("national phone", {"to": "0301234567", "type": "text", "text": "x"}, "to"),
    ("no recipient", {"type": "text", "text": "x"}, "to"),
    ("recipient not text", {"to": 15557000001, "type": "text", "text": "x"}, "to"),
    ("no text", {"to": CONTACT, "type": "text"}, "text"),
    ("blank text", {"to": CONTACT, "type": "text", "text": "   "}, "text"),
    ("unknown type", {"to": CONTACT, "type": "sticker", "text": "x"}, "type"),
    ("no type", {"to": CONTACT, "text": "x"}, "type"),
    ("unknown field", {"to": CONTACT, "type": "text", "text": "x", "colour": "red"}, "colour"),
    ("caption on text", {"to": CONTACT, "type": "text", "caption": "x"}, "caption"),
    ("image without file", {"to": CONTACT, "type": "image"}, "media_id"),
    ("two media sources", {"to": CONTACT, "type": "image", "url": "https://example.com/a.png",
                           "base64": "AAAA"}, "media_id"),
    ("media on text", {"to": CONTACT, "type": "text", "text": "x", "base64": "AAAA"}, "base64"),
    ("bad base64", {"to": CONTACT, "type": "image", "base64": "not base64!"}, "base64"),
    ("unknown media id", {"to": CONTACT, "type": "image", "media_id": "med_nope"}, "media_id"),
    ("latitude out of range", {"to": CONTACT, "type": "location", "latitude": 91,
                               "longitude": 0}, "latitude"),
    ("location without longitude", {"to": CONTACT, "type": "location", "latitude": 1},
     "longitude"),
    ("unknown quoted message", {"to": CONTACT, "type": "text", "text": "x",
                                "quoted_id": "msg_nope"}, "quoted_id"),
    ("reaction without target", {"to": CONTACT, "type": "reaction", "emoji": "👍"},
     "message_id"),
    ("voice note on text", {"to": CONTACT, "type": "text", "text": "x", "voice_note": True},
     "voice_note"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_SENDS, ids=[c[0] for c in BAD_SENDS])
def test_a_bad_send_is_a_400_naming_the_field(env: Inbox, case: str, body: dict[str, Any],
                                              field: str) -> None:
    before = env.fetchval("SELECT count(*) FROM messages")
    answer = env.api("member", "POST", f"/api/v1/sessions/{env.number}/messages", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["status"] == 400
    assert error["detail"]["field"] == field, error
    assert f"`{field}`" in error["message"] or field in error["message"], error
    assert env.fetchval("SELECT count(*) FROM messages") == before


def test_malformed_json_is_a_400(env: Inbox) -> None:
    answer = env.client.post(f"/api/v1/sessions/{env.number}/messages",
                             content=b'{"to": "+1555', headers={
                                 "Authorization": f"Bearer {env.keys['member']}",
                                 "Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["status"] == 400 and answer.json()["message"]


def test_media_too_large_is_a_413(env: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_core, "MAX_BYTES", 1000)
    upload = env.client.post("/api/v1/media", files={"file": ("big.png", PNG + bytes(2000),
                                                              "image/png")},
                             headers={"Authorization": f"Bearer {env.keys['member']}"})
    assert upload.status_code == 413
    assert upload.json()["detail"]["field"] == "file"
    inline = env.send(to=CONTACT, type="image", base64=base64.b64encode(PNG + bytes(2000)).decode())
    assert inline.status_code == 413
    assert inline.json()["detail"]["field"] == "base64"


def test_request_bodies_up_to_90_mb(env: Inbox) -> None:
    """Above the app's 10 MB default (64 MB of media as base64 must fit), never unbounded."""
    picture = PNG + bytes(9_000_000)
    big = env.send(to=CONTACT, type="image", base64=base64.b64encode(picture).decode(),
                   caption="A big picture")
    assert big.status_code == 202, big.text[:300]
    message = env.wait_message(big.json()["id"], "read")
    assert message["text"] == "A big picture"
    assert message["media"]["size"] == len(picture)
    assert message["media"]["mimetype"] == "image/png"

    too_big = env.client.post(f"/api/v1/sessions/{env.number}/messages",
                              content=b"x" * (api_messages.MAX_BODY + 1),
                              headers={"Authorization": f"Bearer {env.keys['member']}",
                                       "Content-Type": "application/json"})
    assert too_big.status_code == 413
    assert too_big.json()["status"] == 413


def test_another_workspace_sees_nothing(env: Inbox) -> None:
    mine = env.send(to=CONTACT, type="text", text="Only for A")
    assert mine.status_code == 202
    message = env.wait_message(mine.json()["id"], "sent")
    uploaded = env.client.post("/api/v1/media", files={"file": ("a.png", PNG, "image/png")},
                               headers={"Authorization": f"Bearer {env.keys['owner']}"})
    assert uploaded.status_code == 201

    for method, path, body in (
        ("POST", f"/api/v1/sessions/{env.number}/messages",
         {"to": CONTACT, "type": "text", "text": "B using A's number"}),
        ("GET", f"/api/v1/messages/{message['id']}", None),
        ("GET", f"/api/v1/messages/{message['id']}/media", None),
        ("GET", f"/api/v1/chats/{message['chat_id']}", None),
        ("POST", f"/api/v1/chats/{message['chat_id']}/read", None),
        ("GET", f"/api/v1/media/{uploaded.json()['id']}", None),
    ):
        answer = env.api("other", method, path, json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["status"] == 404
    # A's media id is not B's to send either.
    stolen = env.send("other", env.other_number, to=CONTACT, type="image",
                      media_id=uploaded.json()["id"])
    assert stolen.status_code == 400 and stolen.json()["detail"]["field"] == "media_id"

    listed = env.api("other", "GET", "/api/v1/messages?limit=200").json()["items"]
    assert message["id"] not in {m["id"] for m in listed}
    assert all(m["session_id"] == env.other_number for m in listed)
    chats = env.api("other", "GET", f"/api/v1/chats?session_id={env.number}").json()
    assert chats == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(("who", "status"), [("member", 202), ("owner", 202),
                                             ("operator", 403), (None, 401)])
def test_who_may_send(env: Inbox, who: str | None, status: int) -> None:
    answer = env.send(who, to=CONTACT, type="text", text=f"sent by {who}") if who else (
        env.api(None, "POST", f"/api/v1/sessions/{env.number}/messages",
                json={"to": CONTACT, "type": "text", "text": "anonymous"}))
    assert answer.status_code == status, answer.text
    if status == 202:
        assert env.message(answer.json()["id"], who or "member")["source"] == "api"
    else:
        assert answer.json()["status"] == status


def test_a_number_that_cannot_send_is_a_409_or_404(env: Inbox) -> None:
    missing = env.api("member", "POST", "/api/v1/sessions/ses_nope/messages",
                      json={"to": CONTACT, "type": "text", "text": "x"})
    assert missing.status_code == 404
    assert missing.json()["detail"] == {"field": "session_id"}

    fresh = env.create(name="Never linked")
    env.wait_status(fresh, "pairing")
    assert env.api("owner", "POST", f"/api/v1/sessions/{fresh}/stop").status_code == 200
    refused = env.send(session_id=fresh, to=CONTACT, type="text", text="x")
    assert refused.status_code == 409
    assert refused.json()["detail"]["status"] == "stopped"
    assert env.api("owner", "DELETE", f"/api/v1/sessions/{fresh}").status_code == 204


def test_a_reply_quotes_and_a_reaction_points_at_a_message(env: Inbox) -> None:
    env.inbound("15557000002", "Do you deliver on Sundays?")
    chat = env.chat_of("15557000002")
    question = env.api("member", "GET", f"/api/v1/messages?chat_id={chat['id']}").json()
    asked = question["items"][0]
    assert asked["direction"] == "in" and asked["text"] == "Do you deliver on Sundays?"
    assert asked["sender"]["phone"] == "15557000002" and asked["timestamps"]["received"]

    answer = env.send(to="+15557000002", type="text", text="Yes, until noon",
                      quoted_id=asked["id"])
    assert answer.status_code == 202, answer.text
    reaction = env.send(to="+15557000002", type="reaction", message_id=asked["id"], emoji="👍")
    assert reaction.status_code == 202, reaction.text
    replied = env.wait_message(answer.json()["id"], "read")
    assert replied["quoted_id"] == asked["id"]
    reacted = wait_until(lambda: (m := env.message(reaction.json()["id"]))["status"] != "queued"
                         and m["status"] != "sending" and m, "the reaction to be sent")
    assert reacted["reaction"]["message_id"] == asked["id"]
    shown = {d["outbox_id"]: d for d in env.deliveries()}
    assert shown[answer.json()["id"]]["kind"] == "text"
    assert shown[reaction.json()["id"]]["kind"] == "reaction"
