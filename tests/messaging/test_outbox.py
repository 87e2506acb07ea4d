"""Accepting sends: validation, idempotency, the plan's daily limit, number states, media."""

from __future__ import annotations

import asyncio
import base64
import http.server
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from whatsdex.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LimitReached,
    NotFound,
    PayloadTooLarge,
)
from whatsdex.messaging import media as media_module
from whatsdex.messaging.outbox import KEY_TTL, SendRequest
from whatsdex.store import Store
from whatsdex.webhooks import ssrf

from .conftest import Rig, make_number, make_tenant, text


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


PNG = png_bytes()
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + b"\x02\x00\x3e\x00" + b"\x00" * 100


@pytest.fixture
async def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


async def count(store: Store, sql: str, *params: Any) -> int:
    return int(await store.fetchval(sql, params))


# -- the queued row ------------------------------------------------------------------------------


async def test_an_accepted_message_is_committed_queued(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    accepted = await rig.outbox.accept(tenant, text(number, "+1 (555) 999-0001", "hi there"))
    assert not accepted.replayed
    message = accepted.message
    assert (message.status, message.direction, message.kind, message.text) == (
        "queued", "out", "text", "hi there")
    assert (message.source, message.priority, message.attempts) == ("api", 10, 0)
    row = await rig.store.fetchone(
        "SELECT m.status, c.jid, c.last_preview, c.unread FROM messages m "
        "JOIN chats c ON c.id = m.chat_id WHERE m.id = ?", (message.id,))
    assert tuple(row) == ("queued", "15559990001@s.whatsapp.net", "hi there", 0)
    campaign = await rig.outbox.accept(tenant, text(number, body="promo"), source="campaign")
    assert campaign.message.priority == 0
    assert campaign.message.chat_id == message.chat_id  # same number, same person: one chat


async def test_validation_names_the_field(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    cases: list[tuple[SendRequest, str]] = [
        (SendRequest(session_id=number, to="+15559990001", type="sticker"), "type"),
        (SendRequest(session_id="", to="+15559990001", text="x"), "session_id"),
        (SendRequest(session_id=number, to="not a number", text="x"), "to"),
        (SendRequest(session_id=number, to="+15559990001", text="  "), "text"),
        (SendRequest(session_id=number, to="+15559990001", text="x" * 65537), "text"),
        (SendRequest(session_id=number, to="+15559990001", type="image"), "media_id"),
        (SendRequest(session_id=number, to="+15559990001", type="image", media_id="m",
                     url="https://x.example/a.png"), "media_id"),
        (SendRequest(session_id=number, to="+15559990001", text="x", url="https://x/y"), "url"),
        (SendRequest(session_id=number, to="+15559990001", type="image", media_id="m",
                     voice_note=True), "voice_note"),
        (SendRequest(session_id=number, to="+15559990001", type="location", latitude=91.0,
                     longitude=0.0), "latitude"),
        (SendRequest(session_id=number, to="+15559990001", type="location", latitude=1.0),
         "longitude"),
        (SendRequest(session_id=number, to="+15559990001", type="reaction", emoji="👍"),
         "message_id"),
        (SendRequest(session_id=number, to="+15559990001", text="x", quoted_id="msg_nope"),
         "quoted_id"),
    ]
    for request, field in cases:
        with pytest.raises(BadRequest) as caught:
            await rig.outbox.accept(tenant, request)
        assert caught.value.detail["field"] == field, (request, caught.value.message)
    with pytest.raises(BadRequest) as caught:
        await rig.outbox.accept(tenant, text(number), idempotency_key="k" * 256)
    assert caught.value.detail["field"] == "Idempotency-Key"
    assert await count(rig.store, "SELECT count(*) FROM messages") == 0


async def test_number_must_be_the_tenants_and_able_to_send(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    other = await make_tenant(rig.store, name="Other")
    theirs = await make_number(rig.store, other)
    with pytest.raises(NotFound):
        await rig.outbox.accept(tenant, text("ses_missing"))
    with pytest.raises(NotFound):
        await rig.outbox.accept(tenant, text(theirs))
    for status in ("logged_out", "banned", "failed"):
        number = await make_number(rig.store, tenant, status=status)
        with pytest.raises(Conflict) as caught:
            await rig.outbox.accept(tenant, text(number))
        assert status in caught.value.message
        assert caught.value.detail["status"] == status
    never_linked = await make_number(rig.store, tenant, status="stopped", linked=False)
    with pytest.raises(Conflict, match="never linked"):
        await rig.outbox.accept(tenant, text(never_linked))
    # Linked but stopped, or still linking: the message waits in the queue.
    for status, linked in (("stopped", True), ("connecting", False), ("pairing", False),
                           ("reconnecting", True), ("new", False)):
        number = await make_number(rig.store, tenant, status=status, linked=linked)
        accepted = await rig.outbox.accept(tenant, text(number))
        assert accepted.message.status == "queued"


async def test_a_suspended_workspace_cannot_send(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE tenants SET status = 'suspended' WHERE id = ?", (tenant,)))
    with pytest.raises(Forbidden, match="suspended"):
        await rig.outbox.accept(tenant, text(number))


# -- idempotency -----------------------------------------------------------------------------------


async def test_same_key_same_request_returns_the_first_message(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    first = await rig.outbox.accept(tenant, text(number, "+15559990001"), idempotency_key="k1")
    # The same request written differently (the recipient as a JID) is the same request.
    again = await rig.outbox.accept(tenant, text(number, "15559990001@s.whatsapp.net"),
                                    idempotency_key="k1")
    assert again.replayed and again.message.id == first.message.id
    # The first message's status as it is now, not as it was.
    await rig.store.write(lambda conn: conn.execute(
        "UPDATE messages SET status = 'sent' WHERE id = ?", (first.message.id,)))
    later = await rig.outbox.accept(tenant, text(number), idempotency_key="k1")
    assert later.message.status == "sent"
    with pytest.raises(Conflict) as caught:
        await rig.outbox.accept(tenant, text(number, body="something else"),
                                idempotency_key="k1")
    assert caught.value.status_code == 409
    # Keys are per tenant.
    other = await make_tenant(rig.store, name="Other")
    theirs = await make_number(rig.store, other)
    assert not (await rig.outbox.accept(other, text(theirs), idempotency_key="k1")).replayed
    assert await count(rig.store, "SELECT count(*) FROM messages") == 2


async def test_concurrent_identical_requests_make_one_message(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    results = await asyncio.gather(*(
        rig.outbox.accept(tenant, text(number), idempotency_key="same") for _ in range(25)))
    assert len({r.message.id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert await count(rig.store, "SELECT count(*) FROM messages") == 1
    assert await count(rig.store, "SELECT accepted FROM message_counts") == 1


async def test_keys_expire_after_a_day(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    first = await rig.outbox.accept(tenant, text(number), idempotency_key="old")
    rig.clock.now += KEY_TTL - 60
    assert await rig.outbox.purge_idempotency_keys() == 0
    rig.clock.now += 120
    assert await rig.outbox.purge_idempotency_keys() == 1
    fresh = await rig.outbox.accept(tenant, text(number, body="new"), idempotency_key="old")
    assert not fresh.replayed and fresh.message.id != first.message.id


# -- the plan's daily limit ------------------------------------------------------------------------


async def test_the_daily_limit_counts_todays_messages(rig: Rig) -> None:
    tenant = await make_tenant(rig.store, per_day=3)
    one = await make_number(rig.store, tenant)
    two = await make_number(rig.store, tenant, phone="15550000002")
    await rig.outbox.accept(tenant, text(one), idempotency_key="a")
    await rig.outbox.accept(tenant, text(two))
    await rig.outbox.accept(tenant, text(one))
    with pytest.raises(LimitReached) as caught:
        await rig.outbox.accept(tenant, text(two))
    error = caught.value
    assert error.status_code == 429
    assert "3 messages per day" in error.message
    assert error.detail["limit"] == "max_messages_per_day"
    assert 0 < (error.retry_after or 0) <= 86_400
    # Replaying an accepted request is not a new message.
    assert (await rig.outbox.accept(tenant, text(one), idempotency_key="a")).replayed
    # Another tenant has its own count; tomorrow (UTC) starts afresh.
    other = await make_tenant(rig.store, per_day=3, name="Other")
    await rig.outbox.accept(other, text(await make_number(rig.store, other)))
    rig.clock.now += error.retry_after or 0
    assert (await rig.outbox.accept(tenant, text(two))).message.status == "queued"


# -- replies and reactions -------------------------------------------------------------------------


async def test_replies_and_reactions_point_at_our_messages(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    other_number = await make_number(rig.store, tenant, phone="15550000002")
    first = (await rig.outbox.accept(tenant, text(number, body="first"))).message
    reply = await rig.outbox.accept(tenant, text(number, body="reply", quoted_id=first.id))
    assert reply.message.quoted_id == first.id
    reaction = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="reaction", message_id=first.id, emoji="👍"))
    assert reaction.message.payload["reaction"] == {"message_id": first.id, "emoji": "👍"}
    chat = await rig.store.fetchone("SELECT last_preview FROM chats WHERE id = ?",
                                    (first.chat_id,))
    assert chat[0] == "reply"  # a reaction does not become the chat's latest message
    with pytest.raises(BadRequest, match="another chat"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990002", type="reaction", message_id=first.id,
            emoji="👍"))
    with pytest.raises(BadRequest, match="another number"):
        await rig.outbox.accept(tenant, text(other_number, quoted_id=first.id))


# -- media -----------------------------------------------------------------------------------------


async def test_base64_media_is_sniffed_and_checked(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    image = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", text="caption",
        base64=base64.b64encode(PNG).decode(), mimetype="image/jpeg"))
    meta = image.message.payload["media"]
    assert meta["mimetype"] == "image/png"  # the bytes decide, not the claim
    assert meta["size"] == len(PNG)
    stored = await rig.store.fetchone("SELECT origin, data FROM media WHERE id = ?",
                                      (meta["media_id"],))
    assert (stored[0], bytes(stored[1])) == ("base64", PNG)
    document = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="document", filename="../../q3.pdf",
        base64="data:application/pdf;base64," + base64.b64encode(PDF).decode()))
    assert document.message.payload["media"]["filename"] == "q3.pdf"
    with pytest.raises(BadRequest) as caught:
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="image",
            base64=base64.b64encode(PDF).decode()))
    assert "application/pdf" in caught.value.message
    with pytest.raises(BadRequest, match="cannot be sent"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="document",
            base64=base64.b64encode(ELF).decode()))
    with pytest.raises(BadRequest, match="not valid base64"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="image", base64="%%%"))


