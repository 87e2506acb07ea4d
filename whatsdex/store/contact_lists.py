"""Contact lists: filtered pages, bulk writes for imports, import jobs (SQL only, tenant first).

Inbound upserts of contacts live in `store/contacts.py`; this module is what managing a list
needs on top. Tags are a JSON array in `contacts.tags`; the `contact_tags` table mirrors it
(triggers, m0007) so filtering by tag is an index lookup.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from whatsdex.store.database import Store

OPT_STATUSES = ("unknown", "opted_in", "opted_out")
IMPORT_STATUSES = ("queued", "running", "done", "failed")
_IN_CHUNK = 500  # phones per `IN (json_each(?))` lookup
_PHONE_PUNCTUATION = re.compile(r"[\s()+./-]")


class Contact(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    phone: str  # E.164 digits without '+', or '' for a contact WhatsApp only knows by LID
    jid: str
    lid: str
    name: str
    push_name: str
    tags: list[str]
    custom: dict[str, Any]
    opt_status: str
    opt_changed_at: str | None
    opt_source: str
    created_at: str
    updated_at: str


_COLS = ("id, tenant_id, phone, jid, lid, name, push_name, tags, custom, opt_status, "
         "opt_changed_at, opt_source, created_at, updated_at")


def _contact(row: sqlite3.Row) -> Contact:
    tags = json.loads(row["tags"] or "[]")
    custom = json.loads(row["custom"] or "{}")
    return Contact(
        id=row["id"], tenant_id=row["tenant_id"], phone=row["phone"], jid=row["jid"],
        lid=row["lid"], name=row["name"], push_name=row["push_name"],
        tags=[t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
        custom=custom if isinstance(custom, dict) else {},
        opt_status=row["opt_status"], opt_changed_at=row["opt_changed_at"],
        opt_source=row["opt_source"], created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- One contact -------------------------------------------------------------------------------

async def get(db: Store, tenant_id: str, contact_id: str) -> Contact | None:
    row = await db.fetchone(f"SELECT {_COLS} FROM contacts WHERE tenant_id = ? AND id = ?",
                            (tenant_id, contact_id))
    return None if row is None else _contact(row)


def get_sync(conn: sqlite3.Connection, tenant_id: str, contact_id: str) -> Contact | None:
    row = conn.execute(f"SELECT {_COLS} FROM contacts WHERE tenant_id = ? AND id = ?",
                       (tenant_id, contact_id)).fetchone()
    return None if row is None else _contact(row)


def by_phone(conn: sqlite3.Connection, tenant_id: str, phone: str) -> Contact | None:
    # `phone != ''` lets SQLite use the partial unique index on phone.
    row = conn.execute(f"SELECT {_COLS} FROM contacts WHERE tenant_id = ? AND phone = ? "
                       "AND phone != ''", (tenant_id, phone)).fetchone()
    return None if row is None else _contact(row)


def count(conn: sqlite3.Connection, tenant_id: str) -> int:
    return int(conn.execute("SELECT count(*) FROM contacts WHERE tenant_id = ?",
                            (tenant_id,)).fetchone()[0])


async def count_async(db: Store, tenant_id: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM contacts WHERE tenant_id = ?",
                                 (tenant_id,)))


def insert(conn: sqlite3.Connection, contact: Contact) -> None:
    insert_many(conn, [contact])


def _values(c: Contact) -> tuple[Any, ...]:
    return (c.id, c.tenant_id, c.phone, c.jid, c.lid, c.name, c.push_name, _dump(c.tags),
            _dump(c.custom), c.opt_status, c.opt_changed_at, c.opt_source, c.created_at,
            c.updated_at)


# Bulk writes are one statement per batch, not `executemany`: inside the writer's savepoint
# every statement journals the pages it touches, which made row-by-row imports ~3x slower.
_BATCH = 500


def insert_many(conn: sqlite3.Connection, contacts: Sequence[Contact]) -> None:
    row = "(" + ", ".join(["?"] * len(_COLS.split(","))) + ")"
    for start in range(0, len(contacts), _BATCH):
        batch = contacts[start:start + _BATCH]
        conn.execute(f"INSERT INTO contacts ({_COLS}) VALUES " + ", ".join([row] * len(batch)),
                     [value for c in batch for value in _values(c)])


_UPDATED = ("phone", "jid", "lid", "name", "tags", "custom", "opt_status", "opt_changed_at",
            "opt_source", "updated_at")


def update_many(conn: sqlite3.Connection, contacts: Sequence[Contact]) -> None:
    """Write back everything a list manager may change (push_name belongs to WhatsApp)."""
    assignments = ", ".join(f"{name} = json_extract(u.value, '$[{i + 2}]')"
                            for i, name in enumerate(_UPDATED))
    for start in range(0, len(contacts), _BATCH):
        batch = [[c.id, c.tenant_id, c.phone, c.jid, c.lid, c.name, _dump(c.tags),
                  _dump(c.custom), c.opt_status, c.opt_changed_at, c.opt_source, c.updated_at]
                 for c in contacts[start:start + _BATCH]]
        conn.execute(
            f"UPDATE contacts SET {assignments} FROM json_each(?) AS u "
            "WHERE contacts.id = json_extract(u.value, '$[0]') "
            "AND contacts.tenant_id = json_extract(u.value, '$[1]')", (_dump(batch),))


def delete(conn: sqlite3.Connection, tenant_id: str, contact_id: str) -> int:
    return conn.execute("DELETE FROM contacts WHERE tenant_id = ? AND id = ?",
                        (tenant_id, contact_id)).rowcount


def same_person(conn: sqlite3.Connection, tenant_id: str, contact: Contact) -> list[str]:
    """Ids of every row of the tenant that is this person (same phone, JID or LID).

    A union of index lookups: each `x != ''` lets SQLite use that column's partial index.
    """
    rows = conn.execute(
        "SELECT id FROM contacts WHERE tenant_id = ? AND id = ? "
        "UNION SELECT id FROM contacts WHERE tenant_id = ? AND phone = ? AND phone != '' "
        "UNION SELECT id FROM contacts WHERE tenant_id = ? AND jid = ? AND jid != '' "
        "UNION SELECT id FROM contacts WHERE tenant_id = ? AND lid = ? AND lid != ''",
        (tenant_id, contact.id, tenant_id, contact.phone, tenant_id, contact.jid, tenant_id,
         contact.lid),
    ).fetchall()
    return [row[0] for row in rows]


def set_opt(conn: sqlite3.Connection, tenant_id: str, contact_ids: Iterable[str], status: str,
            *, source: str, at: str) -> int:
    ids = list(contact_ids)
    return conn.execute(
        "UPDATE contacts SET opt_status = ?, opt_source = ?, opt_changed_at = ?, updated_at = ? "
        "WHERE tenant_id = ? AND id IN (SELECT value FROM json_each(?))",
        (status, source, at, at, tenant_id, _dump(ids)),
    ).rowcount


def opt_status_of(conn: sqlite3.Connection, tenant_id: str, contact_id: str) -> str | None:
    row = conn.execute("SELECT opt_status FROM contacts WHERE tenant_id = ? AND id = ?",
                       (tenant_id, contact_id)).fetchone()
    return None if row is None else str(row[0])


# -- Lists -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Filter:
    tag: str | None = None
    opt_status: str | None = None
    search: str | None = None  # a substring of the name, the WhatsApp name or the phone digits


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(tenant_id: str, f: Filter) -> tuple[str, list[Any]]:
    clauses = ["c.tenant_id = ?"]
    params: list[Any] = [tenant_id]
    if f.tag:
        clauses.append("c.id IN (SELECT contact_id FROM contact_tags "
                       "WHERE tenant_id = ? AND tag = ?)")
        params += [tenant_id, f.tag]
    if f.opt_status:
        clauses.append("c.opt_status = ?")
        params.append(f.opt_status)
    if f.search:
        text = f.search.strip()
        # Digits are a phone search only when the query looks like a number ("+49 30…"),
        # not when a name happens to contain one.
        digits = _PHONE_PUNCTUATION.sub("", text)
        if not (digits.isascii() and digits.isdigit()):
            digits = ""
        alternatives = ["c.name LIKE ? ESCAPE '\\'", "c.push_name LIKE ? ESCAPE '\\'"]
        params += [_like(text), _like(text)]
        if digits:
            alternatives.append("c.phone LIKE ? ESCAPE '\\'")
            params.append(_like(digits))
        clauses.append("(" + " OR ".join(alternatives) + ")")
    return " AND ".join(clauses), params


async def page(db: Store, tenant_id: str, f: Filter, *, after: tuple[str, str] | None,
               limit: int) -> list[Contact]:
    """Newest first; `after` is the (created_at, id) of the last row of the previous page."""
    where, params = _where(tenant_id, f)
    if after is not None:
        where += " AND (c.created_at, c.id) < (?, ?)"  # a range seek in contacts_recent
        params += [after[0], after[1]]
    cols = ", ".join(f"c.{name.strip()}" for name in _COLS.split(","))
    rows = await db.fetchall(
        f"SELECT {cols} FROM contacts c WHERE {where} "
        "ORDER BY c.created_at DESC, c.id DESC LIMIT ?", (*params, limit))
    return [_contact(row) for row in rows]


async def count_matching(db: Store, tenant_id: str, f: Filter) -> int:
    where, params = _where(tenant_id, f)
    return int(await db.fetchval(f"SELECT count(*) FROM contacts c WHERE {where}", params))


async def tag_counts(db: Store, tenant_id: str) -> list[tuple[str, int]]:
    rows = await db.fetchall(
        "SELECT tag, count(*) FROM contact_tags WHERE tenant_id = ? GROUP BY tag ORDER BY tag",
        (tenant_id,))
    return [(row[0], int(row[1])) for row in rows]


async def custom_keys(db: Store, tenant_id: str) -> list[str]:
    """Every custom field key in use by the tenant's contacts, sorted."""
    rows = await db.fetchall(
        "SELECT DISTINCT k.key FROM contacts c, "
        "json_each(CASE WHEN json_valid(c.custom) THEN c.custom ELSE '{}' END) k "
        "WHERE c.tenant_id = ? ORDER BY k.key", (tenant_id,))
    return [str(row[0]) for row in rows]


