"""Contact imports: check every row (`mapping`), then preview, or write in the background.

A dry run checks the whole file and writes nothing. A real import is a job row plus a
background task that checks rows in a worker thread and writes them `CHUNK_ROWS` at a time,
each chunk one short transaction that also records the job's progress, so other requests get
the single writer between chunks and a restart loses at most the chunk in flight (importing the
file again is harmless: existing phones are updated, never duplicated).

Rules: a phone that appears twice in the file is imported once (later lines are reported); an
existing contact keeps its name unless the row has one, gains the row's tags and custom fields,
and is never opted back in by an import; new contacts stop at the plan's `max_contacts` (the
rest are reported), updates of existing contacts still apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from whatsdex.clock import Clock, iso
from whatsdex.contacts import phones, service
from whatsdex.contacts.mapping import (
    Candidate,
    Checker,
    ColumnPreview,
    ImportOptions,
    Problem,
    checker_for,
    make_plan,
    resolve_mapping,
    shown,
)
from whatsdex.contacts.tables import Table
from whatsdex.errors import BadRequest, Conflict, NotFound, WhatsdexError
from whatsdex.identity import audit
from whatsdex.identity.limits import LABELS
from whatsdex.identity.principal import Principal
from whatsdex.identity.tenants import get_tenant
from whatsdex.store import Store, plans
from whatsdex.store import contact_lists as rows
from whatsdex.store.contact_lists import Contact, ImportJob
from whatsdex.store.ids import new_id

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 50 * 1024 * 1024
CHUNK_ROWS = 1000
PREVIEW_ROWS = 20
PREVIEW_ERRORS = 100
ERRORS_KEPT = 1000  # per job; the counters stay exact beyond it
STALE_SECONDS = 300.0  # a running job whose heartbeat is older was interrupted


# -- Dry run -----------------------------------------------------------------------------------

class PreviewRow(msgspec.Struct, kw_only=True):
    line: int
    phone: str
    name: str
    tags: list[str]
    custom: dict[str, Any]
    opt_status: str


class Preview(msgspec.Struct, kw_only=True):
    filename: str
    columns: list[ColumnPreview]
    ready: bool  # False: `problem` says what to fix (e.g. no phone column)
    problem: str
    total: int
    valid: int
    invalid: int
    duplicate_in_file: int
    existing: int
    new: int
    over_limit: int  # new contacts the plan has no room for
    rows: list[PreviewRow]
    errors: list[dict[str, Any]]


@dataclass
class _Scan:
    columns: list[ColumnPreview]
    problem: str = ""
    phones: list[str] = field(default_factory=list)  # of the valid rows (memory: no rows kept)
    first: list[Candidate] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    invalid: int = 0
    duplicate: int = 0


def _scan(table: Table, options: ImportOptions) -> _Scan:
    fields = resolve_mapping(table.columns, options.mapping)
    samples: list[list[str]] = [[] for _ in table.columns]
    with contextlib.closing(table.rows()) as source:
        head = list(itertools.islice(source, 3))
    for _, cells in head:
        for i, sample in enumerate(samples):
            sample.append(shown(cells[i].strip()) if i < len(cells) else "")
    scan = _Scan(columns=[ColumnPreview(name=c, field=f, samples=s)
                          for c, f, s in zip(table.columns, fields, samples, strict=True)])
    try:
        checker = Checker(make_plan(table.columns, fields), options)
    except BadRequest as exc:
        scan.problem = exc.message
        return scan
    with contextlib.closing(table.rows()) as source:
        for line, cells in source:
            result = checker.check(line, cells)
            if isinstance(result, Candidate):
                if len(scan.first) < PREVIEW_ROWS:
                    scan.first.append(result)
                continue
            if result.kind == "duplicate":
                scan.duplicate += 1
            else:
                scan.invalid += 1
            if len(scan.errors) < PREVIEW_ERRORS:
                scan.errors.append(result)
    scan.phones = list(checker.seen)  # every valid row's phone, once
    return scan


async def preview(db: Store, tenant_id: str, table: Table, options: ImportOptions) -> Preview:
    """Check every row and compare with the tenant's contacts; nothing is written."""
    scan = await asyncio.to_thread(_scan, table, options)
    existing = len(await rows.existing_phones(db, tenant_id, scan.phones))
    new = len(scan.phones) - existing
    tenant = await get_tenant(db, tenant_id)
    plan = await plans.get_plan(db, tenant.plan_id)
    room = 0 if plan is None else plan.max_contacts - await rows.count_async(db, tenant_id)
    return Preview(
        filename=table.filename, columns=scan.columns, ready=not scan.problem,
        problem=scan.problem, total=table.total, valid=len(scan.phones), invalid=scan.invalid,
        duplicate_in_file=scan.duplicate, existing=existing, new=new,
        over_limit=max(0, new - max(0, room)),
        rows=[PreviewRow(line=c.line, phone=phones.e164(c.phone), name=c.name, tags=c.tags,
                         custom=c.custom, opt_status=c.opt_status) for c in scan.first],
        errors=[p.as_dict() for p in scan.errors])


