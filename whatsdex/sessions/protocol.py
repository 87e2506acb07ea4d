"""What the supervisor (web process) and an engine host (child process) say to each other.

Frames are a 4-byte big-endian length followed by one msgpack-encoded `Frame`. Commands flow
supervisor → host and each gets exactly one `Reply` with the same `req`. Events flow host →
supervisor; an event with `ack` > 0 is held by the engine (the WhatsApp library has not been told
the message arrived) until the supervisor answers `Ack(ack)` after committing it: a message is
acknowledged to WhatsApp only once it is in `whatsdex.db`.

Domain events carry plain data, never library objects, so both engines speak the same language.
"""

from __future__ import annotations

import struct
from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024  # media travels as bytes; anything larger is refused
HEADER = struct.Struct(">I")


class Base(msgspec.Struct, tag_field="t", kw_only=True, omit_defaults=True):
    """Every frame is tagged with its class name."""


# -- commands (supervisor → host) ------------------------------------------------------------


class Start(Base, tag="start", kw_only=True):
    """Connect one number using its runtime store file (created empty for a new number)."""

    req: int
    session: str
    store_path: str


class PairPhone(Base, tag="pair_phone", kw_only=True):
    """Ask for a pairing code to type on the phone instead of scanning (after the first QR)."""

    req: int
    session: str
    phone: str  # digits only, international format without '+'


class MediaPayload(msgspec.Struct, kw_only=True, omit_defaults=True):
    data: bytes
    mimetype: str
    filename: str = ""
    caption: str = ""
    voice_note: bool = False


class Send(Base, tag="send", kw_only=True):
    """Send one message; `outbox_id` lets an engine recognise a retry of the same message."""

    req: int
    session: str
    outbox_id: str
    to: str  # a JID: 15551234567@s.whatsapp.net or 1203...@g.us
    kind: Literal["text", "image", "video", "audio", "document", "location", "reaction"]
    text: str = ""
    media: MediaPayload | None = None
    latitude: float | None = None
    longitude: float | None = None
    location_name: str = ""
    quoted_id: str = ""
    quoted_sender: str = ""
    reaction_to: str = ""
    reaction_from_me: bool = False


class MarkRead(Base, tag="mark_read", kw_only=True):
    req: int
    session: str
    chat: str
    sender: str
    message_ids: list[str]


class Logout(Base, tag="logout", kw_only=True):
    """Unlink the device from the phone; the store loses its credentials."""

    req: int
    session: str


class Stop(Base, tag="stop", kw_only=True):
    """Disconnect and free the client; the store keeps its credentials."""

    req: int
    session: str


class SandboxControl(Base, tag="sandbox", kw_only=True):
    """Sandbox only: scan a QR with a simulated phone, inject an inbound message or a fault."""

    req: int
    session: str
    action: Literal[
        "scan", "inbound", "disconnect", "logout", "ban", "fail_sends", "crash_host",
        "receipts",
    ]
    phone: str = ""
    sender: str = ""
    text: str = ""
    count: int = 1
    delivered_after: float | None = None
    read_after: float | None = None


class Shutdown(Base, tag="shutdown", kw_only=True):
    """Stop every client cleanly and exit."""

    req: int


class Ack(Base, tag="ack", kw_only=True):
    """The supervisor committed the event with this ack number: let the engine go on."""

    ack: int


Command = Start | PairPhone | Send | MarkRead | Logout | Stop | SandboxControl | Shutdown


# -- answers and events (host → supervisor) --------------------------------------------------


class Reply(Base, tag="reply", kw_only=True):
    req: int
    ok: bool
    error: str = ""
    retryable: bool = False
    result: dict[str, Any] = msgspec.field(default_factory=dict)


class Hello(Base, tag="hello", kw_only=True):
    """First frame a host sends."""

    pid: int
    engine: str
    version: int = PROTOCOL_VERSION


class Qr(Base, tag="qr", kw_only=True):
    session: str
    code: str
    expires_in: float  # seconds this code stays valid


