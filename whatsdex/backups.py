"""Backups of the one data file: names, manifests, retention, one at a time, and restore.

A backup is `whatsdex-YYYYmmddTHHMMSSZ.db` plus `<file>.json`, its manifest (size, sha256,
version, migrations, instance id). The copy is written under a hidden temporary name, checked
(quick_check) and hashed, its manifest written, and only then renamed into place: a file
with a backup's name is always a verified backup. The mechanics (copy, check, install) live in
`whatsdex.store.backup`; this module decides where, when and what is allowed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from whatsdex import __version__
from whatsdex.crypto import escrow
from whatsdex.errors import BadRequest, Conflict, NotFound, WhatsdexError
from whatsdex.settings import Settings
from whatsdex.store import backup as store_backup
from whatsdex.store.lock import DataDirLock

log = logging.getLogger(__name__)

# (stage, done, total): stages are "copying" and "verifying", counted in bytes.
Progress = Callable[[str, int, int], None]

MANIFEST_FORMAT = "whatsdex-backup/1"
LOCK_NAME = ".backup.lock"
# Only files with this name (and a manifest saying "scheduled") are ever pruned.
NAME_RE = re.compile(r"^whatsdex-(\d{8}T\d{6}Z)(?:-(\d+))?\.db$")
_STALE_TEMP_RE = re.compile(r"^\.whatsdex-.*\.tmp-\d+(-wal|-shm|-journal)?$")


class BackupBusy(Conflict):
    """Another backup or restore holds the backup lock (in this process or another one)."""


class BackupFailed(WhatsdexError):
    """The copy could not be made or failed verification; nothing was kept."""


class InvalidBackup(BadRequest):
    """A file offered to restore is not a sound WhatsDeX backup; nothing was touched."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created_at: str  # UTC, ISO 8601 to the second
    size: int
    sha256: str
    seconds: float  # how long the backup took
    version: str = ""
    migrations: tuple[str, ...] = ()
    instance_id: str | None = None
    scheduled: bool = False

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.path)


@dataclass(frozen=True)
class RestoreResult:
    source: Path
    db_path: Path
    replaced: Path | None  # where the previous database went; None if there was none
    sha256: str
    migrations: tuple[str, ...]
    instance_id: str | None
    key_file: Path | None = None  # where the recovered master key was written (--passphrase)


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# -- creating ------------------------------------------------------------------------------


