"""The audit log: written in the same transaction as the change it records."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from whatsdex.store.database import Store
from whatsdex.store.records import AuditEntry, columns, from_rows

_COLS = columns(AuditEntry)


def record(
    conn: sqlite3.Connection,
    tenant_id: str | None,
    *,
    at: str,
    actor_type: str,
    actor_id: str | None,
    actor_label: str,
    action: str,
    object_type: str = "",
    object_id: str = "",
    detail: dict[str, Any] | None = None,
    ip: str = "",
) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, tenant_id, actor_type, actor_id, actor_label, action, "
        "object_type, object_id, detail, ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (at, tenant_id, actor_type, actor_id, actor_label, action, object_type, object_id,
         json.dumps(detail or {}, sort_keys=True), ip),
    )


async def list_entries(
    db: Store, tenant_id: str | None, *, before_id: int | None = None, limit: int = 100,
    all_tenants: bool = False,
) -> list[AuditEntry]:
    """Newest first. `all_tenants` (operator view) ignores tenant_id."""
    where: list[str] = []
    params: list[str | int | None] = []
    if not all_tenants:
        where.append("tenant_id IS ?")
        params.append(tenant_id)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM audit_log {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
    )
    return from_rows(AuditEntry, rows)
