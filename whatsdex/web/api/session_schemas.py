"""Request and response bodies of the linked-number ("session") API, its sandbox and its events.

Built field by field from records, like `schemas.py`: a link token is only ever in
`ClientLinkCreated`, the one answer that must carry it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from whatsdex.clock import iso
from whatsdex.store.records import LinkToken, WaSession, WaSessionTransition

Name = Annotated[str, Meta(min_length=1, max_length=100, description="1-100 characters",
                           examples=["Front desk"])]
Phone = Annotated[str, Meta(min_length=7, max_length=20,
                            description="International format, e.g. +15551234567",
                            examples=["+15551234567"])]
Status = Literal[
    "new", "connecting", "pairing", "connected", "reconnecting", "logged_out", "banned",
    "failed", "stopped",
]


# -- Requests ----------------------------------------------------------------------------------

class SessionCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name


class PairingCodeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    phone: Phone


class ClientLinkCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    ttl_hours: Annotated[int, Meta(ge=1, le=720, description="How long the link works: 1-720 "
                                                             "hours (30 days)")] = 24


class ScanRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    phone: Phone


class InboundRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    sender: Annotated[str, Meta(min_length=6, max_length=40,
                                description="The contact: phone digits or a phone JID",
                                examples=["15557654321"])] = msgspec.field(name="from")
    text: Annotated[str, Meta(min_length=1, max_length=4096)]
    count: Annotated[int, Meta(ge=1, le=10_000, description="Send the same text this often")] = 1


class FaultRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    kind: Annotated[
        Literal["disconnect", "logout", "ban", "fail_sends", "crash_host"],
        Meta(description="disconnect: the connection drops and comes back; logout: removed "
                         "from the phone; ban: a temporary ban; fail_sends: the next `count` "
                         "sends fail; crash_host: the engine host process dies"),
    ]
    count: Annotated[int, Meta(ge=0, le=10_000, description="For fail_sends only")] = 1


Seconds = Annotated[float, Meta(ge=0, le=86_400)]


class ReceiptsRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the delays given change; null keeps the current one."""

    delivered_after: Annotated[Seconds | None,
                               Meta(description="Seconds until contacts confirm delivery")] = None
    read_after: Annotated[Seconds | None, Meta(description="Seconds until contacts read")] = None


# -- Responses ---------------------------------------------------------------------------------

class SessionCreated(Struct, kw_only=True):
    id: str
    name: str
    status: Status


class SessionOut(Struct, kw_only=True):
    """A linked number. `desired` is what the user asked for (running or stopped)."""

    id: str
    name: str
    status: Status
    reason: Annotated[str, Meta(description="Why it is in this status (empty when fine)")]
    phone: str
    jid: Annotated[str, Meta(description="Its WhatsApp id, e.g. 15551234567:12@s.whatsapp.net")]
    lid: Annotated[str, Meta(description="Its WhatsApp LID (privacy id), when known")]
    push_name: str
    since: Annotated[str, Meta(description="When it entered this status")]
    desired: Literal["running", "stopped"]
    created_at: str

    @classmethod
    def of(cls, row: WaSession) -> SessionOut:
        return cls(id=row.id, name=row.name, status=row.status,  # type: ignore[arg-type]
                   reason=row.status_reason, phone=row.phone, jid=row.jid, lid=row.lid,
                   push_name=row.push_name, since=row.status_since,
                   desired=row.desired,  # type: ignore[arg-type]
                   created_at=row.created_at)


class TransitionOut(Struct, kw_only=True):
    at: str
    previous: str
    status: str
    reason: str

    @classmethod
    def of(cls, row: WaSessionTransition) -> TransitionOut:
        return cls(at=row.at, previous=row.from_status, status=row.to_status, reason=row.reason)


class QrOut(Struct, kw_only=True):
    """Render `qr` as a QR code (or ask for `Accept: image/svg+xml`); fetch again once expired."""

    qr: str
    expires_at: str


class PairingCodeOut(Struct, kw_only=True):
    """Type it on the phone: WhatsApp → Settings → Linked devices → Link a device → Link with
    phone number instead."""

    code: str


class ClientLinkOut(Struct, kw_only=True):
    id: str
    created_at: str
    expires_at: str
    revoked_at: str | None
    status: Literal["active", "expired", "revoked"]

    @classmethod
    def of(cls, link: LinkToken, now: float) -> ClientLinkOut:
        status: Literal["active", "expired", "revoked"] = "active"
        if link.revoked_at is not None:
            status = "revoked"
        elif link.expires_at <= iso(now):
            status = "expired"
        return cls(id=link.id, created_at=link.created_at, expires_at=link.expires_at,
                   revoked_at=link.revoked_at, status=status)


class ClientLinkCreated(Struct, kw_only=True):
    """`url` is shown once: send it to the client, who sees only this number's QR code there."""

    id: str
    url: str
    expires_at: str


class SandboxResult(Struct, kw_only=True):
    action: str
    result: dict[str, Any]


class ErrorOut(Struct, kw_only=True):
    """Every error answer."""

    status: int
    message: str
    detail: Any = None