# -- Writing a chunk ---------------------------------------------------------------------------

def _merge(contact: Contact, row: Candidate, stamp: str) -> tuple[bool, bool]:
    """Apply a row to an existing contact: (changed, kept opted out)."""
    changed = False
    if row.name and row.name != contact.name:
        contact.name, changed = row.name, True
    tags = service.clean_tags(contact.tags + row.tags)
    if tags != contact.tags:
        contact.tags, changed = tags, True
    custom = {**contact.custom, **row.custom}
    if custom != contact.custom:
        service.check_custom_size(custom)
        contact.custom, changed = custom, True
    kept = False
    if row.opt_status == "opted_out" and contact.opt_status != "opted_out":
        contact.opt_status, contact.opt_source = "opted_out", "import"
        contact.opt_changed_at, changed = stamp, True
    elif row.opt_status == "opted_in":
        if contact.opt_status == "unknown":
            contact.opt_status, contact.opt_source = "opted_in", "import"
            contact.opt_changed_at, changed = stamp, True
        elif contact.opt_status == "opted_out":
            kept = True  # only the person (STOP/START) or an explicit action opts back in
    if changed:
        contact.updated_at = stamp
    return changed, kept


def _record(job: ImportJob, problem: Problem) -> None:
    job.skipped += 1
    if len(job.errors) < ERRORS_KEPT:
        job.errors.append(problem.as_dict())


def write_chunk(conn: sqlite3.Connection, job: ImportJob, checked: Sequence[Candidate | Problem],
                stamp: str) -> ImportJob:
    """Inside a write: insert/update one chunk and save the job's progress with it."""
    job = msgspec.structs.replace(job, errors=list(job.errors), updated_at=stamp)
    tenant_id = job.tenant_id
    plan = plans.tenant_plan(conn, tenant_id)
    if plan is None:
        raise NotFound("Tenant not found")
    room = plan.max_contacts - rows.count(conn, tenant_id)
    good = [c for c in checked if isinstance(c, Candidate)]
    existing = rows.by_phones(conn, tenant_id, [c.phone for c in good])
    inserts: list[Contact] = []
    updates: list[Contact] = []
    for item in checked:
        job.processed += 1
        if isinstance(item, Problem):
            _record(job, item)
            continue
        contact = existing.get(item.phone)
        if contact is None:
            if room <= 0:
                _record(job, Problem(item.line, f"plan limit reached: the {plan.name} plan "
                                     f"allows {plan.max_contacts} {LABELS['max_contacts']}",
                                     phones.e164(item.phone), "limit"))
                continue
            room -= 1
            opted = item.opt_status != "unknown"
            inserts.append(Contact(
                id=new_id("con"), tenant_id=tenant_id, phone=item.phone,
                jid=service.phone_jid(item.phone), lid="", name=item.name, push_name="",
                tags=item.tags, custom=item.custom, opt_status=item.opt_status,
                opt_changed_at=stamp if opted else None, opt_source="import" if opted else "",
                created_at=stamp, updated_at=stamp))
            job.imported += 1
            continue
        try:
            changed, kept = _merge(contact, item, stamp)
        except BadRequest as exc:
            _record(job, Problem(item.line, exc.message, phones.e164(item.phone)))
            continue
        job.kept_opted_out += kept
        if changed:
            updates.append(contact)
            job.updated += 1
        else:
            job.unchanged += 1
    rows.insert_many(conn, inserts)
    rows.update_many(conn, updates)
    rows.save_progress(conn, job)
    return job


# -- Jobs --------------------------------------------------------------------------------------

def stale_before(now: float) -> str:
    return iso(now - STALE_SECONDS)


