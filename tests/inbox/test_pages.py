"""The inbox pages: the chat list and a conversation (parsed), marking read, replies (text and
files) through the outbox, search, older messages, the fallback polls, the live fragment stream
and who may see what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar

from whatsdex.bus import BusEvent
from whatsdex.sessions import protocol
from whatsdex.store.messages import Message
from whatsdex.web.api import events
from whatsdex.web.ui import inbox as ui_inbox

from .conftest import PDF, PNG, Inbox, wait_until

Parse = Callable[[str], Any]


def conversation_ids(env: Inbox, chat_id: str) -> list[str]:
    items = env.api("member", "GET", f"/api/v1/messages?chat_id={chat_id}&limit=200").json()
    return [m["id"] for m in reversed(items["items"])]


def test_the_inbox_lists_chats_and_opens_a_conversation(env: Inbox, parse_html: Parse) -> None:
    env.inbound("15558000001", "Is the shop open today?")
    env.inbound("15558000001", "And <b>tomorrow</b>?")
    chat = env.chat_of("15558000001")
    answer = env.send(to="+15558000001", type="text", text="Open 9 to 5, both days")
    env.wait_message(answer.json()["id"], "read")

    listing = env.page("member", "GET", "/inbox")
    assert listing.status_code == 200
    doc = parse_html(listing.text)
    assert doc.find("h1").text == "Inbox"
    assert doc.find(id="inbox").attrs["sse-connect"] == "/inbox/events"
    row = doc.find("li", id=f"chat-{chat['id']}")
    assert row.find("strong", class_="inbox-chat-name").text == "Contact 0001"
    # The preview is the newest message, ours here; the unread count is theirs.
    assert row.find("span", class_="inbox-chat-preview").text == "Open 9 to 5, both days"
    assert row.find("span", class_="inbox-unread").text == "2"
    assert row.find("span", class_="inbox-chat-number").text == "via Front desk"
    assert row.attrs["sse-swap"] == f"chat-{chat['id']}"
    link = row.find("a")
    assert link.attrs["href"] == f"/inbox?chat={chat['id']}"
    assert link.attrs["hx-get"] == f"/inbox/chats/{chat['id']}"
    assert doc.find("ul", id="chat-list").attrs["sse-swap"] == "chat"
    assert doc.find(id="conversation").find("p", class_="inbox-empty")
    assert [s.attrs["src"] for s in doc.find_all("script") if "inbox" in s.attrs["src"]] == [
        "/static/js/inbox.js"]

    opened = parse_html(env.page("member", "GET", f"/inbox?chat={chat['id']}").text)
    body = opened.find(id="conversation-body")
    assert body.attrs["data-chat"] == chat["id"]
    assert body.find("h2").text == "Contact 0001"
    assert "+15558000001" in body.find("header").text and "Front desk" in body.find(
        "header").text
    bubbles = body.find(id="messages").find_all("article")
    assert [b.attrs["id"] for b in bubbles] == [f"msg-{i}" for i in conversation_ids(
        env, chat["id"])]
    assert [b.attrs["class"] for b in bubbles] == ["msg msg-in", "msg msg-in", "msg msg-out"]
    assert bubbles[1].find("p", class_="msg-text").text == "And <b>tomorrow</b>?"
    ticks = bubbles[2].find("span", class_="ticks")
    assert (ticks.text, ticks.attrs["title"], ticks.attrs["class"]) == (
        "✓✓", "Read", "ticks ticks-read")
    assert not bubbles[0].find_all("span", class_="ticks")
    assert opened.find(id="chat-list").find("li", id=f"chat-{chat['id']}").find(
        "a").attrs["aria-current"] == "true"
    # Opening it reads it: a POST fired as it loads (a GET alone changes nothing).
    reader = body.find("div", hx_post=f"/inbox/chats/{chat['id']}/read")
    assert reader.attrs["hx-trigger"] == "load"
    assert env.chat_of("15558000001")["unread"] == 2
    form = body.find("form", id="reply-form")
    assert form.attrs["hx-post"] == f"/inbox/chats/{chat['id']}/messages"
    assert form.attrs["hx-encoding"] == "multipart/form-data"
    assert form.find("input", name="key").attrs["value"]

    read = env.page("member", "POST", f"/inbox/chats/{chat['id']}/read")
    assert read.status_code == 204
    assert env.chat_of("15558000001")["unread"] == 0
    again = parse_html(env.page("member", "GET", f"/inbox?chat={chat['id']}").text)
    assert not again.find_all("div", hx_post=f"/inbox/chats/{chat['id']}/read")
    assert not again.find("li", id=f"chat-{chat['id']}").find_all("span", class_="inbox-unread")

    # The conversation alone, as the chat list's links fetch it.
    partial = env.page("member", "GET", f"/inbox/chats/{chat['id']}", htmx=True)
    assert partial.status_code == 200 and "<html" not in partial.text
    assert parse_html(partial.text).find(id="conversation-body").attrs["data-chat"] == chat["id"]
    plain = env.page("member", "GET", f"/inbox/chats/{chat['id']}", htmx=False)
    assert (plain.status_code, plain.headers["location"]) == (303, f"/inbox?chat={chat['id']}")


def render_bubble(app: Litestar, message: Message,
                  quotes: dict[str, Message] | None = None) -> str:
    engine = app.template_engine
    assert engine is not None
    html: str = engine.get_template("inbox/_message.html").render(
        m=message, quotes=quotes or {}, mark_read=False, fetchable=False,
        inline_images=ui_inbox.INLINE_IMAGES)
    return html


def outbound(status: str, reason: str = "", **changes: Any) -> Message:
    message = Message(
        id="msg_x", tenant_id="t", session_id="s", chat_id="c", direction="out", wa_id=None,
        sender_jid="", sender_lid="", sender_phone="", push_name="", kind="text", text="Hi",
        payload={}, quoted_id="", status=status, status_reason=reason, source="api",
        priority=10, attempts=0, next_attempt_at=None, created_at="2026-01-02T03:04:05.000Z",
        wa_timestamp=None, sent_at=None, delivered_at=None, read_at=None, played_at=None,
        failed_at=None, edited_at=None, deleted_at=None)
    return msgspec.structs.replace(message, **changes)


@pytest.mark.parametrize(("status", "reason", "mark", "title"), [
    ("queued", "", "🕓", "Queued"),
    ("queued", "the number is reconnecting", "🕓", "Queued: the number is reconnecting"),
    ("sent", "", "✓", "Sent"),
    ("delivered", "", "✓✓", "Delivered"),
    ("read", "", "✓✓", "Read"),
    ("failed", "the contact is not on WhatsApp", "✗", "Failed: the contact is not on WhatsApp"),
])
def test_ticks_say_each_status(env: Inbox, parse_html: Parse, status: str, reason: str,
                               mark: str, title: str) -> None:
    html = render_bubble(env.client.app, outbound(status, reason))
    ticks = parse_html(html).find("span", class_="ticks")
    assert (ticks.text, ticks.attrs["title"], ticks.attrs["data-status"]) == (mark, title, status)
    assert f"ticks-{status}" in ticks.attrs["class"]


def test_bubbles_show_media_quotes_and_deletions(env: Inbox, parse_html: Parse) -> None:
    app = env.client.app
    picture = outbound("sent", kind="image", text="The cake",
                       payload={"media": {"media_id": "med_1", "mimetype": "image/png",
                                          "size": 2048}})
    doc = parse_html(render_bubble(app, picture))
    assert doc.find("img").attrs["src"] == "/inbox/media/msg_x"
    assert doc.find("p", class_="msg-text").text == "The cake"
    document = outbound("sent", kind="document", text="",
                        payload={"media": {"media_id": "med_2", "mimetype": "application/pdf",
                                           "size": 1_500_000, "filename": "menu.pdf"}})
    link = parse_html(render_bubble(app, document)).find("a", class_="msg-file")
    assert link.attrs["href"] == "/inbox/media/msg_x" and "menu.pdf" in link.text
    # Received media this engine cannot download is named, not linked.
    unfetched = outbound("received", direction="in", kind="video",
                         payload={"media": {"type": "video", "mimetype": "video/mp4"}})
    assert not parse_html(render_bubble(app, unfetched)).find_all("a")
    quote = outbound("sent", text="The original question")
    reply = outbound("sent", id="msg_y", quoted_id="msg_x", text="The answer")
    doc = parse_html(render_bubble(app, reply, {"msg_x": quote}))
    assert doc.find("blockquote").text == "The original question"
    gone = parse_html(render_bubble(app, outbound("read", deleted_at="2026-01-02T04:00:00Z")))
    assert gone.find("p", class_="msg-text").text == "This message was deleted"


def test_a_reply_from_the_inbox_goes_through_the_outbox(env: Inbox, parse_html: Parse) -> None:
    env.inbound("15558000002", "Can I order a cake?")
    chat = env.chat_of("15558000002")
    form = parse_html(env.page("member", "GET", f"/inbox?chat={chat['id']}").text).find(
        "form", id="reply-form")
    key = form.find("input", name="key").attrs["value"]

    sent = env.post_form("member", f"/inbox/chats/{chat['id']}/messages",
                         {"text": "Of course! Which flavour?", "key": key})
    assert sent.status_code == 200, sent.text
    doc = parse_html(sent.text)
    bubble = doc.find("article")
    message_id = bubble.attrs["id"].removeprefix("msg-")
    assert bubble.attrs["class"] == "msg msg-out"
    assert bubble.find("p", class_="msg-text").text == "Of course! Which flavour?"
    # A fresh reply box with a new key replaces the one just used.
    fresh = doc.find("form", id="reply-form")
    assert fresh.attrs["hx-swap-oob"] == "true"
    assert fresh.find("input", name="key").attrs["value"] not in ("", key)
    assert "autofocus" in fresh.find("textarea").attrs

    message = env.wait_message(message_id, "delivered")
    assert (message["source"], message["direction"], message["chat_id"]) == (
        "inbox", "out", chat["id"])
    # A double submit of the same form is the same message.
    twice = env.post_form("member", f"/inbox/chats/{chat['id']}/messages",
                          {"text": "Of course! Which flavour?", "key": key})
    assert parse_html(twice.text).find("article").attrs["id"] == f"msg-{message_id}"
    assert [d["outbox_id"] for d in env.deliveries()].count(message_id) == 1

    empty = env.post_form("member", f"/inbox/chats/{chat['id']}/messages",
                          {"text": "  ", "key": "k2"})
    assert empty.status_code == 400
    assert empty.headers["hx-retarget"] == "#toasts"
    assert "Type a message" in parse_html(empty.text).find(class_="toast").text


def test_a_reply_with_files_and_the_media_route(env: Inbox, parse_html: Parse) -> None:
    env.inbound("15558000003", "Send me the menu and a photo")
    chat = env.chat_of("15558000003")
    photo = env.post_form("member", f"/inbox/chats/{chat['id']}/messages",
                          {"text": "Our best seller", "key": "photo-1"},
                          {"file": ("cake.png", PNG, "image/png")})
    assert photo.status_code == 200, photo.text
    bubble = parse_html(photo.text).find("article")
    photo_id = bubble.attrs["id"].removeprefix("msg-")
    assert bubble.find("img").attrs["src"] == f"/inbox/media/{photo_id}"
    message = env.wait_message(photo_id, "delivered")
    assert (message["type"], message["text"], message["media"]["mimetype"]) == (
        "image", "Our best seller", "image/png")
    shown = env.page("member", "GET", f"/inbox/media/{photo_id}")
    assert shown.status_code == 200 and shown.content == PNG
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["content-disposition"].startswith('inline; filename="cake.png"')

    menu = env.post_form("member", f"/inbox/chats/{chat['id']}/messages", {"key": "menu-1"},
                         {"file": ("menu.pdf", PDF, "application/pdf")})
    menu_id = parse_html(menu.text).find("article").attrs["id"].removeprefix("msg-")
    assert env.wait_message(menu_id, "sent")["type"] == "document"

    # Anything that is not a picture or a player is a download, never a page of this site.
    notes = env.post_form("member", f"/inbox/chats/{chat['id']}/messages", {"key": "notes-1"},
                          {"file": ("notes.html", b"<html><script>alert(1)</script></html>",
                                    "text/html")})
    assert notes.status_code == 200, notes.text
    notes_id = parse_html(notes.text).find("article").attrs["id"].removeprefix("msg-")
    served = env.page("member", "GET", f"/inbox/media/{notes_id}")
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment;")

    other = env.page("other", "GET", f"/inbox/media/{photo_id}")
    assert other.status_code == 404


def test_search_finds_chats_and_words_in_messages(env: Inbox, parse_html: Parse) -> None:
    env.inbound("15558000004", "Do you have gluten free muffins?")
    found = env.page("member", "GET", "/inbox/chats?q=gluten+muff", htmx=True)
    assert found.status_code == 200
    doc = parse_html(found.text)
    assert "sse-swap" not in doc.find("ul", id="chat-list").attrs  # a result list stays put
    hits = doc.find("ul", class_="inbox-hit-list").find_all("li")
    assert [h.find("span", class_="inbox-hit-text").text for h in hits] == [
        "Do you have gluten free muffins?"]
    chat = env.chat_of("15558000004")
    assert hits[0].find("a").attrs["hx-get"] == f"/inbox/chats/{chat['id']}"
    by_phone = parse_html(env.page("member", "GET", "/inbox?q=558000004").text)
    assert [li.attrs["id"] for li in by_phone.find("ul", id="chat-list").find_all(
        "li", class_="inbox-chat")] == [f"chat-{chat['id']}"]
    nothing = parse_html(env.page("member", "GET", "/inbox/chats?q=zzzz", htmx=True).text)
    assert nothing.find("li", class_="inbox-empty").text == "No chat matches."
    assert "No message contains" in nothing.find("section", class_="inbox-hits").text
    punctuation = env.page("member", "GET", "/inbox/chats?q=%22%22", htmx=True)
    assert punctuation.status_code == 200


def test_older_messages_load_a_page_at_a_time(env: Inbox, parse_html: Parse) -> None:
    env.inbound("15558000005", "message", count=ui_inbox.MESSAGES_PAGE + 5)
    chat = env.chat_of("15558000005")
    every = conversation_ids(env, chat["id"])
    doc = parse_html(env.page("member", "GET", f"/inbox?chat={chat['id']}").text)
    shown = [a.attrs["id"] for a in doc.find(id="messages").find_all("article")]
    assert shown == [f"msg-{i}" for i in every[-ui_inbox.MESSAGES_PAGE:]]
    button = doc.find(id=f"older-{chat['id']}").find("button")
    older = env.page("member", "GET", button.attrs["hx-get"], htmx=True)
    assert older.status_code == 200
    rest = parse_html(older.text)
    assert [a.attrs["id"] for a in rest.find_all("article")] == [f"msg-{i}" for i in every[:5]]
    assert not rest.find_all(id=f"older-{chat['id']}")


def test_fallback_polls_answer_204_until_something_changes(env: Inbox, parse_html: Parse
                                                           ) -> None:
    env.inbound("15558000006", "first")
    chat = env.chat_of("15558000006")
    page = parse_html(env.page("member", "GET", f"/inbox?chat={chat['id']}").text)
    list_poll = page.find(id="chat-list-box").find("div", data_fallback="")
    conv_poll = page.find(id="messages").find("div", data_fallback="")
    assert "every 20s" in list_poll.attrs["hx-trigger"]
    assert env.page("member", "GET", list_poll.attrs["hx-get"], htmx=True).status_code == 204
    assert env.page("member", "GET", conv_poll.attrs["hx-get"], htmx=True).status_code == 204

    env.inbound("15558000006", "second")
    changed = env.page("member", "GET", list_poll.attrs["hx-get"], htmx=True)
    assert changed.status_code == 200
    assert parse_html(changed.text).find("li", id=f"chat-{chat['id']}").find(
        "span", class_="inbox-chat-preview").text == "second"
    newer = env.page("member", "GET", conv_poll.attrs["hx-get"], htmx=True)
    assert newer.status_code == 200
    texts = [p.text for p in parse_html(newer.text).find(id="messages").find_all(
        "p", class_="msg-text")]
    assert texts[-2:] == ["first", "second"]


def events_named(stream: Any, wanted: str) -> list[dict[str, str]]:
    return stream.events_until(lambda m: m.get("event") == wanted)  # type: ignore[no-any-return]


def test_live_fragments_for_received_and_sent_messages(env: Inbox, parse_html: Parse) -> None:
    stream = env.stream("/inbox/events", cookie_of="member")
    other = env.stream("/inbox/events", cookie_of="other")
    assert stream.status == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.event() == {"comment": "connected", "retry": str(events.RETRY_MS)}
    assert other.event() is not None
    try:
        env.inbound("15558000007", "Hello <script>alert(1)</script>")
        chat = env.chat_of("15558000007")
        seen = events_named(stream, "chat")
        bubble_event = next(m for m in seen if m.get("event") == f"msgs-{chat['id']}")
        bubble = parse_html(bubble_event["data"]).find("article")
        assert bubble.attrs["class"] == "msg msg-in"
        assert bubble.attrs["sse-swap"] == bubble.attrs["id"]
        assert bubble.find("p", class_="msg-text").text == "Hello <script>alert(1)</script>"
        assert "<script>" not in bubble_event["data"]
        # The open conversation marks a message that arrives live as read.
        assert bubble.find("div", hx_post=f"/inbox/chats/{chat['id']}/read").attrs[
            "hx-trigger"] == "load delay:300ms"
        row = parse_html(seen[-1]["data"]).find("li")
        assert row.attrs["id"] == f"chat-{chat['id']}"
        assert row.find("span", class_="inbox-unread").text == "1"
        assert row.find("span", class_="inbox-chat-number").text == "via Front desk"

        assert env.page("member", "POST", f"/inbox/chats/{chat['id']}/read").status_code == 204
        read = events_named(stream, f"chat-{chat['id']}")[-1]
        assert not parse_html(read["data"]).find("li").find_all("span", class_="inbox-unread")

        sent = env.send(to="+15558000007", type="text", text="Hi! How can we help?")
        message_id = sent.json()["id"]
        appeared = events_named(stream, f"msg-{message_id}")
        names = [m.get("event") for m in appeared]
        assert f"msgs-{chat['id']}" in names and "chat" in names
        statuses = [parse_html(appeared[-1]["data"]).find("span", class_="ticks").attrs[
            "data-status"]]
        while statuses[-1] != "read":
            update = events_named(stream, f"msg-{message_id}")[-1]
            statuses.append(parse_html(update["data"]).find("article").attrs["data-status"])
        assert statuses == ["sent", "delivered", "read"]

        assert other.event(timeout=1.0) is None, "tenant B saw tenant A's messages"
    finally:
        stream.close()
        other.close()
    wait_until(lambda: env.subscribers(env.a.id) == 0, "the stream to let go")


def test_edits_and_deletions_change_the_bubble_live(env: Inbox, parse_html: Parse) -> None:
    (wa_id,) = env.inbound("15558000009", "See you at 5")
    chat = env.chat_of("15558000009")
    original = conversation_ids(env, chat["id"])[-1]
    person = protocol.Person(jid="15558000009@s.whatsapp.net", phone="15558000009")
    stream = env.stream("/inbox/events", cookie_of="member")
    assert stream.event() is not None
    try:
        edit = protocol.InboundMessage(
            session=env.number, wa_id="EDIT-1", chat=person, sender=person,
            timestamp_ms=int(time.time() * 1000), kind="text", text="See you at 6",
            edited_id=wa_id)
        env.run(env.services.ingest.handle, env.a.id, edit)  # type: ignore[attr-defined]
        edited = parse_html(events_named(stream, f"msg-{original}")[-1]["data"]).find("article")
        assert edited.find("p", class_="msg-text").text == "See you at 6"
        assert edited.find("span", class_="msg-edited").text == "edited"

        deletion = protocol.InboundMessage(
            session=env.number, wa_id="DEL-1", chat=person, sender=person,
            timestamp_ms=int(time.time() * 1000), kind="text", deleted_id=wa_id)
        env.run(env.services.ingest.handle, env.a.id, deletion)  # type: ignore[attr-defined]
        deleted = parse_html(events_named(stream, f"msg-{original}")[-1]["data"]).find("article")
        assert deleted.find("p", class_="msg-text").text == "This message was deleted"
    finally:
        stream.close()


def test_the_stream_ends_when_the_server_closes(env: Inbox) -> None:
    stream = env.stream("/inbox/events", cookie_of="owner")
    assert stream.event() is not None
    env.services.bus.publish(BusEvent(env.a.id, events.CLOSING))
    stream.body(timeout=3)
    assert stream.ended
    stream.close()


@pytest.mark.parametrize("path", ["/inbox", "/inbox/events", "/inbox/chats"])
def test_the_inbox_needs_a_signed_in_tenant_user(env: Inbox, path: str) -> None:
    anonymous = env.anonymous("GET", path)
    assert (anonymous.status_code, anonymous.headers["location"]) == (
        303, f"/login?next={path}")
    assert env.page("operator", "GET", path).status_code == 403
    keyed = env.client.get(path, headers={"Authorization": f"Bearer {env.keys['owner']}"},
                           follow_redirects=False)
    assert keyed.status_code == 303


def test_another_workspace_cannot_reach_a_chat(env: Inbox) -> None:
    env.inbound("15558000008", "private")
    chat = env.chat_of("15558000008")
    for method, path in (("GET", f"/inbox?chat={chat['id']}"),
                         ("GET", f"/inbox/chats/{chat['id']}"),
                         ("GET", f"/inbox/chats/{chat['id']}/latest"),
                         ("POST", f"/inbox/chats/{chat['id']}/read")):
        assert env.page("other", method, path, htmx=True).status_code == 404, path
    reply = env.post_form("other", f"/inbox/chats/{chat['id']}/messages",
                          {"text": "not yours", "key": "x"})
    assert reply.status_code == 404
    assert env.chat_of("15558000008")["unread"] == 1
