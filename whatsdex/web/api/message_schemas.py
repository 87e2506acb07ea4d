"""Request and response bodies of the messages API: sends, media, message history and chats.

Like `schemas.py`, responses are built field by field from store rows. The send body mirrors
the messaging core's `SendRequest` without `session_id` (that is in the URL); the core checks
what depends on the type (text needs `text`, media exactly one source…) and names the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from whatsdex.messaging import OUTBOUND_KINDS
from whatsdex.store.chats import Chat
from whatsdex.store.media import Media
from whatsdex.store.messages import Message

MAX_PAGE = 200
DEFAULT_PAGE = 50

Kind = Annotated[str, Meta(description="One of: " + ", ".join(OUTBOUND_KINDS),
                           examples=["text"])]
Status = Literal["received", "queued", "sending", "sent", "delivered", "read", "played",
                 "failed"]


# -- Requests ----------------------------------------------------------------------------------

class MessageCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """One message to send. Media (`image`, `video`, `audio`, `document`) takes exactly one of
    `media_id` (uploaded with `POST /media`), `url` (fetched once, now) or `base64`."""

    to: Annotated[str, Meta(description="A phone number in international format or a "
                                        "WhatsApp JID (person, LID or group)",
                            examples=["+15551234567"])]
    type: Kind
    text: Annotated[str, Meta(description="The text; for media, use `caption`")] = ""
    media_id: Annotated[str, Meta(description="An uploaded file's id")] = ""
    url: Annotated[str, Meta(description="An http(s) URL to fetch the media from")] = ""
    base64: Annotated[str, Meta(description="The media bytes, base64 or a `data:` URL")] = ""
    filename: Annotated[str, Meta(description="Shown for documents")] = ""
    mimetype: Annotated[str, Meta(description="A hint for `url`/`base64` media; the bytes "
                                              "decide")] = ""
    caption: Annotated[str, Meta(description="Text shown under media")] = ""
    voice_note: Annotated[bool, Meta(description="Audio only: a push-to-talk voice note")] = False
    latitude: float | None = None
    longitude: float | None = None
    name: Annotated[str, Meta(description="A location's name")] = ""
    message_id: Annotated[str, Meta(description="Reaction: the message reacted to")] = ""
    emoji: Annotated[str, Meta(description="Reaction: the emoji; empty removes it")] = ""
    quoted_id: Annotated[str, Meta(description="Reply to this message (its id here)")] = ""


# -- Responses ---------------------------------------------------------------------------------

class MessageAccepted(Struct, kw_only=True):
    """Queued: committed, so it is never lost. Follow it with `GET /messages/{id}` or the
    `message.status` webhook."""

    id: str
    status: Status


class Timestamps(Struct, kw_only=True):
    """When the message reached each status (null: not (yet) reached)."""

    queued: str | None
    received: str | None
    sent: str | None
    delivered: str | None
    read: str | None
    played: str | None
    failed: str | None


class SenderOut(Struct, kw_only=True):
    """Who sent an inbound message: the phone JID and the LID where WhatsApp said."""

    jid: str
    lid: str
    phone: str
    push_name: str


class MessageOut(Struct, kw_only=True):
    id: str
    session_id: str
    chat_id: str
    direction: Literal["in", "out"]
    type: str
    text: str
    status: Status
    reason: Annotated[str, Meta(description="Why it failed, or why it still waits")]
    source: Annotated[str, Meta(description="api, inbox or campaign for our sends; empty for "
                                            "received messages and sends from the phone")]
    wa_id: str | None
    sender: SenderOut | None
    quoted_id: str
    media: dict[str, Any] | None
    location: dict[str, Any] | None
    reaction: dict[str, Any] | None
    timestamps: Timestamps
    created_at: str
    edited_at: str | None
    deleted_at: str | None

    @classmethod
    def of(cls, m: Message) -> MessageOut:
        inbound = m.direction == "in"
        sender = None
        if inbound or m.sender_jid:
            sender = SenderOut(jid=m.sender_jid, lid=m.sender_lid, phone=m.sender_phone,
                               push_name=m.push_name)
        return cls(
            id=m.id, session_id=m.session_id, chat_id=m.chat_id,
            direction=m.direction,  # type: ignore[arg-type]
            type=m.kind, text=m.text, status=m.status,  # type: ignore[arg-type]
            reason=m.status_reason, source=m.source, wa_id=m.wa_id, sender=sender,
            quoted_id=m.quoted_id, media=_part(m, "media"), location=_part(m, "location"),
            reaction=_part(m, "reaction"),
            timestamps=Timestamps(
                queued=None if inbound else m.created_at,
                received=m.created_at if inbound else None,
                sent=m.sent_at, delivered=m.delivered_at, read=m.read_at, played=m.played_at,
                failed=m.failed_at),
            created_at=m.created_at, edited_at=m.edited_at, deleted_at=m.deleted_at,
        )


# What the engine keeps to download received media later: internal, and large.
_INTERNAL = frozenset({"message"})


def _part(m: Message, key: str) -> dict[str, Any] | None:
    value = m.payload.get(key)
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if k not in _INTERNAL}


class MessagePage(Struct, kw_only=True):
    """Newest first; pass `next_cursor` as `cursor` for the next (older) page."""

    items: list[MessageOut]
    next_cursor: str | None


class ChatOut(Struct, kw_only=True):
    id: str
    session_id: Annotated[str, Meta(description="The number this conversation belongs to")]
    jid: str
    lid: str
    is_group: bool
    name: Annotated[str, Meta(description="The chat's or contact's name, when known")]
    phone: str
    contact_id: str | None
    last_message_at: str
    last_preview: str
    unread: int

    @classmethod
    def of(cls, c: Chat) -> ChatOut:
        return cls(id=c.id, session_id=c.session_id, jid=c.jid, lid=c.lid, is_group=c.is_group,
                   name=c.name or c.contact_name, phone=c.phone, contact_id=c.contact_id,
                   last_message_at=c.last_message_at, last_preview=c.last_preview,
                   unread=c.unread)


class ChatPage(Struct, kw_only=True):
    """Most recent first; pass `next_cursor` as `cursor` for the next page."""

    items: list[ChatOut]
    next_cursor: str | None


class ChatReadOut(Struct, kw_only=True):
    id: str
    unread: int
    marked: Annotated[int, Meta(description="How many messages were unread")]
    receipts_sent: Annotated[int, Meta(description="Read receipts sent to WhatsApp (0 while "
                                                   "the number is not connected)")]


class MediaOut(Struct, kw_only=True):
    """An uploaded file: send it with `{"type": "image", "media_id": id}` (or the type it is)."""

    id: str
    mimetype: str
    size: int
    sha256: str
    filename: str
    created_at: str

    @classmethod
    def of(cls, m: Media) -> MediaOut:
        return cls(id=m.id, mimetype=m.mimetype, size=m.size, sha256=m.sha256,
                   filename=m.filename, created_at=m.created_at)
