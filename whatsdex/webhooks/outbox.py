"""The webhook outbox: events are written in the same transaction as the change they report.

`enqueue` runs inside another writer's `store.write` function, so a committed message (or
status change) always has its deliveries committed with it, and a rolled-back one has none.
The dispatcher polls for new rows; callers may also `wake()` it after their commit.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import msgspec

from whatsdex.errors import BadRequest
from whatsdex.store import webhooks as rows
from whatsdex.store.ids import new_id

# Event families and the types known today; a filter may name any type of a known family
# (future `campaign.*` types match without changing saved filters).
FAMILIES = ("message", "session", "campaign", "webhook")
EVENT_TYPES = (
    "message.received",
    "message.sent",
    "message.status",
    "session.status",
    "campaign.started",
    "campaign.paused",
    "campaign.resumed",
    "campaign.cancelled",
    "campaign.completed",
    "campaign.failed",
    "webhook.test",
)
TEST_EVENT = "webhook.test"
MAX_FILTERS = 50
_encoder = msgspec.json.Encoder()  # compact UTF-8 JSON, as json.dumps(separators=(",", ":"))
_TYPE = re.compile(r"^([a-z][a-z0-9_]*)\.([a-z][a-z0-9_.]*[a-z0-9_]|\*)$")


def matches(filters: list[str], event_type: str) -> bool:
    """`*` takes everything, `message.*` every `message.` type, otherwise the exact type."""
    for wanted in filters:
        if wanted in ("*", event_type):
            return True
        if wanted.endswith(".*") and event_type.startswith(wanted[:-1]):
            return True
    return False


def clean_filters(events: list[str], field: str = "events") -> list[str]:
    """Validated, de-duplicated filters; at least one."""
    cleaned: list[str] = []
    for raw in events:
        event = raw.strip().lower()
        if event != "*":
            match = _TYPE.match(event)
            if match is None or match.group(1) not in FAMILIES:
                raise BadRequest(
                    f"{field}: {raw!r} is not an event type; use '*', a family like "
                    f"'message.*' ({', '.join(FAMILIES)}) or a type like 'message.received'",
                    {"field": field, "value": raw})
        if event not in cleaned:
            cleaned.append(event)
    if not cleaned:
        raise BadRequest(f"{field}: choose at least one event (or '*' for all)",
                         {"field": field})
    if len(cleaned) > MAX_FILTERS:
        raise BadRequest(f"{field}: at most {MAX_FILTERS} filters", {"field": field})
    return cleaned


def envelope(event_type: str, data: dict[str, Any], now: str) -> str:
    """The exact body every delivery of the event sends (and signs)."""
    return _encoder.encode({"type": event_type, "timestamp": now, "data": data}).decode()


def new_event_id() -> str:
    return new_id("msg")


class Subscriptions:
    """A tenant's enabled webhooks and their filters, read once for all the events one write
    enqueues (nothing in that write changes them)."""

    def __init__(self, conn: sqlite3.Connection, tenant_id: str) -> None:
        self._conn = conn
        self.tenant_id = tenant_id
        self._filters: list[tuple[str, list[str]]] | None = None
        self._by_type: dict[str, list[str]] = {}

    def targets(self, event_type: str) -> list[str]:
        found = self._by_type.get(event_type)
        if found is None:
            if self._filters is None:
                self._filters = rows.enabled_filters(self._conn, self.tenant_id)
            found = [webhook_id for webhook_id, filters in self._filters
                     if matches(filters, event_type)]
            self._by_type[event_type] = found
        return found


def enqueue(conn: sqlite3.Connection, tenant_id: str, event_type: str, data: dict[str, Any], *,
            now: str, targets: Subscriptions | None = None) -> int:
    """One delivery per enabled webhook of the tenant whose filter takes `event_type`, all with
    the same event id (`webhook-id`). Returns how many were queued. Call inside a write."""
    if targets is None or targets.tenant_id != tenant_id:
        targets = Subscriptions(conn, tenant_id)
    webhook_ids = targets.targets(event_type)
    if not webhook_ids:
        return 0
    rows.insert_deliveries(conn, tenant_id, webhook_ids, event_id=new_event_id(),
                           event_type=event_type, payload=envelope(event_type, data, now),
                           now=now)
    return len(webhook_ids)


def enqueue_test(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, *, now: str) -> int:
    """A `webhook.test` event for one webhook, whatever its filter. Returns the delivery id."""
    data = {"webhook_id": webhook_id, "message": "A test event from WhatsDeX"}
    [delivery_id] = rows.insert_deliveries(
        conn, tenant_id, [webhook_id], event_id=new_event_id(), event_type=TEST_EVENT,
        payload=envelope(TEST_EVENT, data, now), now=now)
    return delivery_id