async def create_job(db: Store, actor: Principal, tenant_id: str, table: Table,
                     options: ImportOptions, *, now: float, ip: str = "") -> ImportJob:
    """Record a queued import (409 while another import of this tenant is running)."""
    stamp = iso(now)
    job = ImportJob(
        id=new_id("imp"), tenant_id=tenant_id, status="queued", status_reason="",
        filename=table.filename, options=msgspec.to_builtins(options), total=table.total,
        processed=0, imported=0, updated=0, unchanged=0, skipped=0, kept_opted_out=0,
        errors=[], created_by=actor.label, created_at=stamp, updated_at=stamp, finished_at=None)

    def write(conn: sqlite3.Connection) -> ImportJob:
        running = rows.running_job(conn, tenant_id, beat_after=stale_before(now))
        if running is not None:
            raise Conflict(f"Another import is running ({running}): wait for it to finish",
                           {"job_id": running})
        rows.insert_job(conn, job)
        audit.record(conn, actor, "contacts.import_started", at=stamp, tenant_id=tenant_id,
                     object_type="contact_import", object_id=job.id,
                     detail={"filename": job.filename, "rows": job.total}, ip=ip)
        return job

    return await db.write(write)


Progress = Callable[[ImportJob], None]


async def run_job(db: Store, job: ImportJob, table: Table, options: ImportOptions, *,
                  clock: Clock, progress: Progress | None = None) -> ImportJob:
    """Import every row of `table` into the job's tenant; closes the table at the end.

    Checking the next chunk while this one is written was measured: no faster (both halves
    mostly hold the GIL), so the loop stays simple.
    """
    try:
        checker = checker_for(table, options)
        job = msgspec.structs.replace(job, status="running", updated_at=iso(clock()))
        await db.write(lambda conn: rows.save_progress(conn, job))
        source = table.rows()
        try:
            while checked := await asyncio.to_thread(checker.take, source, CHUNK_ROWS):
                job = await db.write(functools.partial(write_chunk, job=job, checked=checked,
                                                       stamp=iso(clock())))
                if progress is not None:
                    progress(job)
        finally:
            # Cancelled mid-chunk, the worker thread may still be inside the generator.
            with contextlib.suppress(ValueError):
                source.close()
        job = await _finish(db, job, "done", "", clock)
    except asyncio.CancelledError:
        await fail_job(db, job, "interrupted: the server stopped during the import", clock)
        raise
    except WhatsdexError as exc:
        job = await fail_job(db, job, exc.message, clock)
    except Exception:
        log.exception("contact import %s failed", job.id)
        job = await fail_job(db, job, "internal error: see the server log", clock)
    finally:
        table.close()
    if progress is not None:
        progress(job)
    return job


async def _finish(db: Store, job: ImportJob, status: str, reason: str, clock: Clock
                  ) -> ImportJob:
    stamp = iso(clock())
    done = msgspec.structs.replace(job, status=status, status_reason=reason, updated_at=stamp,
                                   finished_at=stamp)
    await db.write(lambda conn: rows.save_progress(conn, done))
    return done


async def fail_job(db: Store, job: ImportJob, reason: str, clock: Clock) -> ImportJob:
    """Mark the job failed, if the store still takes writes (not during a broken shutdown)."""
    with contextlib.suppress(Exception):
        return await _finish(db, job, "failed", reason, clock)
    return msgspec.structs.replace(job, status="failed", status_reason=reason)


INTERRUPTED = ("interrupted: the server stopped during the import; import the file again "
               "(rows already imported are updated, not duplicated)")


def _stale(job: ImportJob, now: float) -> bool:
    return job.status in ("queued", "running") and job.updated_at < stale_before(now)


async def _fail_stale(db: Store, job: ImportJob, now: float) -> ImportJob:
    await db.write(lambda conn: rows.fail_if_stale(
        conn, job.tenant_id, job.id, beat_before=stale_before(now), reason=INTERRUPTED,
        at=iso(now)))
    found = await rows.get_job(db, job.tenant_id, job.id)
    assert found is not None
    return found


async def get_job(db: Store, tenant_id: str, job_id: str, *, now: float) -> ImportJob:
    """The job; one that stopped beating (the server died mid-import) is reported failed."""
    job = await rows.get_job(db, tenant_id, job_id)
    if job is None:
        raise NotFound("Import not found")
    return await _fail_stale(db, job, now) if _stale(job, now) else job


async def list_jobs(db: Store, tenant_id: str, *, now: float, limit: int = 20
                    ) -> list[ImportJob]:
    """Recent imports, newest first, interrupted ones reported failed like `get_job` does."""
    return [await _fail_stale(db, job, now) if _stale(job, now) else job
            for job in await rows.list_jobs(db, tenant_id, limit)]
