"""Accepting a send: validate it, fetch or decode its media, and commit it as a queued row.

The API answers 202 only after `Outbox.accept` returns, and by then the message is committed:
a crash afterwards cannot lose it. Idempotency keys, the plan's daily limit and the number's
state are all checked in that same transaction, so concurrent requests cannot slip past them.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from whatsdex.clock import Clock, iso
from whatsdex.errors import BadRequest, Conflict, Forbidden, LimitReached, NotFound
from whatsdex.messaging import MEDIA_KINDS, OUTBOUND_KINDS, PRIORITY, SOURCES, media
from whatsdex.messaging.recipients import Recipient, normalise
from whatsdex.settings import Settings
from whatsdex.store import Store, plans, tenants, wa_sessions
from whatsdex.store import chats as chat_rows
from whatsdex.store import contacts as contact_rows
from whatsdex.store import media as media_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.ids import new_id
from whatsdex.store.messages import Message

MAX_TEXT = 65536
MAX_KEY = 255
MAX_TYPING = 60.0
KEY_TTL = 24 * 3600.0
# A number in these states cannot send until someone acts: refuse rather than queue forever.
REFUSING = {
    "logged_out": "it was logged out; link it again with a new scan",
    "banned": "WhatsApp banned it",
    "failed": "it failed; see its status and start it again",
}


class SendRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One message to send, as the API and the inbox describe it."""

    session_id: str
    to: str
    type: str = "text"
    text: str = ""  # the text, or a media caption
    media_id: str = ""  # an uploaded file
    url: str = ""  # or a URL, fetched once when the message is accepted
    base64: str = ""  # or the bytes themselves (a data: URL works too)
    mimetype: str = ""  # a hint for url/base64 media; the bytes decide
    filename: str = ""  # shown for documents
    voice_note: bool = False  # audio only: send as a push-to-talk voice note
    latitude: float | None = None
    longitude: float | None = None
    name: str = ""  # location name
    message_id: str = ""  # reaction: the message (ours, by id) reacted to
    emoji: str = ""  # reaction: the emoji; empty removes an earlier reaction
    quoted_id: str = ""  # reply to this message (ours, by id)


@dataclass(frozen=True, slots=True)
class Accepted:
    message: Message
    replayed: bool  # an earlier request with the same Idempotency-Key: nothing new was queued


@dataclass(frozen=True, slots=True)
class _Checked:
    request: SendRequest
    recipient: Recipient
    source: str
    key: str
    request_hash: str


