"""STOP and START: a person opts out (or back in) by sending a keyword, and hears back once.

`handle_keyword` runs inside the write that commits the inbound message (the messaging
layer's `after_inbound` hooks, see `KeywordReplies`), so the opt-out is committed with the
message that asked for it: no campaign send can slip in between. It returns the confirmation
to send, or None; the reply is queued through the outbox once that write has committed
(`send_confirmation`). A second STOP from someone already opted out changes nothing and is not
answered again.

Campaigns call `is_opted_out` right before each send.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import string
import unicodedata
from dataclasses import dataclass

from whatsdex.clock import iso
from whatsdex.contacts import service
from whatsdex.errors import WhatsdexError
from whatsdex.identity.principal import SYSTEM
from whatsdex.messaging.inbound import Inbound
from whatsdex.messaging.outbox import Outbox, SendRequest
from whatsdex.store import Store
from whatsdex.store import chats as chat_rows
from whatsdex.store import contact_lists as rows
from whatsdex.store import messages as message_rows
from whatsdex.tasks import BackgroundTasks

log = logging.getLogger(__name__)

STOP_WORDS = frozenset({
    "stop", "stopall", "unsubscribe", "cancel", "end", "quit",  # English
    "arret", "arrêt",  # French
    "baja", "alto", "cancelar",  # Spanish (cancelar: Portuguese too)
    "parar", "sair",  # Portuguese
    "stopp", "abmelden",  # German
    "desiscriviti",  # Italian
    "отписаться",  # Russian
    "إلغاء", "الغاء",  # Arabic (with and without the hamza, as phones type it)
})
START_WORDS = frozenset({"start", "unstop", "subscribe", "alta", "iniciar"})

STOP_CONFIRMATION = "You have been unsubscribed. Reply START to subscribe again."
START_CONFIRMATION = "You have been subscribed again. Reply STOP to unsubscribe."
REPLY_SOURCE = "inbox"  # a reply in the conversation: sent ahead of campaign traffic
_EDGES = string.punctuation + string.whitespace + "¡¿。"  # after NFKC (fullwidth marks are ASCII)


@dataclass(frozen=True, slots=True)
class Keywords:
    """The words a tenant's contacts use; the default list until tenants can edit theirs."""

    stop: frozenset[str] = STOP_WORDS
    start: frozenset[str] = START_WORDS
    stop_reply: str = STOP_CONFIRMATION
    start_reply: str = START_CONFIRMATION


DEFAULT_KEYWORDS = Keywords()


def keyword_of(text: str, keywords: Keywords = DEFAULT_KEYWORDS) -> str | None:
    """'stop', 'start' or None: the whole message, trimmed, any case, edge punctuation ignored."""
    word = unicodedata.normalize("NFKC", text).strip(_EDGES).casefold()
    if len(word) > 32:
        return None
    if word in keywords.stop:
        return "stop"
    if word in keywords.start:
        return "start"
    return None


def handle_keyword(conn: sqlite3.Connection, tenant_id: str, contact_id: str, text: str,
                   now: float | str, keywords: Keywords = DEFAULT_KEYWORDS) -> str | None:
    """Inside the inbound write: apply STOP/START to the contact (all numbers of the tenant).

    Returns the confirmation to send, or None when the text is no keyword or the contact
    already was in that state (one confirmation, not one per repeated STOP).
    """
    kind = keyword_of(text, keywords)
    if kind is None:
        return None
    contact = rows.get_sync(conn, tenant_id, contact_id)
    if contact is None:
        return None
    status = "opted_out" if kind == "stop" else "opted_in"
    stamp = now if isinstance(now, str) else iso(now)
    if not service.change_opt(conn, SYSTEM, tenant_id, contact, status, source="keyword",
                              at=stamp):
        return None
    return keywords.stop_reply if kind == "stop" else keywords.start_reply


def is_opted_out(conn: sqlite3.Connection, tenant_id: str, contact_id: str) -> bool:
    """True when the contact (or another row of the same person) opted out."""
    contact = rows.get_sync(conn, tenant_id, contact_id)
    if contact is None:
        return False
    if contact.opt_status == "opted_out":
        return True
    return any(rows.opt_status_of(conn, tenant_id, other) == "opted_out"
               for other in rows.same_person(conn, tenant_id, contact) if other != contact_id)


async def send_confirmation(outbox: Outbox, tenant_id: str, *, session_id: str, to: str,
                            text: str, inbound_id: str) -> str | None:
    """After the commit: queue the reply on the number the keyword came in on.

    The idempotency key is the inbound message's id, so running this twice for one STOP
    queues one reply. A number that cannot send (or a spent daily limit) is logged, not
    raised: the opt-out itself is already committed, and that is what matters.
    """
    try:
        accepted = await outbox.accept(
            tenant_id, SendRequest(session_id=session_id, to=to, text=text),
            source=REPLY_SOURCE, idempotency_key=f"opt-keyword:{inbound_id}")
    except WhatsdexError as exc:
        log.warning("opt-out confirmation to %s not queued: %s", to, exc.message)
        return None
    return accepted.message.id


class KeywordReplies:
    """The `after_inbound` hook: STOP/START inside the inbound write, the reply after it.

    The hook runs in the store's writer thread, inside the transaction; it hands the reply to
    the event loop. There, a write queued behind that transaction finds out whether it
    committed (the message row exists) before the reply is accepted into the outbox: a rolled
    back event sends nothing, and the idempotency key keeps it to one reply per keyword.
    """

    def __init__(self, store: Store, outbox: Outbox, tasks: BackgroundTasks, *,
                 keywords: Keywords = DEFAULT_KEYWORDS,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.tasks = tasks
        self.keywords = keywords
        self.loop = loop or asyncio.get_running_loop()

    def __call__(self, conn: sqlite3.Connection, inbound: Inbound) -> None:
        if inbound.from_me or inbound.is_group or inbound.contact_id is None \
                or inbound.kind != "text":
            return
        reply = handle_keyword(conn, inbound.tenant_id, inbound.contact_id, inbound.text,
                               inbound.now, self.keywords)
        if reply is not None:
            self.loop.call_soon_threadsafe(self._start, inbound, reply)

    def _start(self, inbound: Inbound, reply: str) -> None:
        try:
            self.tasks.start(self.send_after_commit(inbound, reply),
                             name=f"opt-keyword reply {inbound.message_id}")
        except RuntimeError:  # shutting down: the opt-out itself is committed
            log.warning("opt-out confirmation for %s not queued: shutting down",
                        inbound.message_id)

    async def send_after_commit(self, inbound: Inbound, reply: str) -> str | None:
        def chat_jid(conn: sqlite3.Connection) -> str | None:
            if message_rows.get_sync(conn, inbound.tenant_id, inbound.message_id) is None:
                return None  # the inbound write was rolled back
            chat = chat_rows.get_sync(conn, inbound.tenant_id, inbound.chat_id)
            return None if chat is None else chat.jid

        to = await self.store.write(chat_jid)
        if to is None:
            return None
        return await send_confirmation(self.outbox, inbound.tenant_id,
                                       session_id=inbound.session_id, to=to, text=reply,
                                       inbound_id=inbound.message_id)
