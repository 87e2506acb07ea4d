"""Webhook endpoints and their delivery outbox (`webhook_deliveries`): the SQL, nothing else.

Signing secrets are stored sealed (the webhooks package seals and opens them); the records here
never carry them, except `DeliveryTarget`, which only the dispatcher reads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from whatsdex.store.database import Store

DELIVERY_STATUSES = ("pending", "delivered", "failed")


class Webhook(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str
    consecutive_failures: int
    failing_since: str | None
    rotation_ends_at: str | None
    created_at: str
    updated_at: str
    pending: int = 0  # deliveries waiting (filled by the listing queries)


class Delivery(msgspec.Struct, kw_only=True):
    id: int
    event_id: str
    webhook_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: str
    created_at: str
    delivered_at: str | None
    last_attempt_at: str | None
    last_status: int | None
    last_error: str
    request_excerpt: str
    response_excerpt: str


class DueDelivery(msgspec.Struct, kw_only=True):
    """The oldest pending delivery of an enabled webhook: the only one that may be attempted."""

    id: int
    event_id: str
    tenant_id: str
    webhook_id: str
    event_type: str
    payload: str
    attempts: int
    next_attempt_at: str


class DeliveryTarget(msgspec.Struct, kw_only=True):
    """Where and how to send: the URL and the sealed secrets (current, and previous while valid)."""

    id: str
    tenant_id: str
    url: str
    enabled: bool
    secret: bytes
    previous_secret: bytes | None
    rotation_ends_at: str | None
    consecutive_failures: int
    failing_since: str | None


_HOOK_COLS = (
    "w.id, w.tenant_id, w.url, w.description, w.events, w.enabled, w.disabled_reason, "
    "w.consecutive_failures, w.failing_since, w.rotation_ends_at, w.created_at, w.updated_at"
)
_PENDING = (
    "(SELECT count(*) FROM webhook_deliveries p WHERE p.webhook_id = w.id "
    "AND p.status = 'pending') AS pending"
)
_DELIVERY_COLS = ", ".join(Delivery.__struct_fields__)
_DUE_COLS = ", ".join(f"d.{name}" for name in DueDelivery.__struct_fields__)


def _webhook(row: sqlite3.Row) -> Webhook:
    keys = row.keys()
    return Webhook(
        id=row["id"], tenant_id=row["tenant_id"], url=row["url"],
        description=row["description"], events=json.loads(row["events"]),
        enabled=bool(row["enabled"]), disabled_reason=row["disabled_reason"],
        consecutive_failures=row["consecutive_failures"], failing_since=row["failing_since"],
        rotation_ends_at=row["rotation_ends_at"], created_at=row["created_at"],
        updated_at=row["updated_at"], pending=row["pending"] if "pending" in keys else 0,
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(**{name: row[name] for name in Delivery.__struct_fields__})


# -- Endpoints -------------------------------------------------------------------------------

def insert_webhook(conn: sqlite3.Connection, hook: Webhook, secret: bytes) -> None:
    conn.execute(
        "INSERT INTO webhooks (id, tenant_id, url, description, events, secret, enabled, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (hook.id, hook.tenant_id, hook.url, hook.description, json.dumps(hook.events), secret,
         int(hook.enabled), hook.created_at, hook.updated_at),
    )


def count_for_tenant(conn: sqlite3.Connection, tenant_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM webhooks WHERE tenant_id = ?", (tenant_id,)).fetchone()
    return int(row[0])


def get_sync(conn: sqlite3.Connection, tenant_id: str, webhook_id: str) -> Webhook | None:
    row = conn.execute(
        f"SELECT {_HOOK_COLS} FROM webhooks w WHERE w.tenant_id = ? AND w.id = ?",
        (tenant_id, webhook_id),
    ).fetchone()
    return None if row is None else _webhook(row)


async def count(db: Store, tenant_id: str) -> int:
    """How many webhooks the tenant has (the plan's `max_webhooks` usage)."""
    return int(await db.fetchval("SELECT count(*) FROM webhooks WHERE tenant_id = ?",
                                 (tenant_id,)))


async def get(db: Store, tenant_id: str, webhook_id: str) -> Webhook | None:
    row = await db.fetchone(
        f"SELECT {_HOOK_COLS}, {_PENDING} FROM webhooks w WHERE w.tenant_id = ? AND w.id = ?",
        (tenant_id, webhook_id),
    )
    return None if row is None else _webhook(row)


async def list_for_tenant(db: Store, tenant_id: str) -> list[Webhook]:
    rows = await db.fetchall(
        f"SELECT {_HOOK_COLS}, {_PENDING} FROM webhooks w WHERE w.tenant_id = ? "
        "ORDER BY w.created_at, w.id",
        (tenant_id,),
    )
    return [_webhook(row) for row in rows]


def update_fields(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, now: str,
                  **fields: Any) -> None:
    """Set the given columns (names come from code, never from input) and `updated_at`."""
    values = {name: json.dumps(value) if name == "events" else value
              for name, value in fields.items()}
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(
        f"UPDATE webhooks SET {assignments}, updated_at = ? WHERE tenant_id = ? AND id = ?",
        (*values.values(), now, tenant_id, webhook_id),
    )


def delete(conn: sqlite3.Connection, tenant_id: str, webhook_id: str) -> int:
    """Deletes its deliveries too (ON DELETE CASCADE)."""
    return conn.execute(
        "DELETE FROM webhooks WHERE tenant_id = ? AND id = ?", (tenant_id, webhook_id)
    ).rowcount


def get_secrets(conn: sqlite3.Connection, tenant_id: str, webhook_id: str
                ) -> tuple[bytes, bytes | None, str | None] | None:
    row = conn.execute(
        "SELECT secret, previous_secret, rotation_ends_at FROM webhooks "
        "WHERE tenant_id = ? AND id = ?",
        (tenant_id, webhook_id),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def set_secrets(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, *, secret: bytes,
                previous: bytes | None, rotation_ends_at: str | None, now: str) -> None:
    conn.execute(
        "UPDATE webhooks SET secret = ?, previous_secret = ?, rotation_ends_at = ?, "
        "updated_at = ? WHERE tenant_id = ? AND id = ?",
        (secret, previous, rotation_ends_at, now, tenant_id, webhook_id),
    )


def enabled_filters(conn: sqlite3.Connection, tenant_id: str) -> list[tuple[str, list[str]]]:
    """(id, event filters) of the tenant's enabled webhooks: one indexed read."""
    rows = conn.execute(
        "SELECT id, events FROM webhooks WHERE tenant_id = ? AND enabled = 1", (tenant_id,)
    ).fetchall()
    return [(row[0], json.loads(row[1])) for row in rows]


# -- Deliveries ------------------------------------------------------------------------------

def insert_deliveries(conn: sqlite3.Connection, tenant_id: str, webhook_ids: Sequence[str], *,
                      event_id: str, event_type: str, payload: str, now: str) -> list[int]:
    ids: list[int] = []
    for webhook_id in webhook_ids:
        cursor = conn.execute(
            "INSERT INTO webhook_deliveries (event_id, tenant_id, webhook_id, event_type, "
            "payload, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event_id, tenant_id, webhook_id, event_type, payload, now, now),
        )
        ids.append(int(cursor.lastrowid or 0))
    return ids


def get_delivery_sync(conn: sqlite3.Connection, tenant_id: str, webhook_id: str,
                      delivery_id: int) -> Delivery | None:
    row = conn.execute(
        f"SELECT {_DELIVERY_COLS} FROM webhook_deliveries "
        "WHERE tenant_id = ? AND webhook_id = ? AND id = ?",
        (tenant_id, webhook_id, delivery_id),
    ).fetchone()
    return None if row is None else _delivery(row)


async def get_delivery(db: Store, tenant_id: str, webhook_id: str, delivery_id: int
                       ) -> tuple[Delivery, str] | None:
    """A delivery and the exact body it sends."""
    row = await db.fetchone(
        f"SELECT {_DELIVERY_COLS}, payload FROM webhook_deliveries "
        "WHERE tenant_id = ? AND webhook_id = ? AND id = ?",
        (tenant_id, webhook_id, delivery_id),
    )
    return None if row is None else (_delivery(row), row["payload"])


async def list_deliveries(db: Store, tenant_id: str, webhook_id: str, *,
                          status: str | None = None, before: int | None = None,
                          limit: int = 50) -> list[Delivery]:
    """Newest first; `before` is the id of the last row of the previous page."""
    where = ["tenant_id = ?", "webhook_id = ?"]
    params: list[Any] = [tenant_id, webhook_id]
    if status is not None:
        where.append("status = ?")
        params.append(status)
    if before is not None:
        where.append("id < ?")
        params.append(before)
    rows = await db.fetchall(
        f"SELECT {_DELIVERY_COLS} FROM webhook_deliveries WHERE {' AND '.join(where)} "
        "ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return [_delivery(row) for row in rows]


def replay_one(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, delivery_id: int,
               now: str) -> int:
    """Pending: try now. Delivered or failed: pending again with a fresh retry schedule."""
    return conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = ?, "
        "attempts = CASE WHEN status = 'pending' THEN attempts ELSE 0 END, status = 'pending' "
        "WHERE tenant_id = ? AND webhook_id = ? AND id = ?",
        (now, tenant_id, webhook_id, delivery_id),
    ).rowcount


def replay_since(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, since: str,
                 now: str, *, only_failed: bool) -> int:
    """Every finished delivery created at or after `since` goes out again, oldest first."""
    statuses = ("failed",) if only_failed else ("delivered", "failed")
    marks = ", ".join("?" * len(statuses))
    return conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ? "
        f"WHERE tenant_id = ? AND webhook_id = ? AND created_at >= ? AND status IN ({marks})",
        (now, tenant_id, webhook_id, since, *statuses),
    ).rowcount


def resume(conn: sqlite3.Connection, tenant_id: str, webhook_id: str, now: str) -> int:
    """A re-enabled webhook's waiting deliveries are due at once (in their order)."""
    return conn.execute(
        "UPDATE webhook_deliveries SET next_attempt_at = ? "
        "WHERE tenant_id = ? AND webhook_id = ? AND status = 'pending' AND next_attempt_at > ?",
        (now, tenant_id, webhook_id, now),
    ).rowcount


# -- The dispatcher's queries ----------------------------------------------------------------

async def any_due(db: Store, now: str) -> bool:
    """Cheap (the partial `webhook_deliveries_due` index): is anything pending due?"""
    row = await db.fetchone(
        "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? "
        "LIMIT 1",
        (now,),
    )
    return row is not None


async def due_heads(db: Store, now: str, limit: int) -> list[DueDelivery]:
    """Per enabled webhook, its oldest pending delivery if that one is due: per-endpoint order
    means a younger delivery waits until the oldest is delivered or given up."""
    rows = await db.fetchall(
        f"SELECT {_DUE_COLS} FROM webhooks w JOIN webhook_deliveries d ON d.id = ("
        "  SELECT q.id FROM webhook_deliveries q"
        "  WHERE q.webhook_id = w.id AND q.status = 'pending' ORDER BY q.id LIMIT 1) "
        "WHERE w.enabled = 1 AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
        (now, limit),
    )
    return [DueDelivery(**{name: row[name] for name in DueDelivery.__struct_fields__})
            for row in rows]


async def next_due(db: Store, webhook_id: str, now: str) -> DueDelivery | None:
    """This enabled webhook's oldest pending delivery, if it is due."""
    row = await db.fetchone(
        f"SELECT {_DUE_COLS} FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
        "WHERE d.webhook_id = ? AND d.status = 'pending' AND w.enabled = 1 "
        "ORDER BY d.id LIMIT 1",
        (webhook_id,),
    )
    if row is None or row["next_attempt_at"] > now:
        return None
    return DueDelivery(**{name: row[name] for name in DueDelivery.__struct_fields__})


async def target(db: Store, webhook_id: str) -> DeliveryTarget | None:
    row = await db.fetchone(
        "SELECT id, tenant_id, url, enabled, secret, previous_secret, rotation_ends_at, "
        "consecutive_failures, failing_since FROM webhooks WHERE id = ?",
        (webhook_id,),
    )
    if row is None:
        return None
    return DeliveryTarget(
        id=row["id"], tenant_id=row["tenant_id"], url=row["url"], enabled=bool(row["enabled"]),
        secret=row["secret"], previous_secret=row["previous_secret"],
        rotation_ends_at=row["rotation_ends_at"],
        consecutive_failures=row["consecutive_failures"], failing_since=row["failing_since"],
    )


def record_success(conn: sqlite3.Connection, delivery_id: int, attempt: int, *, now: str,
                   status: int, request: str, response: str) -> bool:
    """False when the row changed meanwhile (deleted, or replayed while in flight)."""
    updated = conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, delivered_at = ?, "
        "last_attempt_at = ?, last_status = ?, last_error = '', request_excerpt = ?, "
        "response_excerpt = ? WHERE id = ? AND status = 'pending' AND attempts = ?",
        (attempt, now, now, status, request, response, delivery_id, attempt - 1),
    ).rowcount
    return updated == 1


