"""Encryption at rest: sealing, the master key, per-tenant data keys, rotation and escrow."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from whatsdex.crypto import aead, escrow, keyring, masterkey
from whatsdex.crypto.aead import DecryptionError, aad, open_sealed, seal
from whatsdex.crypto.keyring import Keyring, rotate_master_key
from whatsdex.crypto.masterkey import MasterKeyMismatch, master_key_id, open_master_key
from whatsdex.errors import BadRequest, ConfigError, Conflict, NotFound
from whatsdex.settings import Settings
from whatsdex.store import Store, keys
from whatsdex.store.lock import DataDirLock

PASSPHRASE = "correct horse battery staple"


def add_tenant(store: Store, tenant_id: str) -> None:
    store.write_sync(
        lambda conn: conn.execute(
            "INSERT INTO tenants (id, name, plan_id, created_at, updated_at)"
            " VALUES (?, ?, 'free', '2026-11-22T02:10:00.000Z', '2026-11-22T02:10:00.000Z')",
            (tenant_id, tenant_id.title()),
        )
    )


def db_master_key_id(store: Store) -> str | None:
    with store.read_sync() as conn:
        return keys.get_master_key_id(conn)


def tenant_rows(store: Store) -> list[keys.TenantKeyRow]:
    with store.read_sync() as conn:
        return keys.all_tenant_keys(conn)


def env_settings(settings: Settings, key: bytes) -> Settings:
    return dataclasses.replace(settings, secret_key=base64.b64encode(key).decode())


def key_file_bytes(settings: Settings) -> bytes:
    return settings.key_file.read_bytes()


# -- sealing ---------------------------------------------------------------------------------


def test_seal_round_trip_and_format() -> None:
    key = os.urandom(32)
    blob = seal(key, b"hello", aad("tenant", "t1", "row", 7))
    assert blob[0] == aead.VERSION
    assert len(blob) == aead.OVERHEAD + len(b"hello")
    assert open_sealed(key, blob, aad("tenant", "t1", "row", 7)) == b"hello"
    # A fresh nonce each time: the same plaintext never seals to the same bytes.
    assert seal(key, b"hello") != seal(key, b"hello")
    assert open_sealed(key, seal(key, b"")) == b""


@pytest.mark.parametrize("position", [0, 1, 12, 13, -1])
def test_any_tampered_byte_is_refused(position: int) -> None:
    key = os.urandom(32)
    blob = bytearray(seal(key, b"secret value", b"ad"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        open_sealed(key, bytes(blob), b"ad")


def test_wrong_aad_wrong_key_and_truncation_are_refused() -> None:
    key = os.urandom(32)
    blob = seal(key, b"secret", aad("tenant", "t1", "row", 1))
    with pytest.raises(DecryptionError, match="wrong key"):
        open_sealed(key, blob, aad("tenant", "t1", "row", 2))
    with pytest.raises(DecryptionError):
        open_sealed(key, blob, aad("tenant", "t2", "row", 1))
    with pytest.raises(DecryptionError):
        open_sealed(os.urandom(32), blob, aad("tenant", "t1", "row", 1))
    with pytest.raises(DecryptionError, match="truncated"):
        open_sealed(key, blob[: aead.OVERHEAD - 1], aad("tenant", "t1", "row", 1))


def test_aad_is_unambiguous() -> None:
    assert aad("ab", "c") != aad("a", "bc")
    assert aad("a", "") != aad("a")
    assert aad("row", 5) == aad("row", "5")
    assert aad(b"\x00") != aad("", "")
    with pytest.raises(TypeError):
        aad(True)


# -- the master key --------------------------------------------------------------------------


def test_key_file_created_0600_on_first_run_and_reused(settings: Settings, store: Store) -> None:
    assert not settings.key_file.exists()
    first = open_master_key(settings, store, finish_pending=True)
    assert first.source == "file"
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
    assert base64.b64decode(key_file_bytes(settings)) == first.key
    assert db_master_key_id(store) == first.id == master_key_id(first.key)
    assert len(first.id) == 16
    assert first.key.hex() not in repr(first)
    content = key_file_bytes(settings)
    again = open_master_key(settings, store, finish_pending=True)
    assert again.key == first.key
    assert key_file_bytes(settings) == content
    # Nothing else was left in the directory (no temporary files).
    assert sorted(p.name for p in settings.data_dir.iterdir() if "whatsdex" not in p.name) == [
        "secret.key"
    ]


def test_key_file_open_to_others_is_refused(settings: Settings, store: Store) -> None:
    open_master_key(settings, store, finish_pending=True)
    settings.key_file.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        open_master_key(settings, store, finish_pending=True)


def test_malformed_key_file_is_refused(settings: Settings, store: Store) -> None:
    settings.data_dir.mkdir(exist_ok=True)
    for content in (b"not base64 at all!", base64.b64encode(os.urandom(16)), b"\xff\xfe"):
        settings.key_file.write_bytes(content)
        settings.key_file.chmod(0o600)
        with pytest.raises(ConfigError, match="malformed"):
            open_master_key(settings, store, finish_pending=True)
    assert db_master_key_id(store) is None


def test_env_key_wins_and_no_file_is_created(settings: Settings, store: Store) -> None:
    key = os.urandom(32)
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    loaded = open_master_key(
        dataclasses.replace(settings, secret_key=urlsafe), store, finish_pending=True
    )
    assert loaded.key == key and loaded.source == "env"
    assert not settings.key_file.exists()
    # An existing key file is ignored when the environment gives the key.
    masterkey.create_key_file(settings.key_file, os.urandom(32))
    assert open_master_key(env_settings(settings, key), store, finish_pending=True).key == key


def test_bad_env_key_names_the_variable_not_the_value(settings: Settings, store: Store) -> None:
    short = base64.b64encode(b"x" * 31).decode()
    for value in (short, "%%%not-base64%%%"):
        with pytest.raises(ConfigError, match="WHATSDEX_SECRET_KEY") as info:
            open_master_key(dataclasses.replace(settings, secret_key=value), store,
                            finish_pending=True)
        assert value not in info.value.message


def test_wrong_master_key_is_refused_and_nothing_changes(
    settings: Settings, store: Store
) -> None:
    right = open_master_key(settings, store, finish_pending=True)
    content = key_file_bytes(settings)
    with pytest.raises(MasterKeyMismatch, match="restore --passphrase"):
        open_master_key(env_settings(settings, os.urandom(32)), store, finish_pending=True)
    # Another key file: refused the same way.
    other = dataclasses.replace(settings, secret_key_file=settings.data_dir / "other.key")
    masterkey.create_key_file(other.key_file, os.urandom(32))
    with pytest.raises(MasterKeyMismatch):
        open_master_key(other, store, finish_pending=True)
    assert db_master_key_id(store) == right.id
    assert key_file_bytes(settings) == content


def test_missing_key_file_for_a_used_database_is_not_recreated(
    settings: Settings, store: Store
) -> None:
    loaded = open_master_key(settings, store, finish_pending=True)
    settings.key_file.unlink()
    with pytest.raises(ConfigError, match="missing") as info:
        open_master_key(settings, store, finish_pending=True)
    assert loaded.id in info.value.message
    assert not settings.key_file.exists()


# -- tenant data keys ------------------------------------------------------------------------


async def test_data_keys_differ_per_tenant_and_bind_blobs(
    settings: Settings, store: Store
) -> None:
    master = open_master_key(settings, store, finish_pending=True)
    add_tenant(store, "acme")
    add_tenant(store, "globex")
    ring = Keyring(store, master.key)
    a, b = await ring.data_key("acme"), await ring.data_key("globex")
    assert a != b and len(a) == len(b) == 32
    blob = await ring.encrypt("acme", b"auth state", "auth_state", 1)
    assert await ring.decrypt("acme", blob, "auth_state", 1) == b"auth state"
    with pytest.raises(DecryptionError):
        await ring.decrypt("globex", blob, "auth_state", 1)  # copied to another tenant
    with pytest.raises(DecryptionError):
        await ring.decrypt("acme", blob, "auth_state", 2)  # copied to another row
    with pytest.raises(NotFound):
        await ring.data_key("nobody")
    # A second keyring (another process, or after a restart) unwraps the same key.
    fresh = Keyring(store, master.key)
    assert fresh.decrypt_sync("acme", blob, "auth_state", 1) == b"auth state"
    assert await fresh.decrypt("acme", fresh.encrypt_sync("acme", b"x", "r"), "r") == b"x"
    # Another master key cannot unwrap it.
    with pytest.raises(DecryptionError, match="wrapped by master key"):
        Keyring(store, os.urandom(32)).data_key_sync("acme")


async def test_concurrent_first_use_creates_one_key(settings: Settings, store: Store) -> None:
    master = open_master_key(settings, store, finish_pending=True)
    add_tenant(store, "acme")
    rings = [Keyring(store, master.key) for _ in range(4)]  # separate caches, like processes
    results = await asyncio.gather(*(rings[i % 4].data_key("acme") for i in range(20)))
    assert len(set(results)) == 1
    rows = tenant_rows(store)
    assert [r.tenant_id for r in rows] == ["acme"]
    assert rows[0].master_key_id == master.id
    assert keyring.unwrap_data_key(master.key, rows[0]) == results[0]


async def test_forget_and_cascade_on_tenant_delete(settings: Settings, store: Store) -> None:
    master = open_master_key(settings, store, finish_pending=True)
    add_tenant(store, "acme")
    ring = Keyring(store, master.key)
    old = await ring.data_key("acme")
    store.write_sync(lambda conn: conn.execute("DELETE FROM tenants WHERE id = 'acme'"))
    assert tenant_rows(store) == []
    ring.forget("acme")
    add_tenant(store, "acme")  # the same id reused later gets a new key
    assert await ring.data_key("acme") != old


# -- rotation --------------------------------------------------------------------------------


def _encrypted_fixture(store: Store, master_key: bytes) -> dict[tuple[str, int], bytes]:
    ring = Keyring(store, master_key)
    blobs = {}
    for tenant in ("acme", "globex", "initech"):
        add_tenant(store, tenant)
        for row in range(3):
            blobs[(tenant, row)] = ring.encrypt_sync(tenant, f"{tenant}-{row}".encode(), row)
    return blobs


def test_rotation_rewraps_every_key_and_old_key_stops_working(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(settings.db_path)
    store.open()
    old = open_master_key(settings, store, finish_pending=True)
    blobs = _encrypted_fixture(store, old.key)
    before = {r.tenant_id: r.wrapped_key for r in tenant_rows(store)}
    result = rotate_master_key(settings, store)
    store.close()
    assert result.old_key_id == old.id and result.new_key_id != old.id
    assert result.tenant_keys == 3 and result.source == "file" and result.new_key is None
    assert not masterkey.pending_path(settings).exists()
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600

    store = Store(settings.db_path)
    store.open()
    try:
        new = open_master_key(settings, store, finish_pending=True)
        assert new.id == result.new_key_id == db_master_key_id(store)
        rows = tenant_rows(store)
        assert {r.master_key_id for r in rows} == {new.id}
        assert all(r.rewrapped_at for r in rows)
        assert all(before[r.tenant_id] != r.wrapped_key for r in rows)
        ring = Keyring(store, new.key)
        for (tenant, row), blob in blobs.items():
            assert ring.decrypt_sync(tenant, blob, row) == f"{tenant}-{row}".encode()
        with pytest.raises(MasterKeyMismatch):
            open_master_key(env_settings(settings, old.key), store, finish_pending=True)
        with pytest.raises(DecryptionError):
            Keyring(store, old.key).data_key_sync("acme")
    finally:
        store.close()


def test_rotation_with_env_key_returns_the_new_key(settings: Settings, store: Store) -> None:
    old_key = os.urandom(32)
    env = env_settings(settings, old_key)
    open_master_key(env, store, finish_pending=True)
    blobs = _encrypted_fixture(store, old_key)
    result = rotate_master_key(env, store)
    assert result.source == "env" and result.new_key is not None and result.key_file is None
    assert repr(result.new_key) not in repr(result)
    assert not settings.key_file.exists() and not masterkey.pending_path(settings).exists()
    new_env = env_settings(settings, result.new_key)
    assert open_master_key(new_env, store, finish_pending=True).id == result.new_key_id
    ring = Keyring(store, result.new_key)
    assert all(ring.decrypt_sync(t, b, r) == f"{t}-{r}".encode() for (t, r), b in blobs.items())


def test_rotation_refused_while_the_data_dir_is_in_use(settings: Settings, store: Store) -> None:
    loaded = open_master_key(settings, store, finish_pending=True)
    server = DataDirLock(settings.lock_path)
    server.acquire("serve")
    try:
        with pytest.raises(Conflict, match="rotate the master key"):
            rotate_master_key(settings, store)
    finally:
        server.release()
    assert db_master_key_id(store) == loaded.id
    assert not masterkey.pending_path(settings).exists()


def test_failed_rotation_changes_nothing(settings: Settings, store: Store) -> None:
    old = open_master_key(settings, store, finish_pending=True)
    _encrypted_fixture(store, old.key)
    content = key_file_bytes(settings)
    # One damaged wrapped key: the whole re-wrap must roll back.
    store.write_sync(
        lambda conn: conn.execute(
            "UPDATE tenant_keys SET wrapped_key = zeroblob(61) WHERE tenant_id = 'globex'"
        )
    )
    with pytest.raises(DecryptionError, match="globex"):
        rotate_master_key(settings, store)
    assert db_master_key_id(store) == old.id
    assert {r.master_key_id for r in tenant_rows(store)} == {old.id}
    assert all(r.rewrapped_at is None for r in tenant_rows(store))
    assert key_file_bytes(settings) == content
    assert not masterkey.pending_path(settings).exists()


def test_crash_after_commit_is_completed_on_next_start(settings: Settings, store: Store) -> None:
    old = open_master_key(settings, store, finish_pending=True)
    blobs = _encrypted_fixture(store, old.key)
    old_content = key_file_bytes(settings)
    result = rotate_master_key(settings, store)
    # Put the files back as a crash between the commit and the rename leaves them.
    settings.key_file.replace(masterkey.pending_path(settings))
    settings.key_file.write_bytes(old_content)
    settings.key_file.chmod(0o600)
    # Without the lock (a rotation may be running) the pending key is used but not moved.
    peek = open_master_key(settings, store, finish_pending=False)
    assert peek.id == result.new_key_id
    assert masterkey.pending_path(settings).exists()
    assert key_file_bytes(settings) == old_content
    # With the lock, the rotation is finished.
    loaded = open_master_key(settings, store, finish_pending=True)
    assert loaded.id == result.new_key_id
    assert not masterkey.pending_path(settings).exists()
    assert masterkey.read_key_file(settings.key_file) == loaded.key
    ring = Keyring(store, loaded.key)
    assert all(ring.decrypt_sync(t, b, r) == f"{t}-{r}".encode() for (t, r), b in blobs.items())


def test_crash_before_commit_discards_the_new_key(settings: Settings, store: Store) -> None:
    old = open_master_key(settings, store, finish_pending=True)
    content = key_file_bytes(settings)
    pending = masterkey.pending_path(settings)
    masterkey.write_new_file(pending, os.urandom(32))
    assert open_master_key(settings, store, finish_pending=False).id == old.id
    assert pending.exists()  # not ours to resolve without the lock
    assert open_master_key(settings, store, finish_pending=True).id == old.id
    assert not pending.exists()
    assert key_file_bytes(settings) == content
    # A half-written pending file (crash while writing it) is discarded the same way.
    pending.write_bytes(b"QUJD")
    assert open_master_key(settings, store, finish_pending=True).id == old.id
    assert not pending.exists()


# -- escrow ----------------------------------------------------------------------------------


async def test_escrow_recovers_from_the_database_file_alone(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(settings.db_path)
    store.open()
    master = open_master_key(settings, store, finish_pending=True)
    blobs = _encrypted_fixture(store, master.key)
    with pytest.raises(BadRequest, match="at least 12"):
        escrow.escrow_master_key(store, master.key, "short")
    row = escrow.escrow_master_key(store, master.key, PASSPHRASE)
    assert row.master_key_id == master.id
    assert '"n": 131072' in row.kdf_params and len(row.salt) == 16
    store.close()

    elsewhere = tmp_path / "new-machine"
    elsewhere.mkdir()
    copy = elsewhere / "whatsdex.db"
    shutil.copyfile(settings.db_path, copy)
    copied = copy.read_bytes()
    with pytest.raises(escrow.WrongPassphrase):
        escrow.recover_master_key(copy, PASSPHRASE + "!")
    recovered = escrow.recover_master_key(copy, PASSPHRASE)
    assert recovered == master.key
    assert copy.read_bytes() == copied  # opened read-only
    assert not (elsewhere / "secret.key").exists()

    restored = Settings(data_dir=elsewhere)
    installed = escrow.install_recovered_key(restored, recovered)
    assert installed.path == restored.key_file and not installed.unchanged
    assert stat.S_IMODE(restored.key_file.stat().st_mode) == 0o600
    store = Store(copy)
    store.open()
    try:
        loaded = open_master_key(restored, store, finish_pending=True)
        ring = Keyring(store, loaded.key)
        for (tenant, r), blob in blobs.items():
            assert await ring.decrypt(tenant, blob, r) == f"{tenant}-{r}".encode()
    finally:
        await store.aclose()


def test_recover_without_escrow_or_database(settings: Settings, store: Store,
                                            tmp_path: Path) -> None:
    open_master_key(settings, store, finish_pending=True)
    with pytest.raises(NotFound, match="no recovery escrow"):
        escrow.recover_master_key(settings.db_path, PASSPHRASE)
    with pytest.raises(NotFound, match="no database"):
        escrow.recover_master_key(tmp_path / "absent.db", PASSPHRASE)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a readable"):
        escrow.recover_master_key(junk, PASSPHRASE)


def test_rotation_with_escrow_needs_the_passphrase_and_re_escrows(
    settings: Settings, store: Store
) -> None:
    old = open_master_key(settings, store, finish_pending=True)
    _encrypted_fixture(store, old.key)
    escrow.escrow_master_key(store, old.key, PASSPHRASE)
    content = key_file_bytes(settings)

    with pytest.raises(Conflict, match="drop-escrow"):
        rotate_master_key(settings, store)
    with pytest.raises(escrow.WrongPassphrase):
        rotate_master_key(settings, store, passphrase="not the right passphrase")
    assert db_master_key_id(store) == old.id and key_file_bytes(settings) == content
    assert not masterkey.pending_path(settings).exists()

    result = rotate_master_key(settings, store, passphrase=PASSPHRASE)
    assert result.escrow == "re-escrowed"
    assert escrow.recover_master_key(settings.db_path, PASSPHRASE) == masterkey.read_key_file(
        settings.key_file
    )
    dropped = rotate_master_key(settings, store, drop_escrow=True)
    assert dropped.escrow == "dropped"
    with store.read_sync() as conn:
        assert keys.get_escrow(conn) is None


def test_install_recovered_key_keeps_a_different_key_aside(settings: Settings) -> None:
    first, second = os.urandom(32), os.urandom(32)
    assert not escrow.install_recovered_key(settings, first).unchanged
    assert escrow.install_recovered_key(settings, first).unchanged
    with pytest.raises(Conflict, match="different master key file"):
        escrow.install_recovered_key(settings, second)
    assert masterkey.read_key_file(settings.key_file) == first
    installed = escrow.install_recovered_key(settings, second, replace=True)
    assert installed.replaced is not None
    assert installed.replaced.name.startswith("secret.key.replaced-")
    assert masterkey.read_key_file(installed.replaced) == first
    assert masterkey.read_key_file(settings.key_file) == second
    with pytest.raises(ConfigError, match="WHATSDEX_SECRET_KEY"):
        escrow.install_recovered_key(env_settings(settings, first), first)


# -- nothing usable at rest ------------------------------------------------------------------


def test_no_key_material_in_the_database_files(settings: Settings) -> None:
    store = Store(settings.db_path)
    store.open()
    master = open_master_key(settings, store, finish_pending=True)
    _encrypted_fixture(store, master.key)
    ring = Keyring(store, master.key)
    data_keys = [ring.data_key_sync(t) for t in ("acme", "globex", "initech")]
    escrow.escrow_master_key(store, master.key, PASSPHRASE)
    secrets = [master.key, *data_keys]
    needles = [
        form
        for secret in secrets
        for form in (secret, secret.hex().encode(), base64.b64encode(secret),
                     base64.urlsafe_b64encode(secret))
    ]
    needles.append(PASSPHRASE.encode())

    def scan() -> None:
        files = [p for p in settings.data_dir.iterdir() if p.name.startswith("whatsdex.db")]
        assert files
        for path in files:
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"key material found in {path.name}"

    wal = settings.db_path.with_name("whatsdex.db-wal")
    assert wal.exists() and wal.stat().st_size > 0  # the writes are still in the WAL
    scan()
    store.close()
    scan()
    # And the database really holds the wrapped keys (the scan looked at the right bytes).
    conn = sqlite3.connect(settings.db_path)
    try:
        assert conn.execute("SELECT count(*) FROM tenant_keys").fetchone()[0] == 3
    finally:
        conn.close()