class QrTimeout(Base, tag="qr_timeout", kw_only=True):
    """No scan in time: the engine stopped offering codes."""

    session: str


class Paired(Base, tag="paired", kw_only=True):
    """The phone accepted the link; `Connected` follows."""

    session: str
    jid: str
    lid: str = ""
    push_name: str = ""
    platform: str = ""


class PairFailed(Base, tag="pair_failed", kw_only=True):
    session: str
    reason: str


class Connected(Base, tag="connected", kw_only=True):
    session: str
    jid: str
    lid: str = ""
    push_name: str = ""


class Disconnected(Base, tag="disconnected", kw_only=True):
    """The connection dropped; the engine reconnects by itself unless `will_retry` is False."""

    session: str
    reason: str = ""
    will_retry: bool = True


class ConnectFailed(Base, tag="connect_failed", kw_only=True):
    """The client could not connect; the supervisor decides when to try again."""

    session: str
    reason: str
    retryable: bool = True


class LoggedOut(Base, tag="logged_out", kw_only=True):
    """Credentials revoked (removed from the phone): a new scan is needed."""

    session: str
    reason: str = ""


class TemporaryBan(Base, tag="temporary_ban", kw_only=True):
    session: str
    code: int = 0
    expires_in: float = 0.0


class StreamReplaced(Base, tag="stream_replaced", kw_only=True):
    """Another client took over this device's connection."""

    session: str


class KeepAlive(Base, tag="keepalive", kw_only=True):
    session: str
    ok: bool  # False: keep-alives are failing; True: restored


class Stopped(Base, tag="stopped", kw_only=True):
    """The client is gone from the host (after Stop, Logout, a ban or a fatal error)."""

    session: str
    reason: str = ""


class Person(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A sender or chat: the phone JID and the LID when known (CRM matching needs both)."""

    jid: str
    lid: str = ""
    phone: str = ""


class InboundMessage(Base, tag="message", kw_only=True):
    session: str
    ack: int = 0
    wa_id: str
    chat: Person
    sender: Person
    from_me: bool = False
    is_group: bool = False
    timestamp_ms: int
    push_name: str = ""
    kind: str  # text, image, video, audio, document, location, reaction, edit, delete, other
    text: str = ""
    media: dict[str, Any] = msgspec.field(default_factory=dict)  # type, mimetype, size, sha256…
    location: dict[str, Any] = msgspec.field(default_factory=dict)
    quoted_id: str = ""
    reaction_to: str = ""
    reaction: str = ""
    edited_id: str = ""
    deleted_id: str = ""


class ReceiptEvent(Base, tag="receipt", kw_only=True):
    session: str
    ack: int = 0
    chat: Person
    sender: Person
    message_ids: list[str]
    status: Literal["delivered", "read", "played"]
    timestamp_ms: int


class Log(Base, tag="log", kw_only=True):
    """A host-side log line worth keeping in the server's log."""

    level: str
    message: str
    session: str = ""


Event = (
    Reply | Hello | Qr | QrTimeout | Paired | PairFailed | Connected | Disconnected
    | ConnectFailed | LoggedOut | TemporaryBan | StreamReplaced | KeepAlive | Stopped
    | InboundMessage | ReceiptEvent | Log
)

ToHost = Command | Ack

_encoder = msgspec.msgpack.Encoder()
_to_host = msgspec.msgpack.Decoder(ToHost)
_to_supervisor = msgspec.msgpack.Decoder(Event)


class ProtocolError(Exception):
    """A frame that cannot be read: the peer is broken or not a WhatsDeX engine host."""


def encode(message: Base) -> bytes:
    body = _encoder.encode(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return int(length)


def decode_for_host(body: bytes) -> ToHost:
    try:
        return _to_host.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None


def decode_for_supervisor(body: bytes) -> Event:
    try:
        return _to_supervisor.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise ProtocolError(str(exc)) from None
