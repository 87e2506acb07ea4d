"""Plan limits, checked inside the transaction that would exceed them (nothing half-created)."""

from __future__ import annotations

import sqlite3

from whatsdex.errors import Forbidden, NotFound
from whatsdex.store import plans

LABELS = {
    "max_numbers": "linked numbers",
    "max_messages_per_day": "messages per day",
    "max_contacts": "contacts",
    "max_active_campaigns": "active campaigns",
    "max_webhooks": "webhooks",
}


class PlanLimitReached(Forbidden):
    """403: creating one more would exceed the tenant's plan."""


def enforce(conn: sqlite3.Connection, tenant_id: str, limit: str, current: int, adding: int = 1,
            ) -> None:
    plan = plans.tenant_plan(conn, tenant_id)
    if plan is None:
        raise NotFound("Tenant not found")
    allowed = int(getattr(plan, limit))
    if current + adding > allowed:
        raise PlanLimitReached(
            f"Plan limit reached: the {plan.name} plan allows {allowed} {LABELS[limit]}",
            {"limit": limit, "allowed": allowed, "current": current, "plan": plan.id},
        )
