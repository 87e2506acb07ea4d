"""`whatsdex contacts import|export`: a tenant's contacts from and to CSV files, from the shell.

Imports run here, in this process, with the same rules and the same job record as an upload
in the dashboard (it shows in the tenant's recent imports). The server may keep running: both
write the same file through SQLite's locking, in short transactions.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, BinaryIO, TypeVar

import typer

from whatsdex.cli.common import DataDir, fail, friendly, settings_from
from whatsdex.clock import system_clock
from whatsdex.contacts import export, importer, service
from whatsdex.contacts.importer import Preview
from whatsdex.contacts.mapping import checker_for, clean_options
from whatsdex.contacts.tables import open_table
from whatsdex.errors import BadRequest
from whatsdex.identity.principal import CLI
from whatsdex.identity.tenants import get_tenant
from whatsdex.store import Store, contact_lists
from whatsdex.store.contact_lists import ImportJob

T = TypeVar("T")

contacts_app = typer.Typer(help="Contacts of a tenant: import and export CSV files.",
                           no_args_is_help=True)

ERRORS_PRINTED = 50

Tenant = Annotated[str, typer.Option("--tenant", metavar="ID", show_default=False,
                                     help="The tenant (workspace) id.")]


def _run(data_dir: Path | None, work: Callable[[Store], Awaitable[T]]) -> T:
    settings = settings_from(data_dir=data_dir)

    async def main() -> T:
        store = Store(settings.db_path, readers=1)
        await asyncio.to_thread(store.open)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        column, sep, field = pair.rpartition("=")
        if not sep or not column.strip():
            raise BadRequest(f"--map {pair!r}: write COLUMN=FIELD, e.g. --map Mobile=phone")
        mapping[column.strip()] = field.strip()
    return mapping


class _Progress:
    """One self-updating line on a terminal; a line per 10% otherwise (logs, CI)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, job: ImportJob) -> None:
        pct = 100 if job.total == 0 else min(100, job.processed * 100 // job.total)
        if pct == self.last or (not self.tty and pct % 10 and pct != 100):
            return
        self.last = pct
        line = (f"importing: {pct:3d}% ({job.processed:,} of {job.total:,} rows; "
                f"{job.imported:,} new, {job.updated:,} updated, {job.skipped:,} skipped)")
        sys.stderr.write(("\r" + line + ("\n" if pct == 100 else "")) if self.tty
                         else line + "\n")
        sys.stderr.flush()


def _print_preview(p: Preview) -> None:
    typer.echo(f"{p.filename}: {p.total:,} rows")
    typer.echo("columns:")
    for col in p.columns:
        typer.echo(f"  {col.name!r} → {col.field or 'ignored'}")
    if p.problem:
        typer.secho(f"cannot import: {p.problem}", err=True, fg=typer.colors.RED)
        return
    typer.echo(f"valid: {p.valid:,} ({p.new:,} new, {p.existing:,} existing: updated)")
    typer.echo(f"invalid: {p.invalid:,}; repeated in the file: {p.duplicate_in_file:,}")
    if p.over_limit:
        typer.echo(f"over the plan's contact limit (would be skipped): {p.over_limit:,}")
    for row in p.rows[:5]:
        typer.echo(f"  line {row.line}: {row.phone} {row.name}".rstrip())
    for error in p.errors[:ERRORS_PRINTED]:
        typer.echo(f"line {error['line']}: {error['reason']} ({error['value']!r})")
    typer.echo("dry run: nothing was written")


def _print_report(job: ImportJob, errors_file: Path | None) -> None:
    typer.echo(f"import {job.id}: {job.status}"
               + (f" ({job.status_reason})" if job.status_reason else ""))
    typer.echo(f"rows: {job.total:,}; new: {job.imported:,}; updated: {job.updated:,}; "
               f"unchanged: {job.unchanged:,}; skipped: {job.skipped:,}")
    if job.kept_opted_out:
        typer.echo(f"left opted out (an import does not opt them back in): "
                   f"{job.kept_opted_out:,}")
    for error in job.errors[:ERRORS_PRINTED]:
        typer.echo(f"line {error['line']}: {error['reason']} ({error['value']!r})")
    hidden = job.skipped - min(len(job.errors), ERRORS_PRINTED)
    if hidden > 0 and errors_file is None:
        typer.echo(f"… and {hidden:,} more: --errors FILE writes the report as CSV")
    if errors_file is not None:
        lines = [export.csv_line(["line", "value", "reason"])]
        lines += [export.csv_line([str(e["line"]), export.safe_cell(e["value"]),
                                   export.safe_cell(e["reason"])]) for e in job.errors]
        errors_file.write_text("".join(lines), encoding="utf-8")
        typer.echo(f"error report: {errors_file} ({len(job.errors):,} rows"
                   + (f", the first {importer.ERRORS_KEPT:,}" if job.skipped > len(job.errors)
                      else "") + ")")


@contacts_app.command("import")
@friendly
def import_file(
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row.", exists=True,
                                         dir_okay=False, readable=True, show_default=False)],
    tenant: Tenant,
    default_country: Annotated[str | None, typer.Option(
        "--default-country", metavar="CC", show_default=False,
        help="ISO country of numbers written without +, e.g. DE.")] = None,
    mapping: Annotated[list[str] | None, typer.Option(
        "--map", metavar="COLUMN=FIELD", show_default=False,
        help="Field of a column: phone, name, tags, opt_status, custom.<key> or ignore "
             "(repeatable; other columns are guessed from their header).")] = None,
    tags: Annotated[list[str] | None, typer.Option(
        "--tag", show_default=False, help="Add this tag to every contact (repeatable).")] = None,
    opt_status: Annotated[str | None, typer.Option(
        "--opt-status", show_default=False,
        help="opted_in or opted_out for rows that do not say (never opts an opted-out "
             "contact back in).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run",
                                          help="Check and preview; write nothing.")] = False,
    errors: Annotated[Path | None, typer.Option(
        "--errors", metavar="FILE", show_default=False,
        help="Write the skipped rows (line, value, reason) to this CSV file.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Import contacts from a CSV file, with progress and a per-row error report."""
    if file.stat().st_size > importer.MAX_FILE_BYTES:
        raise fail(f"{file} is larger than {importer.MAX_FILE_BYTES // 1_048_576} MB: "
                   "split it into smaller files")
    options = clean_options(mapping=_mapping(mapping or []),
                                     default_country=default_country, tags=tags or [],
                                     opt_status=opt_status)
    handle: BinaryIO = file.open("rb")
    try:
        table = open_table(handle, file.name)
        if not dry_run:
            checker_for(table, options)  # a bad mapping stops here, before any job
    except BaseException:
        handle.close()
        raise

    async def work(store: Store) -> Preview | ImportJob:
        await get_tenant(store, tenant)
        if dry_run:
            return await importer.preview(store, tenant, table, options)
        job = await importer.create_job(store, CLI, tenant, table, options,
                                        now=system_clock())
        return await importer.run_job(store, job, table, options, clock=system_clock,
                                      progress=_Progress())

    try:
        result = _run(data_dir, work)
    finally:
        table.close()
    if isinstance(result, Preview):
        _print_preview(result)
        if not result.ready:
            raise typer.Exit(1)
        return
    _print_report(result, errors)
    if result.status != "done":
        raise typer.Exit(1)


@contacts_app.command("export")
@friendly
def export_file(
    tenant: Tenant,
    file: Annotated[Path | None, typer.Argument(
        help="Where to write the CSV; standard output without it.", dir_okay=False,
        show_default=False)] = None,
    tag: Annotated[str | None, typer.Option("--tag", show_default=False,
                                            help="Only contacts with this tag.")] = None,
    opt_status: Annotated[str | None, typer.Option(
        "--opt-status", show_default=False, help="Only opted_in, opted_out or unknown.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Export a tenant's contacts as CSV (every field; it imports back as it is)."""
    f = service.make_filter(tag, opt_status)

    async def work(store: Store) -> int:
        await get_tenant(store, tenant)
        count = await contact_lists.count_matching(store, tenant, f)
        out = file.open("wb") if file is not None else sys.stdout.buffer
        try:
            async for chunk in export.csv_chunks(store, tenant, f):
                out.write(chunk)
        finally:
            if file is not None:
                out.close()
            else:
                out.flush()
        return count

    written = _run(data_dir, work)
    if file is not None:
        typer.echo(f"{written:,} contacts written to {file}", err=True)

