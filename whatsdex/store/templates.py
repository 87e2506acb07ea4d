"""Message templates, and the few contact and media reads their editor and preview need.

Contacts and media belong to the messaging store; the queries here are read-only and narrow
(one contact's fields, a picker's worth of names, an attachment's type) so the templates
feature does not depend on how those modules grow.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from whatsdex.store.database import Store
from whatsdex.store.records import columns, from_row, from_rows


class MessageTemplate(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    category: str
    body: str
    media_id: str | None
    media_kind: str
    filename: str
    created_at: str
    updated_at: str


class MediaRef(msgspec.Struct, kw_only=True):
    """What a template needs to know about an attachment (never its bytes)."""

    id: str
    mimetype: str
    size: int
    filename: str
    origin: str
    created_at: str


class ContactRef(msgspec.Struct, kw_only=True):
    id: str
    name: str
    push_name: str
    phone: str
    custom: str  # JSON object text, as stored

    @property
    def label(self) -> str:
        shown = self.name or self.push_name
        phone = f"+{self.phone}" if self.phone else ""
        return f"{shown} ({phone})" if shown and phone else shown or phone or self.id


_COLS = columns(MessageTemplate)
_MEDIA_COLS = columns(MediaRef)
_CONTACT_COLS = columns(ContactRef)
UPDATABLE = ("name", "category", "body", "media_id", "media_kind", "filename")


# -- Templates -------------------------------------------------------------------------------------

def insert(conn: sqlite3.Connection, template: MessageTemplate) -> None:
    conn.execute(
        f"INSERT INTO message_templates ({_COLS}) "
        f"VALUES ({', '.join('?' * len(MessageTemplate.__struct_fields__))})",
        [getattr(template, name) for name in MessageTemplate.__struct_fields__],
    )


def update(conn: sqlite3.Connection, tenant_id: str, template_id: str, now: str,
           **fields: Any) -> int:
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    assignments = "".join(f"{name} = ?, " for name in fields)
    return conn.execute(
        f"UPDATE message_templates SET {assignments}updated_at = ? WHERE tenant_id = ? AND id = ?",
        [*fields.values(), now, tenant_id, template_id],
    ).rowcount


def delete(conn: sqlite3.Connection, tenant_id: str, template_id: str) -> int:
    return conn.execute(
        "DELETE FROM message_templates WHERE tenant_id = ? AND id = ?", (tenant_id, template_id)
    ).rowcount


def get_sync(conn: sqlite3.Connection, tenant_id: str, template_id: str
             ) -> MessageTemplate | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM message_templates WHERE tenant_id = ? AND id = ?",
        (tenant_id, template_id),
    ).fetchone()
    return from_row(MessageTemplate, row)


async def get(db: Store, tenant_id: str, template_id: str) -> MessageTemplate | None:
    row = await db.fetchone(
        f"SELECT {_COLS} FROM message_templates WHERE tenant_id = ? AND id = ?",
        (tenant_id, template_id),
    )
    return from_row(MessageTemplate, row)


async def list_for_tenant(db: Store, tenant_id: str, category: str | None = None
                          ) -> list[MessageTemplate]:
    sql = f"SELECT {_COLS} FROM message_templates WHERE tenant_id = ?"
    params: list[Any] = [tenant_id]
    if category is not None:
        sql += " AND category = ? COLLATE NOCASE"
        params.append(category)
    rows = await db.fetchall(sql + " ORDER BY name COLLATE NOCASE, id", params)
    return from_rows(MessageTemplate, rows)


def name_taken(conn: sqlite3.Connection, tenant_id: str, name: str, except_id: str = "") -> bool:
    """Names are unique per tenant, ignoring case (the unique index agrees)."""
    row = conn.execute(
        "SELECT 1 FROM message_templates WHERE tenant_id = ? AND name = ? COLLATE NOCASE "
        "AND id != ?",
        (tenant_id, name, except_id),
    ).fetchone()
    return row is not None


# -- Attachments (the media table) -----------------------------------------------------------------

def media_sync(conn: sqlite3.Connection, tenant_id: str, media_id: str) -> MediaRef | None:
    row = conn.execute(
        f"SELECT {_MEDIA_COLS} FROM media WHERE tenant_id = ? AND id = ?", (tenant_id, media_id)
    ).fetchone()
    return from_row(MediaRef, row)


async def media(db: Store, tenant_id: str, media_id: str) -> MediaRef | None:
    row = await db.fetchone(
        f"SELECT {_MEDIA_COLS} FROM media WHERE tenant_id = ? AND id = ?", (tenant_id, media_id)
    )
    return from_row(MediaRef, row)


async def list_media(db: Store, tenant_id: str, limit: int = 100) -> list[MediaRef]:
    """Media a template may attach: sent-side files, newest first (inbound ones are a cache)."""
    rows = await db.fetchall(
        f"SELECT {_MEDIA_COLS} FROM media WHERE tenant_id = ? AND origin != 'inbound' "
        "ORDER BY created_at DESC, id LIMIT ?",
        (tenant_id, limit),
    )
    return from_rows(MediaRef, rows)


# -- Contacts (read-only: the preview and its picker) ----------------------------------------------

async def contact(db: Store, tenant_id: str, contact_id: str) -> ContactRef | None:
    row = await db.fetchone(
        f"SELECT {_CONTACT_COLS} FROM contacts WHERE tenant_id = ? AND id = ?",
        (tenant_id, contact_id),
    )
    return from_row(ContactRef, row)


async def list_contacts(db: Store, tenant_id: str, limit: int = 100) -> list[ContactRef]:
    """The first contacts by the name people see (saved name, else WhatsApp's), nameless last."""
    rows = await db.fetchall(
        f"SELECT {_CONTACT_COLS} FROM contacts WHERE tenant_id = ? "
        "ORDER BY coalesce(nullif(name, ''), nullif(push_name, '')) IS NULL, "
        "coalesce(nullif(name, ''), push_name) COLLATE NOCASE, phone, id LIMIT ?",
        (tenant_id, limit),
    )
    return from_rows(ContactRef, rows)


async def custom_keys(db: Store, tenant_id: str, limit: int = 20, sample: int = 500
                      ) -> list[str]:
    """Custom field keys in use, from the most recently changed contacts (a bounded scan)."""
    rows = await db.fetchall(
        "SELECT DISTINCT j.key FROM (SELECT custom FROM contacts WHERE tenant_id = ? "
        "AND custom != '{}' "
        "AND CASE WHEN json_valid(custom) THEN json_type(custom) END = 'object' "
        "ORDER BY updated_at DESC LIMIT ?) AS c, json_each(c.custom) AS j "
        "ORDER BY j.key LIMIT ?",
        (tenant_id, sample, limit),
    )
    return [str(row[0]) for row in rows]