def create_backup(
    settings: Settings,
    *,
    dest: Path | None = None,
    scheduled: bool = False,
    progress: Progress | None = None,
) -> BackupInfo:
    """Copy the live database to `dest` (a file, or a directory for the default name).

    Safe while the server writes. Without `dest` the copy goes to the backups dir; scheduled
    backups there are then pruned to the newest `settings.backup_keep`.
    """
    source = settings.db_path
    if not source.exists():
        raise NotFound(f"there is no database at {source} to back up")
    started = time.monotonic()
    now = datetime.now(UTC)
    with _backup_lock(settings):
        _remove_stale_temp_files(settings.backups_dir)
        target = _destination(settings, dest, now)
        manifest = manifest_path(target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        store_backup.remove_with_side_files(tmp)
        store_backup.create_private_file(tmp)
        manifest_written = False
        try:
            try:
                store_backup.copy_online(source, tmp, _stage(progress, "copying"))
                store_backup.make_self_contained(tmp)
            except sqlite3.Error as exc:
                raise BackupFailed(f"could not copy {source}: {exc}") from None
            facts, digest = _verify_copy(tmp, source, progress)
            info = BackupInfo(
                path=target,
                created_at=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                size=tmp.stat().st_size,
                sha256=digest,
                seconds=round(time.monotonic() - started, 3),
                version=__version__,
                migrations=tuple(facts.migrations),
                instance_id=facts.instance_id,
                scheduled=scheduled,
            )
            # Manifest first: a file under a backup's name always has its checksum beside it.
            _write_json(manifest, _manifest_data(info))
            manifest_written = True
            tmp.rename(target)
            store_backup.fsync_dir(target.parent)
        except BaseException:
            store_backup.remove_with_side_files(tmp)
            if manifest_written:
                with contextlib.suppress(FileNotFoundError):
                    manifest.unlink()
            raise
        log.info("backup written: %s (%d bytes)", target, info.size)
        if scheduled:
            _prune(settings)
    return info


def _verify_copy(
    tmp: Path, source: Path, progress: Progress | None
) -> tuple[store_backup.DatabaseFacts, str]:
    """quick_check, then SHA-256 of the copy.

    quick_check reads every page and record; the full integrity_check also matches each index
    against its table, which took 8-10 times as long (a 1 GiB copy: most of a backup's time)
    and guards against no failure a page-by-page copy can have. A restore still runs the full
    check. Running the check and the hash side by side was measured no faster (both read the
    same pages), so the hash is only spent on a copy that passed.
    """
    size = tmp.stat().st_size
    if progress:
        progress("verifying", 0, size)
    try:
        problems = store_backup.integrity_problems(tmp, quick=True)
        facts = store_backup.read_facts(tmp)
    except sqlite3.DatabaseError as exc:
        problems, facts = [str(exc)], store_backup.DatabaseFacts([], None)
    if problems:
        raise BackupFailed(
            f"the copy of {source} failed its integrity check ({problems[0]}) and was deleted; "
            "run `whatsdex doctor` to check the database itself"
        )
    digest = store_backup.sha256_file(tmp)
    if progress:
        progress("verifying", size, size)
    return facts, digest


def _destination(settings: Settings, dest: Path | None, now: datetime) -> Path:
    if dest is None:
        return _unique_default_name(settings.backups_dir, now)
    dest = dest.expanduser()
    if dest.is_dir():
        return _unique_default_name(dest, now)
    if not dest.parent.is_dir():
        raise BadRequest(f"cannot write {dest}: {dest.parent} is not a directory")
    resolved = dest.resolve()
    db_path = settings.db_path.resolve()
    live = {db_path, *(store_backup.side_file(db_path, s) for s in store_backup.SIDE_SUFFIXES)}
    if resolved in live:
        raise BadRequest(f"{dest} is the live database; write the backup somewhere else")
    for existing in (dest, manifest_path(dest)):
        if existing.exists():
            raise Conflict(f"{existing} already exists; choose a new file name or a directory")
    return dest


def _unique_default_name(directory: Path, now: datetime) -> Path:
    """`whatsdex-<UTC stamp>.db`, with -2, -3... when backups follow each other within a second.

    The suffix goes past the highest one in use, never into a gap left by pruning, so names
    keep sorting in the order the backups were made.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    used = [
        int(match.group(2) or 1)
        for entry in directory.iterdir()
        if (match := NAME_RE.match(entry.name.removesuffix(".json"))) and match.group(1) == stamp
    ]
    if not used:
        return directory / f"whatsdex-{stamp}.db"
    return directory / f"whatsdex-{stamp}-{max(used) + 1}.db"


def _remove_stale_temp_files(directory: Path) -> None:
    """Leftovers of a backup that was killed midway (we hold the lock, so none is running)."""
    for entry in directory.iterdir():
        if _STALE_TEMP_RE.match(entry.name):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _prune(settings: Settings) -> None:
    """Keep the newest `backup_keep` scheduled backups; manual and foreign files stay."""
    scheduled = [
        info for info in list_backups(settings) if info.scheduled and NAME_RE.match(info.path.name)
    ]
    for info in scheduled[: max(0, len(scheduled) - settings.backup_keep)]:
        for path in (info.path, info.manifest_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("old scheduled backup removed: %s", info.path.name)


# -- listing -------------------------------------------------------------------------------


def list_backups(settings: Settings) -> list[BackupInfo]:
    """Verified backups in the backups dir (those with a matching manifest), oldest first."""
    directory = settings.backups_dir
    if not directory.is_dir():
        return []
    found = []
    for manifest in directory.glob("*.json"):
        if manifest.name.startswith("."):
            continue
        info = _read_manifest(manifest)
        if info is None:
            continue
        with contextlib.suppress(OSError):
            if info.path.stat().st_size == info.size:
                found.append(info)
    return sorted(found, key=_sort_key)


def latest_backup(settings: Settings) -> BackupInfo | None:
    """The newest verified backup in the backups dir, from its manifest (no hashing)."""
    found = list_backups(settings)
    return found[-1] if found else None


def _sort_key(info: BackupInfo) -> tuple[str, int, str]:
    match = NAME_RE.match(info.path.name)
    sequence = int(match.group(2) or 1) if match else 0
    return info.created_at, sequence, info.path.name


# -- manifests -----------------------------------------------------------------------------


def _manifest_data(info: BackupInfo) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "file": info.path.name,
        "size": info.size,
        "sha256": info.sha256,
        "created_at": info.created_at,
        "seconds": info.seconds,
        "version": info.version,
        "migrations": list(info.migrations),
        "instance_id": info.instance_id,
        "scheduled": info.scheduled,
    }


def _read_manifest(manifest: Path) -> BackupInfo | None:
    """The manifest's facts, or None when it is not one of ours (any JSON file may sit here)."""
    try:
        return _parse_manifest(manifest)
    except (OSError, ValueError):
        return None


def _parse_manifest(manifest: Path) -> BackupInfo | None:
    """Raises ValueError for a damaged manifest; None when the JSON is not a backup manifest."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    path = manifest.with_name(manifest.name.removesuffix(".json"))
    try:
        if data["file"] != path.name:
            raise ValueError(f"it describes {data['file']!r}, not {path.name!r}")
        sha = str(data["sha256"])
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("its sha256 is not a SHA-256 digest")
        return BackupInfo(
            path=path,
            created_at=str(data["created_at"]),
            size=int(data["size"]),
            sha256=sha,
            seconds=float(data.get("seconds", 0.0)),
            version=str(data.get("version", "")),
            migrations=tuple(str(m) for m in data.get("migrations", [])),
            instance_id=None if data.get("instance_id") is None else str(data["instance_id"]),
            scheduled=bool(data.get("scheduled", False)),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"it lacks a valid {exc}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    store_backup.create_private_file(tmp)
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


# -- restoring -----------------------------------------------------------------------------


def restore_backup(
    settings: Settings, source: Path, *, progress: Progress | None = None,
    passphrase: str | None = None, replace_key: bool = False,
) -> RestoreResult:
    """Replace the database with a verified copy of `source`, keeping the old one aside.

    Refuses (touching nothing) while a server runs on the data dir or when the file fails any
    check in `verify_restorable`. With `passphrase`, the master key escrowed in the backup is
    recovered first (a wrong passphrase changes nothing) and installed as the key file.
    """
    source = source.expanduser()
    _check_source(settings, source)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = DataDirLock(settings.lock_path)
    lock.acquire("restore")
    try:
        with _backup_lock(settings):
            return _restore_locked(settings, source, progress, passphrase, replace_key)
    finally:
        lock.release()


def _check_source(settings: Settings, source: Path) -> None:
    """Cheap checks before anything is copied or locked."""
    if not source.exists():
        raise NotFound(f"{source} does not exist")
    if not source.is_file():
        raise BadRequest(f"{source} is not a file; give the path of a backup file")
    if settings.db_path.exists() and source.resolve() == settings.db_path.resolve():
        raise BadRequest(f"{source} is the current database, not a backup")
    if not store_backup.looks_like_sqlite(source):
        raise InvalidBackup(f"{source} is not an SQLite database")
    wal = store_backup.side_file(source, "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise InvalidBackup(
            f"{source} has a write-ahead log beside it ({wal.name}), so it is a live database "
            "file, not a backup; stop what uses it or make a copy with `whatsdex backup`"
        )


def _restore_locked(
    settings: Settings, source: Path, progress: Progress | None, passphrase: str | None,
    replace_key: bool,
) -> RestoreResult:
    expected = _manifest_beside(source)
    db_path = settings.db_path
    for entry in settings.data_dir.glob(f".{db_path.name}.restore-*"):
        entry.unlink()  # left by a restore that was killed; we hold the data dir lock
    tmp = db_path.with_name(f".{db_path.name}.restore-{os.getpid()}")
    store_backup.create_private_file(tmp)
    try:
        # Verify the private copy, not the source: what was checked is exactly what is installed.
        digest = store_backup.copy_file(source, tmp, _stage(progress, "copying"))
        if expected is not None and (
            digest != expected.sha256 or tmp.stat().st_size != expected.size
        ):
            raise InvalidBackup(
                f"{source} does not match the checksum in {expected.manifest_path.name}: "
                "the file was changed or damaged after the backup"
            )
        facts = verify_restorable(tmp, source, progress)
        master_key = escrow.recover_master_key(tmp, passphrase) if passphrase else None
        if master_key is not None:
            escrow.check_key_install(settings, master_key, replace=replace_key)
        aside = _unique_aside_path(db_path)
        had_database = store_backup.install(tmp, db_path, aside)
    except BaseException:
        store_backup.remove_with_side_files(tmp)
        raise
    log.info("restored %s into %s", source, db_path)
    key = escrow.install_recovered_key(settings, master_key, replace=replace_key) if (
        master_key is not None) else None
    return RestoreResult(
        key_file=key.path if key else None,
        source=source,
        db_path=db_path,
        replaced=aside if had_database else None,
        sha256=digest,
        migrations=tuple(facts.migrations),
        instance_id=facts.instance_id,
    )


def verify_restorable(
    path: Path, source: Path, progress: Progress | None = None
) -> store_backup.DatabaseFacts:
    """Every check a file must pass before it may replace the database; `source` names it.

    `path` is a private copy that nothing else has open, so it may be normalised here.
    """
    size = path.stat().st_size
    if progress:
        progress("verifying", 0, size)
    try:
        store_backup.make_self_contained(path)
        facts = store_backup.read_facts(path)
        if not facts.migrations:
            raise InvalidBackup(
                f"{source} is an SQLite database but not a WhatsDeX one (no WhatsDeX migrations)"
            )
        store_backup.check_not_newer(path, source)
        problems = store_backup.integrity_problems(path)
    except sqlite3.DatabaseError as exc:
        raise InvalidBackup(f"{source} is not a readable SQLite database: {exc}") from None
    if problems:
        raise InvalidBackup(f"{source} failed the integrity check: {problems[0]}")
    if progress:
        progress("verifying", size, size)
    return facts


def _manifest_beside(source: Path) -> BackupInfo | None:
    manifest = manifest_path(source)
    if not manifest.exists():
        return None
    try:
        info = _parse_manifest(manifest)
    except (OSError, ValueError) as exc:
        raise InvalidBackup(
            f"cannot use the manifest {manifest}: {exc}; move it away to restore without "
            "a checksum check"
        ) from None
    if info is None:
        raise InvalidBackup(f"{manifest} is not a WhatsDeX backup manifest; move it away")
    return info


def _unique_aside_path(db_path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = db_path.with_name(f"{db_path.name}.replaced-{stamp}"), 1
    while any(
        store_backup.side_file(candidate, s).exists() for s in ("", *store_backup.SIDE_SUFFIXES)
    ):
        n += 1
        candidate = db_path.with_name(f"{db_path.name}.replaced-{stamp}-{n}")
    return candidate


# -- shared --------------------------------------------------------------------------------


@contextlib.contextmanager
def _backup_lock(settings: Settings) -> Iterator[None]:
    """One backup or restore at a time across processes: a non-blocking flock."""
    settings.backups_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = settings.backups_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise BackupBusy(
            f"a backup is already running ({holder}); try again when it has finished"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"WhatsDeX pid {os.getpid()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


def _stage(progress: Progress | None, stage: str) -> store_backup.ByteProgress | None:
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        progress(stage, done, total)

    return report
