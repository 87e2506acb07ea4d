"""Per-tenant data keys, wrapped by the master key, and the rotation of that master key.

Every tenant's secrets are sealed with the tenant's own data key. Data keys are random, made on
first use and stored wrapped (AES-256-GCM under the master key, AAD = the tenant id), so rotating
the master key only re-wraps one small row per tenant and never re-encrypts data.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from whatsdex import clock
from whatsdex.crypto import escrow, masterkey
from whatsdex.crypto.aead import KEY_SIZE, AadPart, DecryptionError, aad, open_sealed, seal
from whatsdex.errors import ConfigError, Conflict, NotFound
from whatsdex.settings import Settings
from whatsdex.store import keys
from whatsdex.store.database import Store
from whatsdex.store.lock import DataDirLock


def _wrap_aad(tenant_id: str) -> bytes:
    return aad("tenant_key", tenant_id)


def _data_aad(tenant_id: str, parts: tuple[AadPart, ...]) -> bytes:
    return aad("tenant", tenant_id, *parts)


def unwrap_data_key(master_key: bytes, row: keys.TenantKeyRow) -> bytes:
    expected = masterkey.master_key_id(master_key)
    if row.master_key_id != expected:
        raise DecryptionError(
            f"the data key of tenant {row.tenant_id} is wrapped by master key "
            f"{row.master_key_id}, not the loaded key {expected}"
        )
    try:
        return open_sealed(master_key, row.wrapped_key, _wrap_aad(row.tenant_id))
    except DecryptionError:
        raise DecryptionError(
            f"the data key of tenant {row.tenant_id} does not open with master key {expected}"
        ) from None


class Keyring:
    """Data keys by tenant, cached in memory; sealing and opening of tenant data.

    The async methods are for request handlers; the `_sync` ones for the CLI and worker
    threads (never from inside a `store.write` function: they queue writes of their own).
    Every blob's associated data starts with the tenant id, followed by the caller's parts
    (for example `"auth_state", row_id`), so a blob moved to another tenant or row fails.
    """

    def __init__(self, store: Store, master_key: bytes) -> None:
        if len(master_key) != KEY_SIZE:
            raise ValueError(f"a master key is {KEY_SIZE} bytes")
        self._store = store
        self._master = master_key
        self.master_key_id = masterkey.master_key_id(master_key)
        self._cache: dict[str, bytes] = {}

    def _create(self, conn: sqlite3.Connection, tenant_id: str) -> keys.TenantKeyRow:
        existing = keys.get_tenant_key_sync(conn, tenant_id)
        if existing is not None:
            return existing
        if not keys.tenant_exists(conn, tenant_id):
            raise NotFound(f"tenant {tenant_id} not found")
        wrapped = seal(self._master, os.urandom(KEY_SIZE), _wrap_aad(tenant_id))
        # INSERT OR IGNORE + re-read: a concurrent creator's key wins and everyone uses it.
        return keys.insert_tenant_key(
            conn, tenant_id, wrapped, self.master_key_id, clock.iso(time.time())
        )

    def _remember(self, row: keys.TenantKeyRow) -> bytes:
        key = unwrap_data_key(self._master, row)
        return self._cache.setdefault(row.tenant_id, key)

    async def data_key(self, tenant_id: str) -> bytes:
        key = self._cache.get(tenant_id)
        if key is not None:
            return key
        row = await keys.get_tenant_key(self._store, tenant_id)
        if row is None:
            row = await self._store.write(lambda conn: self._create(conn, tenant_id))
        return self._remember(row)

    def data_key_sync(self, tenant_id: str) -> bytes:
        key = self._cache.get(tenant_id)
        if key is not None:
            return key
        with self._store.read_sync() as conn:
            row = keys.get_tenant_key_sync(conn, tenant_id)
        if row is None:
            row = self._store.write_sync(lambda conn: self._create(conn, tenant_id))
        return self._remember(row)

    async def encrypt(self, tenant_id: str, plaintext: bytes, *aad_parts: AadPart) -> bytes:
        key = await self.data_key(tenant_id)
        return seal(key, plaintext, _data_aad(tenant_id, aad_parts))

    async def decrypt(self, tenant_id: str, blob: bytes, *aad_parts: AadPart) -> bytes:
        key = await self.data_key(tenant_id)
        return open_sealed(key, blob, _data_aad(tenant_id, aad_parts))

    def encrypt_sync(self, tenant_id: str, plaintext: bytes, *aad_parts: AadPart) -> bytes:
        return seal(self.data_key_sync(tenant_id), plaintext, _data_aad(tenant_id, aad_parts))

    def decrypt_sync(self, tenant_id: str, blob: bytes, *aad_parts: AadPart) -> bytes:
        return open_sealed(self.data_key_sync(tenant_id), blob, _data_aad(tenant_id, aad_parts))

    def forget(self, tenant_id: str) -> None:
        """Drop a deleted tenant's key from memory (its row goes with the tenant, by cascade)."""
        self._cache.pop(tenant_id, None)


