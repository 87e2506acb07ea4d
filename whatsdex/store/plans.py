"""Plans: operator-editable rows of limits that tenants are placed on."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import Plan, columns, from_row, from_rows

LIMITS = (
    "max_numbers",
    "max_messages_per_day",
    "max_contacts",
    "max_active_campaigns",
    "max_webhooks",
)

_COLS = columns(Plan)


async def list_plans(db: Store) -> list[Plan]:
    return from_rows(Plan, await db.fetchall(f"SELECT {_COLS} FROM plans ORDER BY id"))


async def get_plan(db: Store, plan_id: str) -> Plan | None:
    return from_row(Plan, await db.fetchone(f"SELECT {_COLS} FROM plans WHERE id = ?", (plan_id,)))


def get_plan_sync(conn: sqlite3.Connection, plan_id: str) -> Plan | None:
    row = conn.execute(f"SELECT {_COLS} FROM plans WHERE id = ?", (plan_id,)).fetchone()
    return from_row(Plan, row)


def tenant_plan(conn: sqlite3.Connection, tenant_id: str) -> Plan | None:
    row = conn.execute(
        f"SELECT {columns(Plan, 'p')} FROM plans p JOIN tenants t ON t.plan_id = p.id "
        "WHERE t.id = ?",
        (tenant_id,),
    ).fetchone()
    return from_row(Plan, row)


def upsert_plan(conn: sqlite3.Connection, plan: Plan) -> None:
    conn.execute(
        f"INSERT INTO plans ({_COLS}) VALUES ({', '.join('?' * len(Plan.__struct_fields__))}) "
        "ON CONFLICT(id) DO UPDATE SET name = excluded.name, "
        + ", ".join(f"{limit} = excluded.{limit}" for limit in LIMITS)
        + ", updated_at = excluded.updated_at",
        [getattr(plan, name) for name in Plan.__struct_fields__],
    )


def delete_plan(conn: sqlite3.Connection, plan_id: str) -> int:
    return conn.execute("DELETE FROM plans WHERE id = ?", (plan_id,)).rowcount


def tenants_on_plan(conn: sqlite3.Connection, plan_id: str) -> int:
    row = conn.execute("SELECT count(*) FROM tenants WHERE plan_id = ?", (plan_id,)).fetchone()
    return int(row[0])
