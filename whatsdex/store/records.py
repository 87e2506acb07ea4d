"""Typed rows: msgspec structs built from `sqlite3.Row`s, shared by the API and the UI."""

from __future__ import annotations

import sqlite3
from typing import Any, TypeVar

import msgspec

R = TypeVar("R", bound=msgspec.Struct)


def from_row(cls: type[R], row: sqlite3.Row | None) -> R | None:
    if row is None:
        return None
    return cls(**{name: row[name] for name in cls.__struct_fields__})


def from_rows(cls: type[R], rows: list[sqlite3.Row]) -> list[R]:
    return [cls(**{name: row[name] for name in cls.__struct_fields__}) for row in rows]


def columns(cls: type[msgspec.Struct], table: str = "") -> str:
    """`a, b, c` (or `t.a, t.b, t.c`) for exactly the struct's fields, in order."""
    prefix = f"{table}." if table else ""
    return ", ".join(prefix + name for name in cls.__struct_fields__)


class Plan(msgspec.Struct, kw_only=True):
    id: str
    name: str
    max_numbers: int
    max_messages_per_day: int
    max_contacts: int
    max_active_campaigns: int
    max_webhooks: int
    created_at: str
    updated_at: str


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    plan_id: str
    status: str
    timezone: str
    created_at: str
    updated_at: str


class User(msgspec.Struct, kw_only=True):
    id: str
    email: str
    name: str
    role: str
    tenant_id: str | None
    created_at: str
    last_login_at: str | None


class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str | None
    name: str
    role: str
    prefix: str
    created_by: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


class LinkToken(msgspec.Struct, kw_only=True):
    id: str
    purpose: str
    tenant_id: str | None
    subject: str
    role: str | None
    created_by: str | None
    created_at: str
    expires_at: str
    used_at: str | None
    revoked_at: str | None


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    at: str
    tenant_id: str | None
    actor_type: str
    actor_id: str | None
    actor_label: str
    action: str
    object_type: str
    object_id: str
    detail: str
    ip: str


class WaSession(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    status: str
    status_reason: str
    status_since: str
    desired: str
    phone: str
    jid: str
    lid: str
    push_name: str
    created_at: str
    updated_at: str


class WaSessionTransition(msgspec.Struct, kw_only=True):
    id: int
    session_id: str
    at: str
    from_status: str
    to_status: str
    reason: str


def as_dict(record: msgspec.Struct) -> dict[str, Any]:
    return msgspec.structs.asdict(record)
