"""neonize's protobuf objects ↔ the engine protocol: pure functions, no call into Go.

Everything the neonize engine reads from WhatsApp (messages, receipts, connection events) is
turned into `whatsdex.sessions.protocol` events here, and the outgoing messages it can build
without the library (text, quoted replies, locations, reactions) are built here, so all of it
is testable with neonize's own protobuf classes and no network.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from neonize.proto.Neonize_pb2 import (
    JID,
    ConnectFailure,
    ConnectFailureReason,
    Device,
    LoggedOut,
    PairStatus,
    Receipt,
    StreamError,
    TemporaryBan,
)
from neonize.proto.Neonize_pb2 import Message as MessageEv
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    ContextInfo,
    ExtendedTextMessage,
    LocationMessage,
    Message,
    ProtocolMessage,
    ReactionMessage,
)

from whatsdex.sessions import protocol

PHONE_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"
GROUP_SERVER = "g.us"
# whatsmeow's QR channel: the first code lasts 60 s, each later one 20 s (qrchan.go).
FIRST_QR_SECONDS = 60.0
NEXT_QR_SECONDS = 20.0
# Anything below this is seconds, not milliseconds (1e11 ms is 1973; 1e11 s is year 5138).
_MS_THRESHOLD = 100_000_000_000

# Wrappers whatsmeow may leave around the content; each holds the real message in `.message`.
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "editedMessage",
    "deviceSentMessage",
    "lottieStickerMessage",
)
_MEDIA = {
    "imageMessage": "image",
    "videoMessage": "video",
    "ptvMessage": "video",
    "audioMessage": "audio",
    "documentMessage": "document",
    "stickerMessage": "sticker",
}
_RECEIPTS: dict[int, Any] = {
    Receipt.DELIVERED: "delivered",
    Receipt.READ: "read",
    Receipt.PLAYED: "played",
}
_FAILURES: dict[int, tuple[str, bool]] = {
    # reason → (what it means, whether connecting again later can help)
    ConnectFailureReason.GENERIC: ("WhatsApp refused the connection", True),
    ConnectFailureReason.LOGGED_OUT: ("the device was removed from the phone", False),
    ConnectFailureReason.TEMP_BANNED: ("the number is temporarily banned", False),
    ConnectFailureReason.MAIN_DEVICE_GONE: ("the phone's WhatsApp account is gone", False),
    ConnectFailureReason.UNKNOWN_LOGOUT: ("the device was logged out", False),
    ConnectFailureReason.CLIENT_OUTDATED: (
        "WhatsApp says this client version is outdated; upgrade WhatsDeX", False),
    ConnectFailureReason.BAD_USER_AGENT: ("WhatsApp rejected the client's user agent", False),
    ConnectFailureReason.INTERNAL_SERVER_ERROR: ("WhatsApp had an internal server error", True),
    ConnectFailureReason.EXPERIMENTAL: ("WhatsApp refused the connection (experimental)", True),
    ConnectFailureReason.SERVICE_UNAVAILABLE: ("WhatsApp is temporarily unavailable", True),
}
# whatsmeow reconnects by itself after these (a 5xx from the server).
_SELF_RECONNECTING = frozenset({
    ConnectFailureReason.INTERNAL_SERVER_ERROR, ConnectFailureReason.SERVICE_UNAVAILABLE,
})
_BAN_REASONS: dict[int, str] = {
    TemporaryBan.SEND_TO_TOO_MANY_PEOPLE: "sent to too many people",
    TemporaryBan.BLOCKED_BY_USERS: "blocked by too many users",
    TemporaryBan.CREATED_TOO_MANY_GROUPS: "created too many groups",
    TemporaryBan.SENT_TOO_MANY_SAME_MESSAGE: "sent the same message too many times",
    TemporaryBan.BROADCAST_LIST: "broadcast list abuse",
}


# -- addresses -----------------------------------------------------------------------------------


def jid_string(jid: JID) -> str:
    """`user@server` without the device part; "" for an empty JID."""
    if not jid.Server:
        return ""
    return f"{jid.User}@{jid.Server}" if jid.User else str(jid.Server)


def person(jid: JID, alt: JID | None = None) -> protocol.Person:
    """A chat or sender with both its phone JID and its LID when whatsmeow knows both.

    Senders are more and more often LIDs (`Server == "lid"`); whatsmeow then puts the phone
    JID, when it knows it, in `SenderAlt` (or `RecipientAlt` for the other side of a chat).
    """
    phone_jid: JID | None = None
    lid_jid: JID | None = None
    for candidate in (jid, alt):
        if candidate is None or not candidate.User:
            continue
        if candidate.Server == PHONE_SERVER and phone_jid is None:
            phone_jid = candidate
        elif candidate.Server == LID_SERVER and lid_jid is None:
            lid_jid = candidate
    if phone_jid is None and lid_jid is None:
        return protocol.Person(jid=jid_string(jid))  # a group, broadcast list or newsletter
    lid = jid_string(lid_jid) if lid_jid is not None else ""
    if phone_jid is None:
        return protocol.Person(jid=lid, lid=lid)
    return protocol.Person(jid=jid_string(phone_jid), lid=lid, phone=str(phone_jid.User))


def parse_address(address: str) -> JID:
    """A JID for sending; bare digits mean a phone number. ValueError if it is not one."""
    user, at, server = address.strip().partition("@")
    user = user.removeprefix("+") if not at else user
    if not at:
        server = PHONE_SERVER
    if server in (PHONE_SERVER, LID_SERVER):
        valid = user.isascii() and user.isdigit() and 5 <= len(user) <= 20
    elif server == GROUP_SERVER:
        parts = user.split("-")
        valid = bool(user) and all(part.isascii() and part.isdigit() for part in parts)
    else:
        valid = False
    if not valid:
        raise ValueError(f"{address!r} is not a WhatsApp address")
    return JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def to_ms(value: int) -> int:
    """neonize stamps messages in ms and receipts in s (it changed between versions): ms."""
    value = int(value)
    return value if value >= _MS_THRESHOLD else value * 1000


# -- inbound messages ----------------------------------------------------------------------------


def unwrap(message: Message) -> Message:
    """The content inside ephemeral, view-once, edited and similar wrappers."""
    for _ in range(8):  # wrappers can nest (ephemeral view-once); a bound against loops
        for field in _WRAPPERS:
            if message.HasField(field) and getattr(message, field).HasField("message"):
                message = getattr(message, field).message
                break
        else:
            return message
    return message


def message_text(message: Message) -> str:
    """The text of a text message or the caption of a media message."""
    message = unwrap(message)
    if message.conversation:
        return str(message.conversation)
    if message.HasField("extendedTextMessage"):
        return str(message.extendedTextMessage.text)
    for field in ("imageMessage", "videoMessage", "documentMessage"):
        if message.HasField(field):
            return str(getattr(message, field).caption)
    return ""


def _quoted_id(message: Message) -> str:
    for field, _value in message.ListFields():
        content = getattr(message, field.name)
        if hasattr(content, "contextInfo") and content.HasField("contextInfo"):
            return str(content.contextInfo.stanzaID)
    return ""


def media_details(field: str, content: Any) -> dict[str, Any]:
    """What the inbox shows and what `download_any` needs later (the media message, base64)."""
    stored = type(content)()
    stored.CopyFrom(content)
    # The quoted message and thumbnails are not needed to download; they only make rows fat.
    for heavy in ("contextInfo", "JPEGThumbnail", "pngThumbnail", "streamingSidecar"):
        if heavy in type(content).DESCRIPTOR.fields_by_name:
            stored.ClearField(heavy)
    wrapper = Message()
    getattr(wrapper, field).CopyFrom(stored)
    details: dict[str, Any] = {
        "type": _MEDIA[field],
        "mimetype": str(content.mimetype),
        "size": int(content.fileLength),
        "sha256": bytes(content.fileSHA256).hex(),
        "message": base64.b64encode(wrapper.SerializePartialToString()).decode(),
    }
    names = type(content).DESCRIPTOR.fields_by_name
    for source, key in (("caption", "caption"), ("fileName", "filename"), ("title", "title"),
                        ("seconds", "seconds"), ("width", "width"), ("height", "height"),
                        ("pageCount", "pages")):
        if source in names and content.HasField(source):
            details[key] = getattr(content, source)
    if field == "audioMessage":
        details["voice_note"] = bool(content.PTT)
    if field == "stickerMessage":
        details["animated"] = bool(content.isAnimated)
    if field == "ptvMessage":
        details["video_note"] = True
    return details


def inbound_message(session: str, event: MessageEv) -> protocol.InboundMessage | None:
    """A `MessageEv` as the protocol's InboundMessage (None if it carries no message id)."""
    info = event.Info
    source = info.MessageSource
    if not info.ID:
        return None
    from_me = bool(source.IsFromMe)
    sender = person(source.Sender, source.SenderAlt)
    if source.IsGroup:
        chat = person(source.Chat)
    elif from_me:
        chat = person(source.Chat, source.RecipientAlt)
    elif source.Chat.User == source.Sender.User and source.Chat.Server == source.Sender.Server:
        chat = person(source.Chat, source.SenderAlt)
    else:
        chat = person(source.Chat)
    fields: dict[str, Any] = {}
    message = unwrap(event.Message)
    kind = "other"
    text = ""
    if message.conversation:
        kind, text = "text", str(message.conversation)
    elif message.HasField("extendedTextMessage"):
        kind, text = "text", str(message.extendedTextMessage.text)
    elif message.HasField("protocolMessage"):
        kind, text = _protocol_message(message.protocolMessage, fields)
    elif message.HasField("reactionMessage"):
        kind = "reaction"
        fields["reaction_to"] = str(message.reactionMessage.key.ID)
        fields["reaction"] = str(message.reactionMessage.text)  # "" = the reaction was removed
    elif message.HasField("locationMessage") or message.HasField("liveLocationMessage"):
        kind, text = "location", _location(message, fields)
    else:
        for field, media_kind in _MEDIA.items():
            if message.HasField(field):
                kind = media_kind
                fields["media"] = media_details(field, getattr(message, field))
                text = str(fields["media"].get("caption", ""))
                break
    if kind in ("text", "image", "video", "audio", "document", "sticker", "location"):
        fields["quoted_id"] = _quoted_id(message)
    return protocol.InboundMessage(
        session=session,
        wa_id=str(info.ID),
        chat=chat,
        sender=sender,
        from_me=from_me,
        is_group=bool(source.IsGroup),
        timestamp_ms=to_ms(info.Timestamp) if info.Timestamp else int(time.time() * 1000),
        push_name=str(info.Pushname),
        kind=kind,
        text=text,
        **fields,
    )