# -- Imports: contacts by phone, in bulk --------------------------------------------------------

def _chunks(phones: Sequence[str]) -> Iterable[str]:
    for start in range(0, len(phones), _IN_CHUNK):
        yield _dump(list(phones[start:start + _IN_CHUNK]))


def by_phones(conn: sqlite3.Connection, tenant_id: str, phones: Sequence[str]
              ) -> dict[str, Contact]:
    found: dict[str, Contact] = {}
    for chunk in _chunks(phones):
        rows = conn.execute(
            f"SELECT {_COLS} FROM contacts WHERE tenant_id = ? AND phone != '' "
            "AND phone IN (SELECT value FROM json_each(?))", (tenant_id, chunk)).fetchall()
        for row in rows:
            found[row["phone"]] = _contact(row)
    return found


async def existing_phones(db: Store, tenant_id: str, phones: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(phones):
        rows = await db.fetchall(
            "SELECT phone FROM contacts WHERE tenant_id = ? "
            "AND phone != '' AND phone IN (SELECT value FROM json_each(?))", (tenant_id, chunk))
        found.update(str(row[0]) for row in rows)
    return found


# -- Import jobs -------------------------------------------------------------------------------

class ImportJob(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    status: str
    status_reason: str
    filename: str
    options: dict[str, Any]
    total: int
    processed: int
    imported: int
    updated: int
    unchanged: int
    skipped: int
    kept_opted_out: int
    errors: list[dict[str, Any]]
    created_by: str
    created_at: str
    updated_at: str
    finished_at: str | None


_JOB_COLS = ("id, tenant_id, status, status_reason, filename, options, total, processed, "
             "imported, updated, unchanged, skipped, kept_opted_out, errors, "
             "created_by, created_at, updated_at, finished_at")
_COUNTERS = ("total", "processed", "imported", "updated", "unchanged", "skipped",
             "kept_opted_out")


def _job(row: sqlite3.Row) -> ImportJob:
    values = {name.strip(): row[name.strip()] for name in _JOB_COLS.split(",")}
    values["options"] = json.loads(values["options"] or "{}")
    values["errors"] = json.loads(values["errors"] or "[]")
    return ImportJob(**values)


def insert_job(conn: sqlite3.Connection, job: ImportJob) -> None:
    conn.execute(
        f"INSERT INTO contact_imports ({_JOB_COLS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job.id, job.tenant_id, job.status, job.status_reason, job.filename,
         _dump(job.options), *(getattr(job, name) for name in _COUNTERS), _dump(job.errors),
         job.created_by, job.created_at, job.updated_at, job.finished_at),
    )


def save_progress(conn: sqlite3.Connection, job: ImportJob) -> None:
    """The job's counters, errors and status as they are now (also its heartbeat)."""
    conn.execute(
        "UPDATE contact_imports SET status = ?, status_reason = ?, "
        + ", ".join(f"{name} = ?" for name in _COUNTERS)
        + ", errors = ?, updated_at = ?, finished_at = ? WHERE tenant_id = ? AND id = ?",
        (job.status, job.status_reason, *(getattr(job, name) for name in _COUNTERS),
         _dump(job.errors), job.updated_at, job.finished_at, job.tenant_id, job.id),
    )


async def get_job(db: Store, tenant_id: str, job_id: str) -> ImportJob | None:
    row = await db.fetchone(
        f"SELECT {_JOB_COLS} FROM contact_imports WHERE tenant_id = ? AND id = ?",
        (tenant_id, job_id))
    return None if row is None else _job(row)


async def list_jobs(db: Store, tenant_id: str, limit: int = 20) -> list[ImportJob]:
    rows = await db.fetchall(
        f"SELECT {_JOB_COLS} FROM contact_imports WHERE tenant_id = ? "
        "ORDER BY created_at DESC, id DESC LIMIT ?", (tenant_id, limit))
    return [_job(row) for row in rows]


def fail_if_stale(conn: sqlite3.Connection, tenant_id: str, job_id: str, *, beat_before: str,
                  reason: str, at: str) -> int:
    """Mark a queued/running job failed when its heartbeat is older than `beat_before`."""
    return conn.execute(
        "UPDATE contact_imports SET status = 'failed', status_reason = ?, finished_at = ?, "
        "updated_at = ? WHERE tenant_id = ? AND id = ? AND status IN ('queued', 'running') "
        "AND updated_at < ?",
        (reason, at, at, tenant_id, job_id, beat_before),
    ).rowcount


def running_job(conn: sqlite3.Connection, tenant_id: str, *, beat_after: str) -> str | None:
    """The id of an import of this tenant that is still going (heartbeat newer than given)."""
    row = conn.execute(
        "SELECT id FROM contact_imports WHERE tenant_id = ? AND status IN ('queued', 'running') "
        "AND updated_at >= ? ORDER BY created_at DESC LIMIT 1", (tenant_id, beat_after)).fetchone()
    return None if row is None else str(row[0])
