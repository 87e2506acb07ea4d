"""Tenants: the client workspaces. Deleting one purges everything that references it."""

from __future__ import annotations

import sqlite3

from whatsdex.store.database import Store
from whatsdex.store.records import Tenant, columns, from_row, from_rows

_COLS = columns(Tenant)


async def get_tenant(db: Store, tenant_id: str) -> Tenant | None:
    row = await db.fetchone(f"SELECT {_COLS} FROM tenants WHERE id = ?", (tenant_id,))
    return from_row(Tenant, row)


def get_tenant_sync(conn: sqlite3.Connection, tenant_id: str) -> Tenant | None:
    row = conn.execute(f"SELECT {_COLS} FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
    return from_row(Tenant, row)


async def list_tenants(db: Store) -> list[Tenant]:
    return from_rows(Tenant, await db.fetchall(f"SELECT {_COLS} FROM tenants ORDER BY name, id"))


def insert_tenant(conn: sqlite3.Connection, tenant: Tenant) -> None:
    conn.execute(
        f"INSERT INTO tenants ({_COLS}) VALUES ({', '.join('?' * len(Tenant.__struct_fields__))})",
        [getattr(tenant, name) for name in Tenant.__struct_fields__],
    )


def update_tenant(conn: sqlite3.Connection, tenant_id: str, now: str, **fields: str) -> int:
    allowed = {"name", "plan_id", "status", "timezone"}
    if not fields or set(fields) - allowed:
        raise ValueError(f"cannot update tenant fields {sorted(set(fields) - allowed)}")
    assignments = ", ".join(f"{name} = ?" for name in fields)
    return conn.execute(
        f"UPDATE tenants SET {assignments}, updated_at = ? WHERE id = ?",
        [*fields.values(), now, tenant_id],
    ).rowcount


def delete_tenant(conn: sqlite3.Connection, tenant_id: str) -> int:
    """Foreign keys cascade to every tenant-owned table; the tenant's audit rows go too."""
    conn.execute("DELETE FROM audit_log WHERE tenant_id = ?", (tenant_id,))
    return conn.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,)).rowcount