async def test_media_size_is_capped(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media_module, "MAX_BYTES", 1000)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    with pytest.raises(PayloadTooLarge):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="document",
            base64=base64.b64encode(PDF + b" " * 2000).decode()))
    with pytest.raises(PayloadTooLarge):
        await rig.media.store_upload(tenant, PDF + b" " * 2000, "big.pdf")


async def test_uploads_are_sent_by_media_id(rig: Rig) -> None:
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    upload = await rig.media.store_upload(tenant, PNG, "photo.png", "image/png")
    assert (upload.mimetype, upload.size, upload.origin) == ("image/png", len(PNG), "upload")
    accepted = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", media_id=upload.id))
    assert accepted.message.payload["media"]["media_id"] == upload.id
    with pytest.raises(BadRequest, match="cannot be a image/png"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="video", media_id=upload.id))
    other = await make_tenant(rig.store, name="Other")
    with pytest.raises(BadRequest) as caught:
        await rig.outbox.accept(other, SendRequest(
            session_id=await make_number(rig.store, other), to="+15559990001", type="image",
            media_id=upload.id))
    assert caught.value.detail["field"] == "media_id"
    with pytest.raises(BadRequest, match="cannot be sent"):
        await rig.media.store_upload(tenant, ELF, "tool")


# -- media URLs ------------------------------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"missing"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[tuple[str, dict[str, tuple[int, dict[str, str], bytes]]]]:
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    handler = type("Files", (_Files,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", routes
    server.shutdown()
    server.server_close()


async def test_media_urls_are_fetched_once(make_rig: Callable[..., Rig], web: Any) -> None:
    base, routes = web
    rig = make_rig(allow_private_urls=True)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    routes["/pics/cat%20one.png"] = (200, {"Content-Type": "image/png"}, PNG)
    routes["/moved"] = (302, {"Location": "/pics/cat%20one.png"}, b"")
    accepted = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", url=f"{base}/moved"),
        idempotency_key="u1")
    meta = accepted.message.payload["media"]
    assert (meta["mimetype"], meta["size"]) == ("image/png", len(PNG))
    row = await rig.store.fetchone("SELECT origin, filename FROM media WHERE id = ?",
                                   (meta["media_id"],))
    assert tuple(row) == ("url", "cat one.png")
    # A replay answers from the first message without fetching again.
    del routes["/pics/cat%20one.png"]
    again = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", url=f"{base}/moved"),
        idempotency_key="u1")
    assert again.replayed and again.message.id == accepted.message.id
    with pytest.raises(BadRequest, match="HTTP 404"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="image", url=f"{base}/moved"))
    routes["/ftp"] = (302, {"Location": "ftp://127.0.0.1/x.png"}, b"")
    with pytest.raises(BadRequest):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="image", url=f"{base}/ftp"))


