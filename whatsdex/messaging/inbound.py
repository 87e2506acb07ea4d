"""Inbound messages and receipts from the engines, committed before they are acknowledged.

`MessageIngest.handle_many` is the supervisor's `message_handler`: the supervisor acks a number's
events to the engine (and the engine to WhatsApp) only after it returns, so everything they
change — contacts, chats, messages, the webhook outbox rows — is written in one write function
first. The events that waited while the number's previous commit ran come together, and many
numbers' writes share transactions in the store, so each event's work is kept to a few indexed
statements, with what every event of the write needs (the tenant's webhooks) read once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from whatsdex.bus import BusEvent, EventBus
from whatsdex.clock import Clock, iso
from whatsdex.messaging import event_data
from whatsdex.messaging.ingest_batch import IngestBatch
from whatsdex.messaging.recipients import LID_SERVER, PHONE_SERVER, phone_of_jid
from whatsdex.sessions import protocol
from whatsdex.store import Store
from whatsdex.store import contacts as contact_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.ids import new_id
from whatsdex.store.messages import Message
from whatsdex.tasks import BackgroundTasks
from whatsdex.webhooks import outbox as webhook_outbox

log = logging.getLogger(__name__)

# Kinds that are a message of their own in the chat (the others act on an earlier message).
CONVERSATION_KINDS = frozenset({"text", "image", "video", "audio", "document", "location",
                                "other"})
# A receipt may overtake the commit of the send it confirms; it is tried again after these.
LATE_RECEIPT_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
LATE_RECEIPT_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Inbound:
    """A newly stored message, as `after_inbound` callbacks see it (inside the same write)."""

    tenant_id: str
    session_id: str
    message_id: str
    chat_id: str
    contact_id: str | None
    from_me: bool
    is_group: bool
    kind: str
    text: str
    sender_phone: str
    now: str


# Run inside the write that stores the message (e.g. STOP/START opt-out keywords): whatever they
# change commits with the message, and an exception rolls the whole event back (no ack).
AfterInbound = Callable[[sqlite3.Connection, Inbound], None]


@dataclass(slots=True)
class _Stored:
    message: Message
    chat_jid: str
    event_type: str
    data: dict[str, Any]


@dataclass(slots=True)
class _Late:
    tenant_id: str
    session_id: str
    status: str
    at: str
    tries: int = 0


@dataclass(slots=True)
class _ReceiptResult:
    changed: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class MessageIngest:
    def __init__(self, store: Store, bus: EventBus, clock: Clock) -> None:
        self.store = store
        self.bus = bus
        self.clock = clock
        self.after_inbound: list[AfterInbound] = []
        self._late: dict[tuple[str, str], _Late] = {}  # (session, wa_id) → receipt to retry
        self._late_task: asyncio.Task[None] | None = None
        self._tasks = BackgroundTasks()

    async def handle(self, tenant_id: str,
                     event: protocol.InboundMessage | protocol.ReceiptEvent) -> None:
        """Commit one event."""
        await self.handle_many(tenant_id, [event])

    async def handle_many(self, tenant_id: str,
                          events: Sequence[protocol.InboundMessage | protocol.ReceiptEvent]
                          ) -> None:
        """Commit one number's events, in order, in one write (the supervisor acks them to the
        engine when this returns)."""
        now = self.clock()
        results = await self.store.write(
            lambda conn: self._commit(conn, tenant_id, events, now))
        for event, result in zip(events, results, strict=True):
            if isinstance(result, _Stored):
                self.bus.publish(BusEvent(tenant_id, result.event_type, result.data))
            elif isinstance(result, _ReceiptResult):
                assert isinstance(event, protocol.ReceiptEvent)
                self._published(tenant_id, result.changed)
                for wa_id in result.missing:
                    self._remember(tenant_id, event.session, wa_id, event.status,
                                   _receipt_time(event, now))
            # None: a redelivery of a message already stored, acknowledged with nothing new

    async def stop(self) -> None:
        await self._tasks.close()

    def _commit(self, conn: sqlite3.Connection, tenant_id: str,
                events: Sequence[protocol.InboundMessage | protocol.ReceiptEvent], now: float,
                ) -> list[_Stored | _ReceiptResult | None]:
        batch = IngestBatch.start(conn, tenant_id, (
            (event.session, event.wa_id) for event in events
            if isinstance(event, protocol.InboundMessage) and event.wa_id))
        stamp = iso(now)
        results: list[_Stored | _ReceiptResult | None] = []
        for event in events:
            if isinstance(event, protocol.InboundMessage):
                results.append(self.store_message(batch, event, now))
            else:
                results.append(self._apply(conn, tenant_id, event.session, event.message_ids,
                                           event.status, _receipt_time(event, now), stamp,
                                           batch.webhooks))
        batch.finish()
        return results

    # -- messages ----------------------------------------------------------------------------

    def store_message(self, batch: IngestBatch, event: protocol.InboundMessage, now: float,
                      ) -> _Stored | None:
        """The whole of one inbound message, inside the batch's transaction."""
        conn, tenant_id, session_id = batch.conn, batch.tenant_id, event.session
        if event.wa_id and (session_id, event.wa_id) in batch.known:
            return None
        stamp = iso(now)
        timestamp = iso(event.timestamp_ms / 1000) if event.timestamp_ms > 0 else stamp
        chat_jid, chat_phone = _address(event.chat.jid, event.chat.phone)
        is_group = event.is_group or chat_jid.endswith("@g.us")
        sender_jid, sender_phone = _address(event.sender.jid, event.sender.phone)
        sender_lid = event.sender.lid or (sender_jid if sender_jid.endswith("@lid") else "")
        kind = _kind(event)

        # The person on the other side: the sender, or for our own 1:1 messages the chat.
        contact_id: str | None = None
        if not event.from_me:
            contact_id = _contact(batch, phone=sender_phone, jid=sender_jid, lid=sender_lid,
                                  push_name=event.push_name, now=stamp)
        elif not is_group:
            contact_id = _contact(batch, phone=chat_phone, jid=chat_jid, lid=event.chat.lid,
                                  push_name="", now=stamp)

        payload: dict[str, Any] = {}
        text = event.text
        quoted_id = ""
        if event.quoted_id:
            payload["quoted_wa_id"] = event.quoted_id
            quoted_id = _our_id(conn, tenant_id, session_id, event.quoted_id)
        if event.media:
            payload["media"] = dict(event.media)
        if event.location:
            payload["location"] = dict(event.location)
        if kind == "reaction":
            payload["reaction"] = {
                "message_id": _our_id(conn, tenant_id, session_id, event.reaction_to),
                "wa_id": event.reaction_to, "emoji": event.reaction or event.text,
            }
            text = ""
        elif kind == "edit":
            target = _our_id(conn, tenant_id, session_id, event.edited_id)
            if target:
                message_rows.set_edited(conn, tenant_id, target, event.text, timestamp)
            payload["edit"] = {"message_id": target, "wa_id": event.edited_id,
                               "text": event.text}
            text = ""  # the new text lives on the edited message (and in search) only
        elif kind == "delete":
            target = _our_id(conn, tenant_id, session_id, event.deleted_id)
            if target:
                message_rows.set_deleted(conn, tenant_id, target, timestamp)
            payload["delete"] = {"message_id": target, "wa_id": event.deleted_id}
            text = ""

        conversation = kind in CONVERSATION_KINDS
        chat_id = batch.chat(
            (session_id, chat_jid, "" if is_group else event.chat.lid, is_group,
             None if is_group else contact_id,
             event.push_name if not (is_group or event.from_me) else ""),
            at=timestamp, last_preview=(text or f"[{kind}]") if conversation else None,
            unread_add=1 if conversation and not event.from_me else 0,
        )
        message = Message(
            id=new_id("msg"), tenant_id=tenant_id, session_id=session_id, chat_id=chat_id,
            direction="out" if event.from_me else "in", wa_id=event.wa_id or None,
            sender_jid=sender_jid, sender_lid=sender_lid, sender_phone=sender_phone,
            push_name=event.push_name, kind=kind, text=text, payload=payload,
            quoted_id=quoted_id, status="sent" if event.from_me else "received",
            status_reason="", source="", priority=0, attempts=0, next_attempt_at=None,
            created_at=stamp, wa_timestamp=timestamp,
            sent_at=timestamp if event.from_me else None, delivered_at=None, read_at=None,
            played_at=None, failed_at=None, edited_at=None, deleted_at=None,
        )
        message_rows.insert(conn, message)
        if event.wa_id:
            batch.known.add((session_id, event.wa_id))
        context = Inbound(tenant_id=tenant_id, session_id=session_id, message_id=message.id,
                          chat_id=chat_id, contact_id=contact_id, from_me=event.from_me,
                          is_group=is_group, kind=kind, text=text, sender_phone=sender_phone,
                          now=stamp)
        for callback in self.after_inbound:
            callback(conn, context)
        data = event_data(message, chat_jid=chat_jid)
        data["from_me"] = event.from_me
        data["is_group"] = is_group
        if event.from_me:
            # Sent from the phone itself: a sent message, not one received.
            data["source"] = "phone"
            event_type = "message.sent"
        else:
            event_type = "message.received"
        webhook_outbox.enqueue(conn, tenant_id, event_type, data, now=stamp,
                               targets=batch.webhooks)
        return _Stored(message=message, chat_jid=chat_jid, event_type=event_type, data=data)

    # -- receipts ----------------------------------------------------------------------------

    def _apply(self, conn: sqlite3.Connection, tenant_id: str, session_id: str,
               wa_ids: list[str], status: str, at: str, stamp: str,
               webhooks: webhook_outbox.Subscriptions | None = None) -> _ReceiptResult:
        result = _ReceiptResult()
        for wa_id in dict.fromkeys(wa_ids):
            moved = message_rows.advance_status(conn, tenant_id, session_id, wa_id, status, at)
            if moved is None:
                result.missing.append(wa_id)
            elif moved.moved:
                data = {"id": moved.id, "session_id": session_id, "chat_id": moved.chat_id,
                        "wa_id": wa_id, "status": status, "previous": moved.previous,
                        "at": at}
                webhook_outbox.enqueue(conn, tenant_id, "message.status", data, now=stamp,
                                       targets=webhooks)
                result.changed.append(data)
        return result

    def _published(self, tenant_id: str, changed: list[dict[str, Any]]) -> None:
        for data in changed:
            self.bus.publish(BusEvent(tenant_id, "message.status", data))

    def _remember(self, tenant_id: str, session_id: str, wa_id: str, status: str, at: str
                  ) -> None:
        """A receipt for a message not (yet) known: its send may still be committing."""
        key = (session_id, wa_id)
        earlier = self._late.get(key)
        if earlier is not None and (message_rows.STATUS_RANK[earlier.status]
                                    >= message_rows.STATUS_RANK[status]):
            return
        if earlier is None and len(self._late) >= LATE_RECEIPT_MAX:
            self._late.pop(next(iter(self._late)))
        self._late[key] = _Late(tenant_id=tenant_id, session_id=session_id, status=status,
                                at=at, tries=earlier.tries if earlier else 0)
        if self._late_task is None or self._late_task.done():
            self._late_task = self._tasks.start(self._retry_late(), name="late-receipts")

    async def _retry_late(self) -> None:
        """Apply remembered receipts once their messages are known; forget them after a while
        (receipts for messages sent outside WhatsDeX never match)."""
        while self._late:
            delay = min(LATE_RECEIPT_DELAYS[min(late.tries, len(LATE_RECEIPT_DELAYS) - 1)]
                        for late in self._late.values())
            await asyncio.sleep(delay)
            pending, self._late = self._late, {}
            stamp = iso(self.clock())

            try:
                results = await self.store.write(
                    functools.partial(self._apply_late, pending=pending, stamp=stamp))
            except Exception:
                log.exception("late receipts could not be applied")
                continue
            for (key, late), (tenant_id, result) in zip(pending.items(), results, strict=True):
                self._published(tenant_id, result.changed)
                if result.missing and late.tries + 1 < len(LATE_RECEIPT_DELAYS):
                    newer = self._late.get(key)
                    if newer is None:
                        late.tries += 1
                        self._late[key] = late


    def _apply_late(self, conn: sqlite3.Connection, *, pending: dict[tuple[str, str], _Late],
                    stamp: str) -> list[tuple[str, _ReceiptResult]]:
        return [(late.tenant_id, self._apply(conn, late.tenant_id, session_id, [wa_id],
                                             late.status, late.at, stamp))
                for (session_id, wa_id), late in pending.items()]


