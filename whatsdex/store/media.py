"""Media bytes: uploads and fetched files to send, and a size-capped cache of inbound media."""

from __future__ import annotations

import sqlite3

import msgspec

from whatsdex.store.database import Store


class Media(msgspec.Struct, kw_only=True):
    """A media row without its bytes (those are read only when needed)."""

    id: str
    tenant_id: str
    sha256: str
    mimetype: str
    size: int
    filename: str
    origin: str
    created_at: str
    last_used_at: str


FIELDS = Media.__struct_fields__
COLUMNS = ", ".join(FIELDS)


def from_row(row: sqlite3.Row) -> Media:
    return Media(**{name: row[name] for name in FIELDS})


def insert(conn: sqlite3.Connection, media: Media, data: bytes) -> None:
    conn.execute(
        f"INSERT INTO media ({COLUMNS}, data) VALUES ({', '.join('?' * (len(FIELDS) + 1))})",
        [*(getattr(media, name) for name in FIELDS), data],
    )


async def get(db: Store, tenant_id: str, media_id: str) -> Media | None:
    row = await db.fetchone(f"SELECT {COLUMNS} FROM media WHERE id = ? AND tenant_id = ?",
                            (media_id, tenant_id))
    return None if row is None else from_row(row)


def get_sync(conn: sqlite3.Connection, tenant_id: str, media_id: str) -> Media | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM media WHERE id = ? AND tenant_id = ?",
                       (media_id, tenant_id)).fetchone()
    return None if row is None else from_row(row)


async def data(db: Store, tenant_id: str, media_id: str) -> bytes | None:
    value = await db.fetchval("SELECT data FROM media WHERE id = ? AND tenant_id = ?",
                              (media_id, tenant_id))
    return None if value is None else bytes(value)


def touch(conn: sqlite3.Connection, tenant_id: str, media_id: str, now: str) -> None:
    conn.execute("UPDATE media SET last_used_at = ? WHERE id = ? AND tenant_id = ?",
                 (now, media_id, tenant_id))


def cache_size(conn: sqlite3.Connection) -> int:
    """Bytes held by downloaded inbound media, all tenants together (one cache, one cap)."""
    row = conn.execute("SELECT coalesce(sum(size), 0) FROM media WHERE origin = 'inbound'")
    return int(row.fetchone()[0])


def evict_oldest(conn: sqlite3.Connection, excess: int, batch: int = 500) -> tuple[int, int]:
    """Delete least recently used inbound media until `excess` bytes are freed.

    Returns (rows, bytes) deleted; a batch at a time so one write never runs long.
    """
    rows = conn.execute(
        "SELECT id, size FROM media WHERE origin = 'inbound' ORDER BY last_used_at LIMIT ?",
        (batch,),
    ).fetchall()
    freed, ids = 0, []
    for row in rows:
        if freed >= excess:
            break
        ids.append(row["id"])
        freed += int(row["size"])
    conn.executemany("DELETE FROM media WHERE id = ?", [(i,) for i in ids])
    return len(ids), freed