def record_failure(conn: sqlite3.Connection, delivery_id: int, attempt: int, *, now: str,
                   status: int | None, error: str, request: str, response: str,
                   next_attempt_at: str | None) -> bool:
    """`next_attempt_at` None gives up (failed); otherwise it stays pending until then."""
    updated = conn.execute(
        "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, "
        "last_attempt_at = ?, last_status = ?, last_error = ?, request_excerpt = ?, "
        "response_excerpt = ? WHERE id = ? AND status = 'pending' AND attempts = ?",
        ("failed" if next_attempt_at is None else "pending", attempt, next_attempt_at or now, now,
         status, error, request, response, delivery_id, attempt - 1),
    ).rowcount
    return updated == 1


def endpoint_succeeded(conn: sqlite3.Connection, webhook_id: str) -> None:
    conn.execute(
        "UPDATE webhooks SET consecutive_failures = 0, failing_since = NULL WHERE id = ?",
        (webhook_id,),
    )


def endpoint_failed(conn: sqlite3.Connection, webhook_id: str, now: str
                    ) -> tuple[int, str] | None:
    """Count one more failed attempt; returns (failures in a row, failing since)."""
    row = conn.execute(
        "UPDATE webhooks SET consecutive_failures = consecutive_failures + 1, "
        "failing_since = coalesce(failing_since, ?) WHERE id = ? "
        "RETURNING consecutive_failures, failing_since",
        (now, webhook_id),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def disable(conn: sqlite3.Connection, webhook_id: str, reason: str, now: str) -> bool:
    """True when this call disabled it (it was enabled)."""
    return conn.execute(
        "UPDATE webhooks SET enabled = 0, disabled_reason = ?, updated_at = ? "
        "WHERE id = ? AND enabled = 1",
        (reason, now, webhook_id),
    ).rowcount == 1


def purge_finished(conn: sqlite3.Connection, before: str, batch: int) -> int:
    """Delete up to `batch` delivered/failed rows created before `before` (oldest rows first:
    rowid order finds them at the start of the table, so a batch stays cheap)."""
    return conn.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries "
        "WHERE status != 'pending' AND created_at < ? ORDER BY id LIMIT ?)",
        (before, batch),
    ).rowcount
