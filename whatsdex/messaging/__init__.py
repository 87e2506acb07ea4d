"""Messages in and out: accepting sends (outbox), delivering them paced and exactly once
(delivery), committing inbound messages and receipts (inbound), media, and history queries.

Every change that a webhook reports is written in the same transaction as its webhook outbox
row, so an event is never announced without its change nor a change left unannounced.
"""

from __future__ import annotations

from typing import Any

from whatsdex.store.messages import Message

OUTBOUND_KINDS = ("text", "image", "video", "audio", "document", "location", "reaction")
MEDIA_KINDS = ("image", "video", "audio", "document")
SOURCES = ("api", "inbox", "campaign")
# API and inbox sends overtake campaign sends in a number's queue.
PRIORITY = {"api": 10, "inbox": 10, "campaign": 0}
INTERNAL_MEDIA_KEYS = frozenset({"message"})


def event_data(message: Message, *, chat_jid: str = "", session_jid: str = "") -> dict[str, Any]:
    """A message as webhook events and the live inbox describe it."""
    data: dict[str, Any] = {
        "id": message.id,
        "session_id": message.session_id,
        "chat_id": message.chat_id,
        "direction": message.direction,
        "wa_id": message.wa_id,
        "kind": message.kind,
        "text": message.text,
        "status": message.status,
        "created_at": message.created_at,
    }
    if chat_jid:
        data["chat"] = chat_jid
    if message.direction == "in" or message.source == "":
        data["sender"] = {"jid": message.sender_jid, "lid": message.sender_lid,
                          "phone": message.sender_phone, "push_name": message.push_name}
    elif session_jid:
        data["sender"] = {"jid": session_jid}
    if message.wa_timestamp:
        data["timestamp"] = message.wa_timestamp
    if message.quoted_id:
        data["quoted_id"] = message.quoted_id
    for key in ("location", "reaction", "edit", "delete"):
        if key in message.payload:
            data[key] = message.payload[key]
    media = message.payload.get("media")
    if isinstance(media, dict):
        # `message` is the engine's own record for downloading later (it holds the media key):
        # kept in the database, never sent out.
        data["media"] = {k: v for k, v in media.items() if k not in INTERNAL_MEDIA_KEYS}
    if message.source:
        data["source"] = message.source
    return data