def _protocol_message(content: ProtocolMessage, fields: dict[str, Any]) -> tuple[str, str]:
    if content.type == ProtocolMessage.MESSAGE_EDIT and content.HasField("editedMessage"):
        fields["edited_id"] = str(content.key.ID)
        return "edit", message_text(content.editedMessage)
    if content.type == ProtocolMessage.REVOKE and content.HasField("key"):
        fields["deleted_id"] = str(content.key.ID)
        return "delete", ""
    return "other", ""  # history sync notices, key shares and other housekeeping


def _location(message: Message, fields: dict[str, Any]) -> str:
    if message.HasField("locationMessage"):
        content = message.locationMessage
        fields["location"] = {
            "latitude": float(content.degreesLatitude),
            "longitude": float(content.degreesLongitude),
            "name": str(content.name),
            "address": str(content.address),
            "live": False,
        }
        return str(content.name or content.address)
    live = message.liveLocationMessage
    fields["location"] = {
        "latitude": float(live.degreesLatitude),
        "longitude": float(live.degreesLongitude),
        "name": str(live.caption),
        "address": "",
        "live": True,
    }
    return str(live.caption)


def receipt_event(session: str, event: Receipt) -> protocol.ReceiptEvent | None:
    """Delivered/read/played receipts; None for the kinds the product ignores (retry, sender…).

    `Type` is a proto2 enum defaulting to DELIVERED: an unknown type arrives unset and must not
    be mistaken for a delivery.
    """
    if not event.HasField("Type"):
        return None
    status = _RECEIPTS.get(event.Type)
    if status is None or not event.MessageIDs:
        return None
    source = event.MessageSource
    return protocol.ReceiptEvent(
        session=session,
        chat=person(source.Chat, None if source.IsGroup else source.SenderAlt),
        sender=person(source.Sender, source.SenderAlt),
        message_ids=[str(message_id) for message_id in event.MessageIDs],
        status=status,
        timestamp_ms=to_ms(event.Timestamp) if event.Timestamp else int(time.time() * 1000),
    )


