"""Escrow of the master key under a recovery passphrase, so one data file + one passphrase
restores everything.

The passphrase goes through scrypt (memory-hard, so guessing costs 128 MB and ~0.3 s a try);
the result wraps the master key with AES-256-GCM bound to the key's id. The KDF parameters are
stored with the escrow so a later version can raise them without breaking old files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from whatsdex import clock
from whatsdex.crypto import masterkey
from whatsdex.crypto.aead import KEY_SIZE, DecryptionError, aad, open_sealed, seal
from whatsdex.errors import BadRequest, ConfigError, Conflict, NotFound, Unauthorized
from whatsdex.settings import Settings
from whatsdex.store import keys
from whatsdex.store.database import Store

KDF = "scrypt"
# OWASP-level scrypt cost; never lowered (old escrows keep the parameters they were made with).
SCRYPT_PARAMS: dict[str, int] = {"n": 2**17, "r": 8, "p": 1}
SALT_SIZE = 16
MIN_PASSPHRASE_LENGTH = 12
# Refuse parameters a tampered file could use to exhaust memory or time before failing.
_MAX_N, _MAX_R, _MAX_P = 2**22, 32, 16


class WrongPassphrase(Unauthorized):
    """The passphrase does not open the escrow."""


def _passphrase_bytes(passphrase: str) -> bytes:
    # The same passphrase typed on another system may arrive in another Unicode form.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def check_passphrase(passphrase: str) -> None:
    if len(unicodedata.normalize("NFC", passphrase)) < MIN_PASSPHRASE_LENGTH:
        raise BadRequest(
            f"the recovery passphrase must be at least {MIN_PASSPHRASE_LENGTH} characters"
        )


def _params(kdf: str, params_json: str) -> dict[str, int]:
    if kdf != KDF:
        raise ConfigError(f"the escrow uses an unknown key derivation ({kdf!r})")
    try:
        raw: Any = json.loads(params_json)
        n, r, p = int(raw["n"]), int(raw["r"]), int(raw["p"])
    except (ValueError, TypeError, KeyError):
        raise ConfigError("the escrow's key derivation parameters are unreadable") from None
    if not (2 <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ConfigError("the escrow's key derivation parameters are out of range")
    return {"n": n, "r": r, "p": p}


def _derive(passphrase: str, salt: bytes, params: dict[str, int]) -> bytes:
    return Scrypt(
        salt=salt, length=KEY_SIZE, n=params["n"], r=params["r"], p=params["p"]
    ).derive(_passphrase_bytes(passphrase))


def _aad(key_id: str, kdf: str, params_json: str) -> bytes:
    return aad("key_escrow", key_id, kdf, params_json)


def seal_escrow(master_key: bytes, passphrase: str, now: str | None = None) -> keys.EscrowRow:
    """Build an escrow row (costs one scrypt); nothing is written."""
    check_passphrase(passphrase)
    key_id = masterkey.master_key_id(master_key)
    params_json = json.dumps(SCRYPT_PARAMS, sort_keys=True)
    salt = os.urandom(SALT_SIZE)
    kek = _derive(passphrase, salt, SCRYPT_PARAMS)
    return keys.EscrowRow(
        kdf=KDF,
        kdf_params=params_json,
        salt=salt,
        wrapped_master_key=seal(kek, master_key, _aad(key_id, KDF, params_json)),
        master_key_id=key_id,
        created_at=now or clock.iso(time.time()),
    )


def open_escrow(escrow: keys.EscrowRow, passphrase: str) -> bytes:
    """The master key inside an escrow row, or WrongPassphrase."""
    params = _params(escrow.kdf, escrow.kdf_params)
    kek = _derive(passphrase, escrow.salt, params)
    try:
        key = open_sealed(
            kek,
            escrow.wrapped_master_key,
            _aad(escrow.master_key_id, escrow.kdf, escrow.kdf_params),
        )
    except DecryptionError:
        raise WrongPassphrase("wrong recovery passphrase (or a damaged escrow)") from None
    if len(key) != KEY_SIZE or masterkey.master_key_id(key) != escrow.master_key_id:
        raise DecryptionError("the escrowed master key does not match its recorded id")
    return key


def escrow_master_key(store: Store, master_key: bytes, passphrase: str) -> keys.EscrowRow:
    """Store (or replace) the escrow of the master key this database uses."""
    row = seal_escrow(master_key, passphrase)  # the slow scrypt runs outside the writer

    def write(conn: sqlite3.Connection) -> None:
        recorded = keys.record_master_key_id(conn, row.master_key_id)
        if recorded != row.master_key_id:
            # A rotation switched keys meanwhile: escrowing the old key would be useless.
            raise masterkey.MasterKeyMismatch(
                f"this database uses master key {recorded}, not {row.master_key_id}: "
                "escrow the current key"
            )
        keys.put_escrow(conn, row)

    store.write_sync(write)
    return row


def recover_master_key(db_path: Path, passphrase: str) -> bytes:
    """The master key escrowed in a database FILE (opened read-only, nothing changed)."""
    if not db_path.is_file():
        raise NotFound(f"no database file at {db_path}")
    state = keys.read_key_state(db_path)
    escrow = None if state is None else state.escrow
    if state is None or escrow is None:
        raise NotFound(
            f"{db_path} has no recovery escrow (it is set with `whatsdex key escrow`): "
            "the data can only be opened with its key file"
        )
    key = open_escrow(escrow, passphrase)
    if state.master_key_id is not None and state.master_key_id != escrow.master_key_id:
        raise Conflict(
            f"the escrow holds master key {escrow.master_key_id} but {db_path} uses "
            f"{state.master_key_id}: the escrow is out of date and cannot open this database"
        )
    return key


@dataclass(frozen=True, slots=True)
class InstalledKey:
    path: Path
    key_id: str
    unchanged: bool  # the same key was there already
    replaced: Path | None  # where a different previous key file was kept


def check_key_install(settings: Settings, key: bytes, *, replace: bool = False) -> None:
    """Raise now what `install_recovered_key` would refuse, before anything is replaced."""
    if settings.secret_key:
        raise ConfigError(
            f"{masterkey.ENV_NAME} is set, so a key file would be ignored: put the recovered "
            f"key in {masterkey.ENV_NAME} instead, or unset it"
        )
    path = settings.key_file
    if replace or not path.exists():
        return
    try:
        existing: bytes | None = masterkey.parse_key_file(path)
    except ConfigError:
        existing = None
    if existing != key:
        raise Conflict(
            f"a different master key file already exists at {path}; "
            "move it away or allow replacing it"
        )


def install_recovered_key(settings: Settings, key: bytes, *, replace: bool = False) -> InstalledKey:
    """Write a recovered master key to the key file (0600, atomically).

    An existing file with the same key is left alone. A different one is refused unless
    `replace`; then it is kept as `<key file>.replaced-<UTC timestamp>` (never deleted).
    """
    if len(key) != KEY_SIZE:
        raise ValueError(f"a master key is {KEY_SIZE} bytes, got {len(key)}")
    if settings.secret_key:
        raise ConfigError(
            f"{masterkey.ENV_NAME} is set, so a key file would be ignored: put the recovered "
            f"key in {masterkey.ENV_NAME} instead, or unset it"
        )
    path = settings.key_file
    key_id = masterkey.master_key_id(key)
    if masterkey.create_key_file(path, key):
        return InstalledKey(path, key_id, unchanged=False, replaced=None)
    try:
        existing: bytes | None = masterkey.parse_key_file(path)
    except ConfigError:
        existing = None
    if existing == key:
        return InstalledKey(path, key_id, unchanged=True, replaced=None)
    if not replace:
        raise Conflict(
            f"a different master key file already exists at {path}; "
            "move it away or allow replacing it"
        )
    stamp = clock.iso(time.time()).replace("-", "").replace(":", "").replace(".", "")
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    # Link the old key aside first: there is never a moment without a key file on disk.
    os.link(path, aside)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    masterkey.write_new_file(tmp, key)
    tmp.replace(path)
    masterkey.fsync_dir(path.parent)
    return InstalledKey(path, key_id, unchanged=False, replaced=aside)