class Outbox:
    def __init__(self, store: Store, settings: Settings, clock: Clock, library: media.MediaLibrary,
                 *, on_queued: Callable[[str, str], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.media = library
        # Told (tenant_id, session_id) after each commit: the delivery service wakes that number.
        self.on_queued = on_queued

    async def accept(self, tenant_id: str, request: SendRequest, *, source: str = "api",
                     idempotency_key: str | None = None) -> Accepted:
        """Validate and queue one message; returns it once committed (status `queued`)."""
        checked = validate(request, source=source, idempotency_key=idempotency_key)
        if checked.key:
            replay = await self._replay(tenant_id, checked)
            if replay is not None:
                return replay
        prepared = await self._media(tenant_id, checked.request)
        now = self.clock()
        accepted = await self.store.write(
            lambda conn: self._insert(conn, tenant_id, checked, prepared, now))
        if not accepted.replayed and self.on_queued is not None:
            self.on_queued(tenant_id, accepted.message.session_id)
        return accepted

    def queue_in(self, conn: sqlite3.Connection, tenant_id: str, request: SendRequest, *,
                 source: str, now: float, hints: dict[str, Any] | None = None) -> Message:
        """Queue one message inside the caller's write, committed with the caller's changes.

        Campaigns mark a recipient and queue its message in one transaction. Media must be
        uploaded already (`media_id`): nothing is fetched inside a transaction. `hints` tell
        the delivery how to send (`typing_seconds`). The caller wakes the number after its
        commit (`on_queued`). Raises like `accept` does, and then writes nothing.
        """
        if request.url or request.base64:
            raise BadRequest("Inside a batch, media must be uploaded first and sent by "
                             "`media_id`", {"field": "url" if request.url else "base64"})
        checked = validate(request, source=source)
        return self._insert(conn, tenant_id, checked, None, now, hints).message

    async def _replay(self, tenant_id: str, checked: _Checked) -> Accepted | None:
        """The answer to a repeated key, read without waiting for the writer (the common case)."""
        found = await message_rows.get_key_async(self.store, tenant_id, checked.key)
        if found is None:
            return None
        request_hash, message_id = found
        if request_hash != checked.request_hash:
            raise _key_conflict()
        message = await message_rows.get(self.store, tenant_id, message_id)
        return None if message is None else Accepted(message=message, replayed=True)

    async def _media(self, tenant_id: str, request: SendRequest) -> media.Prepared | None:
        """URL and base64 media, fetched or decoded and checked before the transaction."""
        if request.type not in MEDIA_KINDS or request.media_id:
            return None
        if request.url:
            data, content_type, filename = await self.media.fetch_url(request.url)
            declared, field, origin = request.mimetype or content_type, "url", "url"
        else:
            data, declared = media.decode_base64(request.base64)
            declared, field, origin = request.mimetype or declared, "base64", "base64"
            filename = ""
        prepared = await asyncio.to_thread(
            self.media.prepare, tenant_id, data, filename=request.filename or filename,
            declared_type=declared, origin=origin, field=field)
        media.check_kind(request.type, prepared.media.mimetype, field=field)
        return prepared

    def _insert(self, conn: sqlite3.Connection, tenant_id: str, checked: _Checked,
                prepared: media.Prepared | None, now: float,
                hints: dict[str, Any] | None = None) -> Accepted:
        request, recipient = checked.request, checked.recipient
        stamp = iso(now)
        if checked.key:
            found = message_rows.get_key(conn, tenant_id, checked.key)
            if found is not None:
                if found[0] != checked.request_hash:
                    raise _key_conflict()
                existing = message_rows.get_sync(conn, tenant_id, found[1])
                if existing is not None:
                    return Accepted(message=existing, replayed=True)
                # Its message is gone (the number was deleted): the key starts afresh.
                message_rows.delete_key(conn, tenant_id, checked.key)
        _check_tenant(conn, tenant_id)
        session = wa_sessions.get_sync(conn, tenant_id, request.session_id)
        if session is None:
            raise NotFound("Number not found", {"field": "session_id"})
        _check_session(session.status, session.jid, session.status_reason)
        _check_daily_limit(conn, tenant_id, now)

        payload: dict[str, Any] = {}
        text = request.text
        chat_id: str | None = None
        if request.type in MEDIA_KINDS:
            payload["media"] = _media_payload(conn, tenant_id, request, prepared)
        elif request.type == "location":
            payload["location"] = {"latitude": request.latitude, "longitude": request.longitude,
                                   "name": request.name}
            text = text or request.name
        elif request.type == "reaction":
            target = _target(conn, tenant_id, request.message_id, "message_id",
                             request.session_id)
            if target["chat_jid"] != recipient.jid:
                raise BadRequest("`message_id` is a message of another chat than `to`",
                                 {"field": "message_id"})
            payload["reaction"] = {"message_id": target["id"], "emoji": request.emoji}
            chat_id = str(target["chat_id"])
            text = ""
        if request.quoted_id:
            _target(conn, tenant_id, request.quoted_id, "quoted_id", request.session_id)
        if hints:
            payload["hints"] = _hints(hints)

        if chat_id is None:  # a reaction does not move its chat's latest message
            contact = (contact_rows.find(conn, tenant_id, phone=recipient.phone)
                       if recipient.phone else None)
            chat_id = chat_rows.upsert(
                conn, tenant_id, new_id=new_id("cht"), session_id=request.session_id,
                jid=recipient.jid, is_group=recipient.is_group,
                contact_id=None if contact is None else str(contact["id"]), at=stamp,
                last_preview=text or f"[{request.type}]")
        message = Message(
            id=new_id("msg"), tenant_id=tenant_id, session_id=request.session_id,
            chat_id=chat_id, direction="out", wa_id=None, sender_jid="", sender_lid="",
            sender_phone="", push_name="", kind=request.type, text=text, payload=payload,
            quoted_id=request.quoted_id, status="queued", status_reason="",
            source=checked.source, priority=PRIORITY[checked.source], attempts=0,
            next_attempt_at=None, created_at=stamp, wa_timestamp=None, sent_at=None,
            delivered_at=None, read_at=None, played_at=None, failed_at=None, edited_at=None,
            deleted_at=None,
        )
        message_rows.insert(conn, message)
        message_rows.count_accepted(conn, tenant_id, request.session_id, stamp[:10])
        if checked.key:
            message_rows.insert_key(conn, tenant_id, checked.key, checked.request_hash,
                                    message.id, stamp)
        return Accepted(message=message, replayed=False)

    async def purge_idempotency_keys(self) -> int:
        """Forget keys older than 24 h (a periodic job)."""
        cutoff = iso(self.clock() - KEY_TTL)
        return await self.store.write(lambda conn: message_rows.purge_keys(conn, cutoff))


# -- validation ----------------------------------------------------------------------------------


def validate(request: SendRequest, *, source: str = "api", idempotency_key: str | None = None
             ) -> _Checked:
    """Everything that can be checked without the database; 400 naming the field otherwise."""
    if source not in SOURCES:
        raise ValueError(f"unknown message source {source!r}")
    key = (idempotency_key or "").strip()
    if len(key) > MAX_KEY or (key and not key.isprintable()):
        raise BadRequest(f"The Idempotency-Key must be at most {MAX_KEY} printable characters",
                         {"field": "Idempotency-Key"})
    kind = request.type
    if kind not in OUTBOUND_KINDS:
        raise BadRequest(f"`type` must be one of {', '.join(OUTBOUND_KINDS)}", {"field": "type"})
    if not request.session_id:
        raise BadRequest("`session_id` is required: the number to send from",
                         {"field": "session_id"})
    recipient = normalise(request.to, field="to")
    if len(request.text) > MAX_TEXT:
        raise BadRequest(f"`text` may have at most {MAX_TEXT} characters", {"field": "text"})
    sources = [name for name in ("media_id", "url", "base64") if getattr(request, name)]
    if kind in MEDIA_KINDS:
        if len(sources) != 1:
            raise BadRequest(f"A {kind} needs exactly one of `media_id`, `url` or `base64`",
                             {"field": "media_id"})
    elif sources:
        raise BadRequest(f"A {kind} message carries no media; remove `{sources[0]}`",
                         {"field": sources[0]})
    if request.voice_note and kind != "audio":
        raise BadRequest("`voice_note` applies to audio only", {"field": "voice_note"})
    if kind == "text" and not request.text.strip():
        raise BadRequest("A text message needs `text`", {"field": "text"})
    if kind == "location":
        _coordinate(request.latitude, "latitude", 90.0)
        _coordinate(request.longitude, "longitude", 180.0)
    if kind == "reaction":
        if not request.message_id:
            raise BadRequest("A reaction needs `message_id`: the message reacted to",
                             {"field": "message_id"})
        if len(request.emoji) > 16 or (request.emoji and not request.emoji.strip()):
            raise BadRequest("`emoji` must be one emoji (or empty to remove a reaction)",
                             {"field": "emoji"})
        if request.quoted_id:
            raise BadRequest("A reaction cannot quote a message", {"field": "quoted_id"})
    request = msgspec.structs.replace(request, to=recipient.jid)
    # Hashed after normalising, so "+1 555…" and "1555…@s.whatsapp.net" are the same request.
    request_hash = hashlib.sha256(msgspec.json.encode(request)).hexdigest()
    return _Checked(request=request, recipient=recipient, source=source, key=key,
                    request_hash=request_hash)


def _hints(hints: dict[str, Any]) -> dict[str, Any]:
    """How to send, beyond what to send: `typing_seconds` to wait (seen as typing) first."""
    typing = hints.get("typing_seconds")
    if typing is None:
        return {}
    if not isinstance(typing, int | float) or not 0 <= typing <= MAX_TYPING:
        raise ValueError(f"typing_seconds must be between 0 and {MAX_TYPING}")
    return {"typing_seconds": float(typing)}


def _coordinate(value: float | None, field: str, bound: float) -> None:
    if value is None or not math.isfinite(value) or not -bound <= value <= bound:
        raise BadRequest(f"A location needs `{field}` between {-bound:g} and {bound:g}",
                         {"field": field})


def _key_conflict() -> Conflict:
    return Conflict(
        "This Idempotency-Key was already used with a different request; use a new key",
        {"field": "Idempotency-Key"},
    )


def _check_tenant(conn: sqlite3.Connection, tenant_id: str) -> None:
    tenant = tenants.get_tenant_sync(conn, tenant_id)
    if tenant is None:
        raise NotFound("Tenant not found")
    if tenant.status != "active":
        raise Forbidden("This workspace is suspended: it cannot send messages")


def _check_session(status: str, jid: str, reason: str) -> None:
    why = REFUSING.get(status)
    if why is None and status == "stopped" and not jid:
        why = "it was never linked; start it and scan the QR code"
    if why is not None:
        raise Conflict(
            f"This number cannot send messages ({status}): {why}",
            {"field": "session_id", "status": status, "reason": reason},
        )


def _check_daily_limit(conn: sqlite3.Connection, tenant_id: str, now: float) -> None:
    plan = plans.tenant_plan(conn, tenant_id)
    if plan is None:
        raise NotFound("Tenant not found")
    day = iso(now)[:10]
    used = message_rows.accepted_on(conn, tenant_id, day)
    if used + 1 > plan.max_messages_per_day:
        moment = datetime.fromtimestamp(now, UTC)
        midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                         microsecond=0)
        raise LimitReached(
            f"Daily message limit reached: the {plan.name} plan allows "
            f"{plan.max_messages_per_day} messages per day (UTC)",
            {"limit": "max_messages_per_day", "allowed": plan.max_messages_per_day,
             "current": used, "plan": plan.id},
            retry_after=max(1, math.ceil((midnight - moment).total_seconds())),
        )


def _target(conn: sqlite3.Connection, tenant_id: str, message_id: str, field: str,
            session_id: str) -> dict[str, Any]:
    """A message a reply or reaction points at: ours, of the same number."""
    row = message_rows.target_for_send(conn, tenant_id, message_id)
    if row is None:
        raise BadRequest(f"`{field}`: no message {message_id!r}", {"field": field})
    if row["session_id"] != session_id:
        raise BadRequest(f"`{field}` is a message of another number", {"field": field})
    chat = chat_rows.get_sync(conn, tenant_id, str(row["chat_id"]))
    return {**dict(row), "chat_jid": "" if chat is None else chat.jid}


def _media_payload(conn: sqlite3.Connection, tenant_id: str, request: SendRequest,
                   prepared: media.Prepared | None) -> dict[str, Any]:
    if prepared is None:
        row = media_rows.get_sync(conn, tenant_id, request.media_id)
        if row is None or row.origin == "inbound":
            raise BadRequest(f"`media_id`: no uploaded media {request.media_id!r}",
                             {"field": "media_id"})
        media.check_kind(request.type, row.mimetype, field="media_id")
    else:
        row = prepared.media
        media_rows.insert(conn, row, prepared.data)
    described: dict[str, Any] = {
        "media_id": row.id, "mimetype": row.mimetype, "size": row.size, "sha256": row.sha256,
    }
    filename = media.clean_filename(request.filename) or row.filename
    if request.type == "document":
        described["filename"] = filename or "document"
    if request.voice_note:
        described["voice_note"] = True
    return described
