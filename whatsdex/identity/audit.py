"""Recording who did what: called inside the writer transaction that makes the change."""

from __future__ import annotations

import sqlite3
from typing import Any

from whatsdex.identity.principal import Principal
from whatsdex.store import audit


def record(
    conn: sqlite3.Connection,
    actor: Principal,
    action: str,
    *,
    at: str,
    tenant_id: str | None,
    object_type: str = "",
    object_id: str = "",
    detail: dict[str, Any] | None = None,
    ip: str = "",
) -> None:
    audit.record(
        conn,
        tenant_id,
        at=at,
        actor_type=actor.audit_actor_type,
        actor_id=actor.id,
        actor_label=actor.label,
        action=action,
        object_type=object_type,
        object_id=object_id,
        detail=detail,
        ip=ip,
    )
