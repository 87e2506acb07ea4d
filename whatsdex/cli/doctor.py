"""`whatsdex doctor`: check what WhatsDeX needs before an operator finds out the hard way."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import typer

from whatsdex.cli.common import DataDir, friendly, settings_from
from whatsdex.errors import DatabaseTooNew
from whatsdex.sessions import launch
from whatsdex.settings import Settings
from whatsdex.store import connection, migrations

MIN_FREE_BYTES = 200 * 1024 * 1024

Check = Callable[[Settings], tuple[bool, str]]


def _data_dir(settings: Settings) -> tuple[bool, str]:
    path = settings.data_dir
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return True, f"{path} does not exist yet; serve will create it"
        return False, f"{path} does not exist and {parent} is not writable"
    if not path.is_dir():
        return False, f"{path} is not a directory"
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return False, f"{path} is not readable and writable by this user"
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        return False, f"{path} is open to other users (mode {mode:o}); run chmod o-rwx on it"
    return True, f"{path} (mode {mode:o})"


def _database(settings: Settings) -> tuple[bool, str]:
    path = settings.db_path
    if not path.exists():
        return True, "no database yet; serve will create it"
    try:
        conn = connection.open_untouched(path)
    except sqlite3.Error as exc:
        return False, f"cannot open {path}: {exc}"
    try:
        migrations.check_not_newer(conn, path)
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            return False, f"integrity check failed: {'; '.join(result[:3])}"
        todo = migrations.pending(conn)
    except DatabaseTooNew as exc:
        return False, exc.message
    except sqlite3.Error as exc:
        return False, f"{path} is not a readable database: {exc}"
    finally:
        conn.close()
    size = path.stat().st_size / 1_048_576
    pending = f", {len(todo)} migration(s) pending" if todo else ""
    return True, f"integrity ok, {size:.1f} MB{pending}"


def _engine(settings: Settings) -> tuple[bool, str]:
    return launch.check_engine_library()


def _disk(settings: Settings) -> tuple[bool, str]:
    target = next(p for p in (settings.data_dir, *settings.data_dir.parents) if p.exists())
    free = shutil.disk_usage(target).free
    db_size = settings.db_path.stat().st_size if settings.db_path.exists() else 0
    # A backup needs as much room as the database itself.
    needed = max(MIN_FREE_BYTES, 2 * db_size)
    text = f"{free / 1_073_741_824:.1f} GB free"
    if free < needed:
        return False, f"{text}; at least {needed / 1_048_576:.0f} MB needed for backups"
    return True, text


CHECKS: list[tuple[str, Check]] = [
    ("data dir", _data_dir),
    ("database", _database),
    ("engine library", _engine),
    ("disk space", _disk),
]


@friendly
def doctor(data_dir: DataDir = None) -> None:
    """Check the data dir, the database, the WhatsApp engine library and free disk space."""
    settings = settings_from(data_dir=data_dir)
    failed = 0
    for name, check in CHECKS:
        ok, message = check(settings)
        failed += not ok
        mark = typer.style("ok  ", fg=typer.colors.GREEN) if ok else typer.style(
            "FAIL", fg=typer.colors.RED
        )
        typer.echo(f"{mark} {name:15} {message}")
    if failed:
        typer.secho(f"{failed} problem(s) found", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo("everything looks fine")


def engine_check() -> None:
    """Load the WhatsApp engine library (used by doctor, in a child process)."""
    try:
        typer.echo(launch.engine_library_report())
    except Exception as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