# -- connection events ---------------------------------------------------------------------------


def connected(session: str, me: Device | None) -> protocol.Connected:
    if me is None:
        return protocol.Connected(session=session, jid="")
    return protocol.Connected(session=session, jid=jid_string(me.JID), lid=jid_string(me.LID),
                              push_name=str(me.PushName))


def pair_status(
    session: str, event: PairStatus, me: Device | None
) -> protocol.Paired | protocol.PairFailed:
    if event.Status != PairStatus.SUCCESS:
        return protocol.PairFailed(session=session, reason=str(event.Error) or "pairing failed")
    lid = jid_string(me.LID) if me is not None else ""
    push_name = str(me.PushName) if me is not None else ""
    return protocol.Paired(session=session, jid=jid_string(event.ID), lid=lid,
                           push_name=push_name, platform=str(event.Platform))


def connect_failure(event: ConnectFailure) -> tuple[str, bool, bool]:
    """(readable reason, retrying later may help, whatsmeow reconnects by itself)."""
    known = event.HasField("Reason") and event.Reason in _FAILURES
    meaning, retryable = _FAILURES[event.Reason] if known else ("WhatsApp refused the connection",
                                                                True)
    detail = str(event.Message).strip()
    reason = f"{meaning}: {detail}" if detail else meaning
    return reason, retryable, known and event.Reason in _SELF_RECONNECTING