async def test_media_url_limits(make_rig: Callable[..., Rig], web: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    base, routes = web
    rig = make_rig(allow_private_urls=True)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    monkeypatch.setattr(media_module, "MAX_BYTES", 1000)
    routes["/big"] = (200, {"Content-Type": "application/pdf"}, PDF + b" " * 5000)
    with pytest.raises(PayloadTooLarge):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="document", url=f"{base}/big"))
    # A server that does not say how long the body is: stopped while reading.
    routes["/chunked"] = (200, {"Content-Type": "application/pdf", "Connection": "close",
                                "Content-Length": ""}, PDF + b" " * 5000)
    with pytest.raises((PayloadTooLarge, BadRequest)):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="document", url=f"{base}/chunked"))
    routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(BadRequest, match="redirects"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="document", url=f"{base}/loop"))
    assert await count(rig.store, "SELECT count(*) FROM media") == 0


async def test_private_addresses_are_refused_unless_allowed(rig: Rig, web: Any) -> None:
    base, routes = web
    routes["/a.png"] = (200, {"Content-Type": "image/png"}, PNG)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    for url in (f"{base}/a.png", "http://[::1]/a.png", "http://169.254.169.254/latest",
                "http://10.1.2.3/a.png", "file:///etc/passwd"):
        with pytest.raises(BadRequest) as caught:
            await rig.outbox.accept(tenant, SendRequest(
                session_id=number, to="+15559990001", type="image", url=url))
        assert caught.value.detail["field"] == "url", url
    assert await count(rig.store, "SELECT count(*) FROM messages") == 0


