"""`whatsdex backup` and `whatsdex restore`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from whatsdex import backups
from whatsdex.cli.common import DataDir, Progress, friendly, settings_from


class _StageProgress:
    """One progress line per stage (copying, verifying) on stderr."""

    def __init__(self, action: str) -> None:
        self.action = action
        self._lines: dict[str, Progress] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        line = self._lines.get(stage)
        if line is None:
            line = self._lines[stage] = Progress(f"{self.action}: {stage}")
        line(done, total)


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


@friendly
def backup(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="File to write (it must not exist yet), or a directory to write the default "
            "name into. Default: <data-dir>/backups/whatsdex-<UTC time>.db.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    list_only: Annotated[
        bool,
        typer.Option("--list", help="List the verified backups in <data-dir>/backups instead."),
    ] = False,
) -> None:
    """Write a verified copy of the database, safe while the server runs.

    Each copy must pass quick_check; a checksum manifest, <file>.json, is written beside it.
    It runs at a lower CPU priority (nice 10) than the server it copies.
    Scheduled backups (serve --backup-interval-minutes) keep the newest --backup-keep.
    Backups made with this command are never pruned.
    """
    settings = settings_from(data_dir=data_dir)
    if list_only:
        if path is not None:
            raise typer.BadParameter("--list takes no PATH")
        found = backups.list_backups(settings)
        if not found:
            typer.echo(f"no backups in {settings.backups_dir}")
        for info in found:
            kind = "scheduled" if info.scheduled else "manual"
            typer.echo(f"{info.created_at}  {kind:9}  {_mb(info.size):>10}  {info.path}")
        return
    # The server answers first: on a small machine the copy and its check compete for cores.
    with contextlib.suppress(OSError):
        os.nice(10)
    info = backups.create_backup(settings, dest=path, progress=_StageProgress("backup"))
    typer.echo(f"backup written: {info.path} ({_mb(info.size)}, {info.seconds:.1f} s)")
    typer.echo(f"checksum manifest: {info.manifest_path} (sha256 {info.sha256})")


@friendly
def restore(
    path: Annotated[
        Path,
        typer.Argument(help="The backup file to restore.", show_default=False),
    ],
    data_dir: DataDir = None,
    passphrase: Annotated[
        bool,
        typer.Option(
            "--passphrase",
            help="Recover the master key escrowed in the backup (asks for the passphrase).",
        ),
    ] = False,
    passphrase_stdin: Annotated[
        bool, typer.Option("--passphrase-stdin", help="Read that passphrase from stdin.")
    ] = False,
    replace_key: Annotated[
        bool,
        typer.Option("--replace-key", help="Replace a different existing key file (kept aside)."),
    ] = False,
) -> None:
    """Replace the database with a backup, after checking it; the old file is kept aside.

    Stop the server first. Nothing changes unless the backup passes every check.
    It must pass integrity_check and be a WhatsDeX database no newer than this version.
    When <file>.json sits beside it, the file must match the checksum in it.
    """
    settings = settings_from(data_dir=data_dir)
    secret: str | None = None
    if passphrase_stdin:
        secret = sys.stdin.readline().rstrip("\n")
    elif passphrase:
        secret = typer.prompt("Recovery passphrase", hide_input=True)
    result = backups.restore_backup(
        settings, path, progress=_StageProgress("restore"), passphrase=secret,
        replace_key=replace_key,
    )
    typer.echo(f"restored {result.source} into {result.db_path}")
    if result.key_file is not None:
        typer.echo(f"the master key was recovered into {result.key_file}")
    if result.replaced is not None:
        typer.echo(f"the previous database was kept as {result.replaced}")
    else:
        typer.echo("there was no database before")