# -- rotation --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationResult:
    old_key_id: str
    new_key_id: str
    tenant_keys: int
    source: masterkey.KeySource
    key_file: Path | None  # the replaced key file (source "file")
    escrow: str  # "none", "re-escrowed" or "dropped"
    # Only when the key comes from the environment: the operator must install it there.
    new_key: bytes | None = field(default=None, repr=False)


def rotate_master_key(
    settings: Settings,
    store: Store,
    new_key: bytes | None = None,
    *,
    passphrase: str | None = None,
    drop_escrow: bool = False,
) -> RotationResult:
    """Re-wrap every tenant data key under a new master key, in one transaction.

    Refused while `whatsdex serve` runs on the data dir: the server holds the old key and
    would wrap new tenants' keys with it. An existing escrow is re-made for the new key (the
    passphrase is checked against the old escrow first) or, only if asked, dropped.
    """
    if new_key is not None and len(new_key) != KEY_SIZE:
        raise ConfigError(f"a master key is {KEY_SIZE} bytes, got {len(new_key)}")
    lock = DataDirLock(settings.lock_path)
    lock.acquire("rotate the master key")
    try:
        return _rotate(settings, store, new_key, passphrase, drop_escrow)
    finally:
        lock.release()


def _rotate(
    settings: Settings,
    store: Store,
    new_key: bytes | None,
    passphrase: str | None,
    drop_escrow: bool,
) -> RotationResult:
    current = masterkey.open_master_key(settings, store, finish_pending=True)
    with store.read_sync() as conn:
        old_escrow = keys.get_escrow(conn)
    new_escrow: keys.EscrowRow | None = None
    new_key = new_key or os.urandom(KEY_SIZE)
    if new_key == current.key:
        raise ConfigError("the new master key is the current one")
    new_id = masterkey.master_key_id(new_key)
    if old_escrow is not None and not drop_escrow:
        if passphrase is None:
            raise Conflict(
                "a recovery escrow exists: rotating needs its passphrase (--passphrase-stdin, "
                "or typed when asked) to escrow the new key, or --drop-escrow to remove it"
            )
        if escrow.open_escrow(old_escrow, passphrase) != current.key:
            raise Conflict(
                "the recovery escrow holds another master key than the current one: "
                "rotate with --drop-escrow, then run `whatsdex key escrow` again"
            )
        new_escrow = escrow.seal_escrow(new_key, passphrase)
    now = clock.iso(time.time())

    def rewrap_all(conn: sqlite3.Connection) -> int:
        if keys.get_master_key_id(conn) != current.id:
            raise Conflict("the master key changed while rotating: run the rotation again")
        if keys.get_escrow(conn) != old_escrow:
            raise Conflict("the recovery escrow changed while rotating: run the rotation again")
        rows = keys.all_tenant_keys(conn)
        for row in rows:
            data_key = unwrap_data_key(current.key, row)
            wrapped = seal(new_key, data_key, _wrap_aad(row.tenant_id))
            keys.rewrap_tenant_key(conn, row.tenant_id, wrapped, new_id, now)
        if not keys.replace_master_key_id(conn, current.id, new_id):
            raise Conflict("the master key changed while rotating: run the rotation again")
        if new_escrow is not None:
            keys.put_escrow(conn, new_escrow)
        elif old_escrow is not None:
            keys.delete_escrow(conn)
        return len(rows)

    pending = masterkey.pending_path(settings) if current.source == "file" else None
    if pending is not None:
        # (a) the new key is durable before the database depends on it.
        masterkey.write_new_file(pending, new_key)
    future = store.submit(rewrap_all)  # (b) one transaction switches every wrapped key
    try:
        count = future.result()
    except BaseException:
        if pending is not None and future.done():
            # Settled either way: let the database decide whether the new key is needed.
            with contextlib.suppress(Exception), store.read_sync() as conn:
                masterkey.finish_pending_rotation(settings, keys.get_master_key_id(conn))
        raise
    if pending is not None:
        # (c) the new key replaces the old file; a crash before this is finished on next start.
        pending.replace(settings.key_file)
        masterkey.fsync_dir(settings.key_file.parent)
    return RotationResult(
        old_key_id=current.id,
        new_key_id=new_id,
        tenant_keys=count,
        source=current.source,
        key_file=settings.key_file if current.source == "file" else None,
        escrow="none" if old_escrow is None else ("dropped" if drop_escrow else "re-escrowed"),
        new_key=new_key if current.source == "env" else None,
    )
