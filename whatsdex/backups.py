"""Backups of the one data file (interface; implementation in progress)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whatsdex.errors import Conflict
from whatsdex.settings import Settings


class BackupBusy(Conflict):
    pass


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created_at: str
    size: int
    sha256: str
    seconds: float


def create_backup(settings: Settings, *, dest: Path | None = None, scheduled: bool = False,
                  progress: object = None) -> BackupInfo:
    raise NotImplementedError


def latest_backup(settings: Settings) -> BackupInfo | None:
    return None
