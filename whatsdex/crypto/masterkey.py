"""The master key: loaded from `WHATSDEX_SECRET_KEY` or a 0600 key file, never from the database.

The database records only the key's fingerprint (`master_key_id`), so starting with the wrong
key is refused before anything is read or written. A rotation writes the new key to
`<key file>.new` first; if the process dies mid-way, the next start compares that file with the
fingerprint the database recorded and either finishes the rotation or discards the leftover.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from whatsdex.crypto.aead import KEY_SIZE
from whatsdex.errors import ConfigError
from whatsdex.settings import Settings
from whatsdex.store import keys
from whatsdex.store.database import Store

log = logging.getLogger(__name__)

ENV_NAME = "WHATSDEX_SECRET_KEY"
KeySource = Literal["env", "file"]


class MasterKeyMismatch(ConfigError):
    """The loaded master key is not the one this database's data keys are wrapped with."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    key: bytes = field(repr=False)
    source: KeySource
    path: Path | None  # the key file, when the key comes from one

    @property
    def id(self) -> str:
        return master_key_id(self.key)

    def describe(self) -> str:
        return ENV_NAME if self.source == "env" else f"the key file {self.path}"


def master_key_id(key: bytes) -> str:
    """A short public fingerprint of the key (never the key, and not reversible)."""
    return hmac.new(key, b"whatsdex master key id", hashlib.sha256).hexdigest()[:16]


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; ValueError unless it is 32 bytes."""
    cleaned = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"decodes to {len(key)} bytes, not {KEY_SIZE}")
    return key


def pending_path(settings: Settings) -> Path:
    """Where a rotation keeps the new key until the database has switched to it."""
    return settings.key_file.with_name(settings.key_file.name + ".new")


# -- files -----------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a create/rename/unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, key: bytes) -> None:
    """Create `path` (0600, must not exist) holding the key in base64, fsynced with its dir."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (encode_key(key) + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def create_key_file(path: Path, key: bytes) -> bool:
    """Create the key file atomically (full content or nothing); False if one exists already.

    The key is written to a private temporary file and hard-linked into place, so a second
    process starting at the same time never reads a half-written key.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    write_new_file(tmp, key)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
        fsync_dir(path.parent)
    return True


def parse_key_file(path: Path) -> bytes:
    """The key in a file, or ConfigError when it is malformed (no permission check)."""
    try:
        text = path.read_text("ascii")
    except UnicodeDecodeError:
        text = "?"
    try:
        return decode_key(text)
    except ValueError:
        raise ConfigError(
            f"the key file {path} is malformed (it must hold the base64 of {KEY_SIZE} bytes); "
            "restore it from your copy of the key"
        ) from None


def check_key_file_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the key file {path} is accessible by other users (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def read_key_file(path: Path) -> bytes:
    check_key_file_mode(path)
    return parse_key_file(path)


def decode_env_key(text: str) -> bytes:
    try:
        return decode_key(text)
    except ValueError as exc:
        # Never echo the value: it may be a real key with a typo.
        raise ConfigError(
            f"{ENV_NAME} must be the base64 of exactly {KEY_SIZE} random bytes: it {exc}"
        ) from None


# -- loading ---------------------------------------------------------------------------------


def read_master_key(settings: Settings) -> MasterKey | None:
    """The configured key without touching anything: None when there is no env key or file."""
    if settings.secret_key:
        return MasterKey(decode_env_key(settings.secret_key), "env", None)
    path = settings.key_file
    if not path.exists():
        return None
    return MasterKey(read_key_file(path), "file", path)


def finish_pending_rotation(settings: Settings, db_key_id: str | None) -> str | None:
    """Resolve a `.new` key left by an interrupted rotation; call only holding the data dir lock.

    If the database already records the new key's id, the crash came after the re-wrap commit:
    the rename is completed. Otherwise the database never switched and the file is discarded.
    Returns "completed", "discarded" or None (nothing pending).
    """
    pending = pending_path(settings)
    if not pending.exists():
        return None
    try:
        candidate: bytes | None = parse_key_file(pending)
    except ConfigError:
        candidate = None  # written partly when the crash came: it cannot be the database's key
    if candidate is not None and db_key_id is not None and master_key_id(candidate) == db_key_id:
        check_key_file_mode(pending)
        pending.replace(settings.key_file)
        fsync_dir(pending.parent)
        log.warning("completed an interrupted master key rotation (key id %s)", db_key_id)
        return "completed"
    pending.unlink()
    fsync_dir(pending.parent)
    log.warning("discarded the new key of a master key rotation that did not complete")
    return "discarded"


def _db_key_id(store: Store) -> str | None:
    with store.read_sync() as conn:
        return keys.get_master_key_id(conn)


def mismatch(loaded: MasterKey, db_key_id: str) -> MasterKeyMismatch:
    return MasterKeyMismatch(
        f"the master key does not match this database ({loaded.describe()} has id {loaded.id}, "
        f"the database needs {db_key_id}): restore the right key file or use "
        "`whatsdex restore --passphrase`",
        detail={"loaded_key_id": loaded.id, "database_key_id": db_key_id},
    )


def open_master_key(settings: Settings, store: Store, *, finish_pending: bool) -> MasterKey:
    """Load the master key for an open store, checked against the id the database recorded.

    `finish_pending=True` only when the caller holds the data dir lock (`serve`, rotation):
    then a rotation interrupted by a crash is completed or discarded. Without the lock a rotation
    may be running, so the pending file is only read, never moved. On a fresh database the key
    file is created (unless the key comes from the environment) and its id recorded. When the key
    does not match, MasterKeyMismatch is raised and nothing is changed.
    """
    db_key_id = _db_key_id(store)
    loaded = read_master_key(settings) if settings.secret_key else None
    if loaded is None:
        path = settings.key_file
        if finish_pending:
            finish_pending_rotation(settings, db_key_id)
        elif db_key_id is not None:
            pending = pending_path(settings)
            # A rotation between its commit and its rename: the new key is the database's.
            with contextlib.suppress(ConfigError, OSError):
                candidate = read_key_file(pending)
                if master_key_id(candidate) == db_key_id:
                    loaded = MasterKey(candidate, "file", path)
        if loaded is None and path.exists():
            loaded = MasterKey(read_key_file(path), "file", path)
        if loaded is None:
            if db_key_id is not None:
                raise ConfigError(
                    f"the master key file {path} is missing and this database's data is "
                    f"encrypted with key id {db_key_id}: restore the key file, set {ENV_NAME}, "
                    "or use `whatsdex restore --passphrase`"
                )
            if create_key_file(path, os.urandom(KEY_SIZE)):
                log.info("created the master key file %s: back it up apart from the data", path)
            loaded = MasterKey(read_key_file(path), "file", path)
    if db_key_id is None:
        db_key_id = store.write_sync(lambda conn: keys.record_master_key_id(conn, loaded.id))
    if loaded.id != db_key_id:
        raise mismatch(loaded, db_key_id)
    return loaded