def _receipt_time(event: protocol.ReceiptEvent, now: float) -> str:
    return iso(event.timestamp_ms / 1000 if event.timestamp_ms > 0 else now)


def _kind(event: protocol.InboundMessage) -> str:
    if event.edited_id:
        return "edit"
    if event.deleted_id:
        return "delete"
    if event.reaction_to:
        return "reaction"
    return event.kind or "other"


def _address(jid: str, phone: str) -> tuple[str, str]:
    """(normalised JID, phone digits): a phone JID loses its device suffix."""
    digits = (phone if phone.isdigit() else "".join(ch for ch in phone if ch.isdigit())
              ) or phone_of_jid(jid)
    user, _, server = jid.partition("@")
    if server == PHONE_SERVER and digits:
        return f"{digits}@{PHONE_SERVER}", digits
    if server == LID_SERVER:
        return f"{user.split(':', 1)[0]}@{LID_SERVER}", digits
    return jid, digits


def _our_id(conn: sqlite3.Connection, tenant_id: str, session_id: str, wa_id: str) -> str:
    if not wa_id:
        return ""
    row = message_rows.find_by_wa_id(conn, tenant_id, session_id, wa_id)
    return "" if row is None else str(row["id"])


def _contact(batch: IngestBatch, *, phone: str, jid: str, lid: str, push_name: str, now: str
             ) -> str | None:
    """Find the person by phone, JID or LID and fill in what is new; create them if unknown.
    The same person again in the same write is already up to date.

    Contacts created here are not counted against the plan's contact limit: a message that
    arrived must be stored whatever the plan says.
    """
    key = (phone, jid, lid, push_name)
    if key in batch.contacts:
        return batch.contacts[key]
    found = _resolve_contact(batch.conn, batch.tenant_id, phone=phone, jid=jid, lid=lid,
                             push_name=push_name, now=now)
    batch.contacts[key] = found
    return found


def _resolve_contact(conn: sqlite3.Connection, tenant_id: str, *, phone: str, jid: str,
                     lid: str, push_name: str, now: str) -> str | None:
    phone_jid = jid if jid.endswith("@" + PHONE_SERVER) else ""
    if lid and not lid.endswith("@" + LID_SERVER):
        lid = ""
    if not (phone or lid):
        return None
    row = contact_rows.find(conn, tenant_id, phone=phone, jid=phone_jid, lid=lid)
    if row is None:
        contact_id = new_id("con")
        contact_rows.insert(conn, tenant_id, contact_id, phone=phone, jid=phone_jid, lid=lid,
                            push_name=push_name, now=now)
        return contact_id
    contact_rows.fill_identity(conn, tenant_id, row, now=now, phone=phone, jid=phone_jid,
                               lid=lid, push_name=push_name)
    return str(row["id"])