async def test_redirects_are_checked_again(make_rig: Callable[..., Rig], web: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a redirect leads is checked like the URL itself: 127.0.0.1 stands in for a public
    address here, 127.0.0.2 for a private one."""
    base, routes = web
    original = ssrf.refusal

    def refusal(address: Any) -> str | None:
        return None if str(address) == "127.0.0.1" else original(address)

    monkeypatch.setattr(ssrf, "refusal", refusal)
    rig = make_rig(allow_private_urls=False)
    tenant = await make_tenant(rig.store)
    number = await make_number(rig.store, tenant)
    routes["/a.png"] = (200, {"Content-Type": "image/png"}, PNG)
    ok = await rig.outbox.accept(tenant, SendRequest(
        session_id=number, to="+15559990001", type="image", url=f"{base}/a.png"))
    assert ok.message.payload["media"]["mimetype"] == "image/png"
    port = base.rsplit(":", 1)[1]
    routes["/inside"] = (302, {"Location": f"http://127.0.0.2:{port}/a.png"}, b"")
    with pytest.raises(BadRequest, match="loopback"):
        await rig.outbox.accept(tenant, SendRequest(
            session_id=number, to="+15559990001", type="image", url=f"{base}/inside"))


async def test_queue_in_commits_with_the_callers_write(rig: Rig) -> None:
    tenant = await make_tenant(rig.store, per_day=2)
    number = await make_number(rig.store, tenant)

    def batch(conn: Any) -> list[str]:
        queued = [rig.outbox.queue_in(conn, tenant, text(number, f"+1555999000{i}"),
                                      source="campaign", now=rig.clock(),
                                      hints={"typing_seconds": 2}).id for i in range(2)]
        conn.execute("CREATE TABLE IF NOT EXISTS bookkeeping (n INTEGER)")
        conn.execute("INSERT INTO bookkeeping VALUES (2)")
        return queued

    ids = await rig.store.write(batch)
    rows = await rig.store.fetchall(
        "SELECT status, source, priority, payload FROM messages ORDER BY created_at")
    assert [tuple(r)[:3] for r in rows] == [("queued", "campaign", 0)] * 2
    assert '"hints":{"typing_seconds":2.0}' in rows[0][3] and len(ids) == 2

    def over(conn: Any) -> None:
        rig.outbox.queue_in(conn, tenant, text(number), source="campaign", now=rig.clock())

    with pytest.raises(LimitReached):
        await rig.store.write(over)
    with pytest.raises(BadRequest) as caught:
        await rig.store.write(lambda conn: rig.outbox.queue_in(
            conn, tenant, SendRequest(session_id=number, to="+15559990001", type="image",
                                      url="https://x.example/a.png"),
            source="campaign", now=rig.clock()))
    assert caught.value.detail["field"] == "url"
    assert await count(rig.store, "SELECT count(*) FROM messages") == 2
