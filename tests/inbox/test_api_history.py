"""Media upload and download, the message history (filters, full-text search, cursors), chats
with unread counts and marking them read, and the API docs for all of it."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest

from whatsdex.sessions import protocol

from .conftest import PDF, PNG, Inbox, wait_until


def upload(env: Inbox, name: str, data: bytes, content_type: str, who: str = "member"
           ) -> Any:
    return env.client.post("/api/v1/media", files={"file": (name, data, content_type)},
                           headers={"Authorization": f"Bearer {env.keys[who]}"})


def test_upload_download_and_send_media(env: Inbox) -> None:
    # The declared type is not trusted: the bytes say PNG.
    stored = upload(env, "photo of the cake.png", PNG, "application/octet-stream")
    assert stored.status_code == 201, stored.text
    body = stored.json()
    assert body | {"id": "", "created_at": ""} == {
        "id": "", "mimetype": "image/png", "size": len(PNG),
        "sha256": hashlib.sha256(PNG).hexdigest(), "filename": "photo of the cake.png",
        "created_at": ""}

    fetched = env.api("member", "GET", f"/api/v1/media/{body['id']}")
    assert fetched.status_code == 200
    assert fetched.content == PNG
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.headers["content-disposition"] == (
        'attachment; filename="photo of the cake.png"; '
        "filename*=UTF-8''photo%20of%20the%20cake.png")
    assert fetched.headers["cross-origin-resource-policy"] == "same-origin"

    sent = env.send(to="+15557100001", type="image", media_id=body["id"], caption="The cake")
    assert sent.status_code == 202, sent.text
    message = env.wait_message(sent.json()["id"], "delivered")
    assert message["text"] == "The cake"
    assert message["media"] | {"media_id": ""} == {
        "media_id": "", "mimetype": "image/png", "size": len(PNG),
        "sha256": hashlib.sha256(PNG).hexdigest()}
    shown = next(d for d in env.deliveries() if d["outbox_id"] == message["id"])
    assert shown["kind"] == "image" and shown["media_sha256"] == body["sha256"]
    again = env.api("member", "GET", f"/api/v1/messages/{message['id']}/media")
    assert again.status_code == 200 and again.content == PNG

    document = upload(env, "invoice 42.pdf", PDF, "application/pdf")
    assert document.status_code == 201 and document.json()["mimetype"] == "application/pdf"
    as_doc = env.send(to="+15557100001", type="document", media_id=document.json()["id"])
    assert as_doc.status_code == 202, as_doc.text
    # A PDF is no picture: the core refuses it as an image, naming the field.
    as_image = env.send(to="+15557100001", type="image", media_id=document.json()["id"])
    assert as_image.status_code == 400 and as_image.json()["detail"]["field"] == "media_id"


def test_bad_uploads_name_the_file_field(env: Inbox) -> None:
    program = upload(env, "setup.exe", b"MZ\x90\x00" + bytes(600), "application/octet-stream")
    assert program.status_code == 400, program.text
    assert program.json()["detail"]["field"] == "file"
    empty = upload(env, "empty.png", b"", "image/png")
    assert empty.status_code == 400 and empty.json()["detail"]["field"] == "file"
    missing = env.client.post("/api/v1/media", files={"other": ("a.png", PNG, "image/png")},
                              headers={"Authorization": f"Bearer {env.keys['member']}"})
    assert missing.status_code == 400
    assert missing.json()["detail"]["field"] == "file"
    assert env.api("member", "GET", "/api/v1/media/med_nope").status_code == 404


def test_received_text_has_no_media_to_download(env: Inbox) -> None:
    env.inbound("15557100002", "Just text")
    chat = env.chat_of("15557100002")
    received = env.api("member", "GET", f"/api/v1/messages?chat_id={chat['id']}").json()
    answer = env.api("member", "GET", f"/api/v1/messages/{received['items'][0]['id']}/media")
    assert answer.status_code == 404
    assert answer.json()["message"] == "This message has no media"


def receive_picture(env: Inbox, sender: str) -> str:
    """A picture from a contact, as an engine reports one (the sandbox sends only text)."""
    person = protocol.Person(jid=f"{sender}@s.whatsapp.net", phone=sender)
    event = protocol.InboundMessage(
        session=env.number, wa_id=f"WA{sender}", chat=person, sender=person,
        timestamp_ms=int(time.time() * 1000), push_name="Photographer", kind="image",
        text="Look at this", media={"type": "image", "mimetype": "image/png",
                                    "size": len(PNG), "sha256": hashlib.sha256(PNG).hexdigest(),
                                    "message": "ZW5naW5lLW9ubHk="})
    env.run(env.services.ingest.handle, env.a.id, event)  # type: ignore[attr-defined]
    items = env.api("member", "GET", f"/api/v1/messages?chat_id={env.chat_of(sender)['id']}")
    return str(items.json()["items"][0]["id"])


def test_received_media_is_downloaded_on_demand(env: Inbox, parse_html: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    library = env.services.media  # type: ignore[attr-defined]
    message_id = receive_picture(env, "15557100003")
    described = env.message(message_id)
    # What the engine keeps to download it later is not part of the API.
    assert described["media"] == {"type": "image", "mimetype": "image/png", "size": len(PNG),
                                  "sha256": hashlib.sha256(PNG).hexdigest()}
    assert described["type"] == "image" and described["text"] == "Look at this"

    monkeypatch.setattr(library, "fetch_inbound", None)
    refused = env.api("member", "GET", f"/api/v1/messages/{message_id}/media")
    assert refused.status_code == 404
    assert refused.json()["message"] == (
        "This engine cannot download the media of received messages")
    chat_id = described["chat_id"]
    page = parse_html(env.page("member", "GET", f"/inbox?chat={chat_id}").text)
    bubble = page.find("article", id=f"msg-{message_id}")
    assert not bubble.find_all("img") and "not downloadable" in bubble.text

    asked: list[dict[str, Any]] = []

    async def fetch(tenant_id: str, session_id: str, meta: dict[str, Any]) -> bytes:
        asked.append({"tenant": tenant_id, "session": session_id, **meta})
        return PNG

    monkeypatch.setattr(library, "fetch_inbound", fetch)
    for _ in range(2):
        fetched = env.api("member", "GET", f"/api/v1/messages/{message_id}/media")
        assert fetched.status_code == 200 and fetched.content == PNG
        assert fetched.headers["content-type"] == "image/png"
        assert f'filename="{message_id}.png"' in fetched.headers["content-disposition"]
    assert len(asked) == 1, "downloaded once, then kept"
    assert asked[0]["tenant"] == env.a.id and asked[0]["message"] == "ZW5naW5lLW9ubHk="
    page = parse_html(env.page("member", "GET", f"/inbox?chat={chat_id}").text)
    image = page.find("article", id=f"msg-{message_id}").find("img")
    assert image.attrs["src"] == f"/inbox/media/{message_id}"
    assert env.page("member", "GET", image.attrs["src"]).content == PNG


def all_pages(env: Inbox, query: str, limit: int) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor = ""
    while True:
        url = f"/api/v1/messages?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = env.api("member", "GET", url)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json()["items"])
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "the cursor never ended"


def test_history_filters_search_and_cursor(env: Inbox) -> None:
    contact = "15557200001"
    env.inbound(contact, "apple crumble order", count=12)
    env.inbound(contact, "banana bread please")
    middle = env.api("member", "GET", "/api/v1/messages?limit=1").json()["items"][0]["created_at"]
    env.inbound(contact, "cherry tart tomorrow", count=3)
    sent = env.send(to="+" + contact, type="text", text="banana bread is ready")
    env.wait_message(sent.json()["id"], "delivered")
    chat = env.chat_of(contact)
    in_chat = f"chat_id={chat['id']}"

    pages = all_pages(env, in_chat, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 2]
    flat = [m for p in pages for m in p]
    assert len({m["id"] for m in flat}) == 17
    assert [m["created_at"] for m in flat] == sorted((m["created_at"] for m in flat),
                                                     reverse=True)
    assert flat[0]["id"] == sent.json()["id"]

    def ids(query: str) -> list[str]:
        return [m["id"] for p in all_pages(env, f"{in_chat}&{query}", 200) for m in p]

    assert len(ids("direction=in")) == 16 and ids("direction=out") == [sent.json()["id"]]
    assert ids("status=received") == [m["id"] for m in flat if m["direction"] == "in"]
    assert len(ids(f"since={middle}")) == 5  # the banana request, three tarts, the answer
    assert len(ids(f"until={middle}")) == 12
    assert len(ids(f"session_id={env.number}")) == 17
    assert ids(f"session_id={env.other_number}") == []

    # Full-text search: every word, the last one as a prefix, across chats.
    found = [m["text"] for p in all_pages(env, "q=banana", 200) for m in p]
    assert found == ["banana bread is ready", "banana bread please"]
    assert [m["text"] for p in all_pages(env, "q=bread+rea", 200) for m in p] == [
        "banana bread is ready"]
    crumbles = all_pages(env, f"{in_chat}&q=crumble", 5)
    assert [len(p) for p in crumbles] == [5, 5, 2]
    assert len({m["id"] for p in crumbles for m in p}) == 12
    # Search syntax is just text.
    assert all_pages(env, 'q="NEAR(a b)" OR *', 10) == [[]]

    for query, field in (("limit=0", "limit"), ("limit=201", "limit"),
                         ("cursor=garbage", "cursor"), ("direction=up", "direction"),
                         ("status=lost", "status"), ("since=yesterday", "since")):
        bad = env.api("member", "GET", f"/api/v1/messages?{query}")
        assert bad.status_code == 400, query
        assert bad.json()["detail"]["field"] == field, bad.json()


def test_chats_with_unread_counts_and_mark_read(env: Inbox) -> None:
    env.inbound("15557300001", "First question", count=3)
    chat = env.chat_of("15557300001")
    assert chat | {"id": "", "last_message_at": "", "lid": "", "contact_id": ""} == {
        "id": "", "session_id": env.number, "jid": "15557300001@s.whatsapp.net", "lid": "",
        "is_group": False, "name": "Contact 0001", "phone": "15557300001", "contact_id": "",
        "last_message_at": "", "last_preview": "First question", "unread": 3}
    assert env.api("member", "GET", f"/api/v1/chats/{chat['id']}").json() == chat

    read = env.api("member", "POST", f"/api/v1/chats/{chat['id']}/read")
    assert read.status_code == 200, read.text
    assert read.json() == {"id": chat["id"], "unread": 0, "marked": 3, "receipts_sent": 3}
    assert env.api("member", "GET", f"/api/v1/chats/{chat['id']}").json()["unread"] == 0
    received = env.api("member", "GET", f"/api/v1/messages?chat_id={chat['id']}").json()["items"]
    assert {m["status"] for m in received} == {"read"}
    assert all(m["timestamps"]["read"] for m in received)
    # The contact got the read receipts (blue ticks on their phone).
    wa_ids = {m["wa_id"] for m in received}
    reads = wait_until(lambda: [r for r in env.reads() if r["message_id"] in wa_ids],
                       "the read receipts")
    assert {r["message_id"] for r in reads} == wa_ids
    # Nothing left to read: nothing sent again.
    again = env.api("member", "POST", f"/api/v1/chats/{chat['id']}/read").json()
    assert again == {"id": chat["id"], "unread": 0, "marked": 0, "receipts_sent": 0}
    assert env.api("member", "POST", "/api/v1/chats/cht_nope/read").status_code == 404


def test_chat_list_order_search_filter_and_cursor(env: Inbox) -> None:
    for n in range(5):
        env.inbound(f"1555740000{n}", f"hello from {n}")
    newest = env.api("member", "GET", "/api/v1/chats?limit=3").json()
    assert [c["jid"][:11] for c in newest["items"]] == ["15557400004", "15557400003",
                                                        "15557400002"]
    seen, cursor = [], None
    while True:
        page = env.api("member", "GET", "/api/v1/chats?limit=2" + (
            f"&cursor={cursor}" if cursor else "")).json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    every = [c["last_message_at"] for c in env.api("member", "GET",
                                                   "/api/v1/chats?limit=200").json()["items"]]
    assert len(seen) == len(every) and every == sorted(every, reverse=True)

    by_phone = env.api("member", "GET", "/api/v1/chats?q=5557400003").json()["items"]
    assert [c["phone"] for c in by_phone] == ["15557400003"]
    by_name = env.api("member", "GET", "/api/v1/chats?q=contact 0002").json()["items"]
    assert "15557400002" in [c["phone"] for c in by_name]
    assert {c["name"] for c in by_name} == {"Contact 0002"}
    mine = env.api("member", "GET", f"/api/v1/chats?session_id={env.number}&limit=200").json()
    assert {c["session_id"] for c in mine["items"]} == {env.number}
    assert env.api("member", "GET", "/api/v1/chats?cursor=nope").json()["detail"] == {
        "field": "cursor"}


def test_api_docs_describe_the_messages_api(env: Inbox) -> None:
    spec = env.client.get("/api/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/api/v1/sessions/{session_id}/messages", "post"): "Messages",
        ("/api/v1/messages", "get"): "Messages",
        ("/api/v1/messages/{message_id}", "get"): "Messages",
        ("/api/v1/messages/{message_id}/media", "get"): "Messages",
        ("/api/v1/media", "post"): "Media",
        ("/api/v1/media/{media_id}", "get"): "Media",
        ("/api/v1/chats", "get"): "Chats",
        ("/api/v1/chats/{chat_id}", "get"): "Chats",
        ("/api/v1/chats/{chat_id}/read", "post"): "Chats",
    }
    for (path, method), tag in expected.items():
        operation = paths[path][method]
        assert operation["tags"] == [tag], path
        assert operation["summary"] and operation["security"] == [{"apiKey": []}]
    send = paths["/api/v1/sessions/{session_id}/messages"]["post"]
    assert set(send["responses"]) >= {"202", "400", "404", "409", "413", "429"}
    body = send["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    assert {"to", "type", "text", "media_id", "url", "base64", "caption", "quoted_id",
            "emoji", "latitude"} <= set(schema["properties"])
    assert set(schema["required"]) == {"to", "type"}
    assert "Idempotency-Key" in send["description"]
    assert {"name": "Idempotency-Key", "in": "header"} in [
        {"name": p["name"], "in": p["in"]} for p in send["parameters"]]
    assert not any(path.startswith("/inbox") for path in paths)