def logged_out_reason(event: LoggedOut) -> str:
    if event.HasField("Reason") and event.Reason in _FAILURES:
        meaning = _FAILURES[event.Reason][0]
    else:
        meaning = "the device was logged out"
    return f"{meaning} (while connecting)" if event.OnConnect else meaning


def ban(session: str, event: TemporaryBan) -> protocol.TemporaryBan:
    return protocol.TemporaryBan(session=session, code=int(event.Code),
                                 expires_in=float(max(0, event.Expire)))


def ban_reason(event: TemporaryBan) -> str:
    return _BAN_REASONS.get(event.Code, "unknown reason")


def stream_error_reason(event: StreamError) -> str:
    code = str(event.Code).strip()
    return f"WhatsApp closed the stream with error {code}" if code else (
        "WhatsApp closed the stream with an unknown error")


def dial_failure(error: str) -> tuple[str, bool]:
    """A failed first connect (neonize's error text) as (readable reason, retryable)."""
    lowered = error.lower()
    if "database" in lowered or "sqlite" in lowered or "sql:" in lowered:
        transient = any(word in lowered for word in ("locked", "busy", "timeout"))
        return f"the number's store file cannot be used: {error}", transient
    if "no such host" in lowered or "lookup" in lowered:
        reason = "cannot resolve WhatsApp's address (no network or no DNS)"
    elif "deadline exceeded" in lowered or "timeout" in lowered or "timed out" in lowered:
        reason = "connecting to WhatsApp timed out"
    elif "refused" in lowered:
        reason = "the connection to WhatsApp was refused (check the network or proxy)"
    elif "unreachable" in lowered:
        reason = "WhatsApp is unreachable from this machine"
    else:
        reason = "could not connect to WhatsApp"
    return f"{reason}: {error}", True


# -- outgoing messages ---------------------------------------------------------------------------


def quote_context(quoted_id: str, quoted_sender: str) -> ContextInfo:
    """The reply link: the quoted message's id and author (the quoted content is not known)."""
    context = ContextInfo(stanzaID=quoted_id, quotedMessage=Message(conversation=""))
    if quoted_sender:
        context.participant = jid_string(parse_address(quoted_sender))
    return context


def text_message(text: str, quote: ContextInfo | None = None) -> Message:
    """Plain text, never parsed for @mentions (neonize's str path would, and may look up
    groups); a quoted reply needs the extended form to carry its context."""
    if quote is None:
        return Message(conversation=text)
    return Message(extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=quote))


def location_message(
    latitude: float, longitude: float, name: str = "", quote: ContextInfo | None = None
) -> Message:
    location = LocationMessage(degreesLatitude=latitude, degreesLongitude=longitude)
    if name:
        location.name = name
    if quote is not None:
        location.contextInfo.CopyFrom(quote)
    return Message(locationMessage=location)


def reaction_message(
    chat: JID, message_id: str, emoji: str, *, from_me: bool, author: JID | None = None
) -> Message:
    """The same message whatsmeow's BuildReaction makes, without a call into Go.

    `author` (the reacted message's sender) matters only in groups, where the key names it.
    """
    key = MessageKey(remoteJID=jid_string(chat), fromMe=from_me, ID=message_id)
    if not from_me and author is not None and chat.Server not in (PHONE_SERVER, LID_SERVER):
        key.participant = jid_string(author)
    return Message(reactionMessage=ReactionMessage(
        key=key, text=emoji, senderTimestampMS=int(time.time() * 1000)))
