"""The auth vault: snapshots of a number's WhatsApp store, their encryption and their restore.

Stores come in two layouts: the sandbox engine's, and whatsmeow's own, created by the real
neonize library in a child process (its Go code may abort a process; pytest must survive that).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from whatsdex.crypto.aead import DecryptionError
from whatsdex.crypto.keyring import Keyring
from whatsdex.identity import tenants
from whatsdex.identity.principal import CLI
from whatsdex.sessions import launch
from whatsdex.sessions.engines.sandbox import STORE_SCHEMA
from whatsdex.sessions.vault import RESTORE_NOTE, Vault
from whatsdex.store import Store, wa_sessions, wastore
from whatsdex.store.ids import new_id
from whatsdex.store.records import WaSession

from .conftest import RunApp, wait_until

PHONE = "15551230001"
CONTACT = "15559990000"
OUR_JID = f"{PHONE}:12@s.whatsapp.net"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of nothing

# whatsmeow 0.5.2's tables (NEONIZE.md §6).
WHATSMEOW_TABLES = sorted(f"whatsmeow_{name}" for name in (
    "version", "device", "identity_keys", "pre_keys", "sessions", "sender_keys",
    "app_state_sync_keys", "app_state_version", "app_state_mutation_macs", "contacts",
    "chat_settings", "message_secrets", "privacy_tokens", "nct_salt", "lid_map",
    "event_buffer", "retry_buffer",
))

# Runs in a child process: neonize creates its store, fails to connect (no network), stops.
NEONIZE_CHILD = r"""
import asyncio, json, os, sqlite3, sys, time

path = sys.argv[1]

def tables():
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return sorted(r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))
        finally:
            conn.close()
    except sqlite3.Error:
        return []

async def main():
    from neonize.aioze.client import NewAClient
    # The DSN the neonize engine uses: WAL, like every runtime store file.
    client = NewAClient(f"{path}?_journal_mode=WAL&_busy_timeout=15000&_foreign_keys=on&_x=",
                        uuid="vault-test")
    client._stop_finalizer.detach()
    outcome = "connected"
    try:
        task = await asyncio.wait_for(client.connect(), 30)
        await asyncio.wait_for(task, 30)
    except BaseException as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    deadline = time.monotonic() + 30
    while len(tables()) < 17 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    try:
        await asyncio.wait_for(client.stop(), 10)
    except BaseException as exc:
        outcome += f"; stop: {type(exc).__name__}"
    print(json.dumps({"outcome": outcome, "tables": tables()}), flush=True)
    # A Go thread may still be blocked: leave without waiting for it.
    os._exit(0)

asyncio.run(main())
"""


def run_neonize(path: Path) -> dict[str, object]:
    """Start and stop a neonize client on `path` in a child process; what it saw."""
    done = subprocess.run(
        [sys.executable, "-c", NEONIZE_CHILD, str(path)],
        capture_output=True, text=True, timeout=120, env=launch.engine_environment(),
        check=False,
    )
    assert done.returncode == 0, f"neonize child exited {done.returncode}:\n{done.stderr[-3000:]}"
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so a plain file copy is the whole store."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def neonize_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store file exactly as whatsmeow creates it (made once for the module)."""
    path = tmp_path_factory.mktemp("neonize") / "store.db"
    report = run_neonize(path)
    assert report["tables"] == WHATSMEOW_TABLES, report
    checkpoint(path)
    return path


def add_credentials(conn: sqlite3.Connection, whatsmeow: bool) -> dict[str, bytes]:
    """What a linked device's store holds: its keys, Signal sessions, sender keys. Offline no
    phone can link, so the rows are synthetic, in whatsmeow's columns and constraints."""
    secrets = {"identity_key": os.urandom(32)}
    if whatsmeow:
        secrets["noise_key"] = os.urandom(32)
        conn.execute(
            "INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key,"
            " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details,"
            " adv_account_sig, adv_account_sig_key, adv_device_sig, platform, push_name)"
            " VALUES (?, ?, 12345, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, 'android', 'Sales')",
            (OUR_JID, "123456789012345:12@lid", secrets["noise_key"], secrets["identity_key"],
             os.urandom(32), os.urandom(64), os.urandom(32), os.urandom(80), os.urandom(64),
             os.urandom(32), os.urandom(64)),
        )
        conn.executemany(
            "INSERT INTO whatsmeow_pre_keys (jid, key_id, key, uploaded) VALUES (?, ?, ?, 1)",
            [(OUR_JID, key_id, os.urandom(32)) for key_id in range(1, 6)],
        )
        conn.executemany(
            "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (?, ?, ?)",
            [(OUR_JID, f"1555999000{i}.0", os.urandom(32)) for i in range(3)],
        )
    else:
        conn.execute(
            "INSERT INTO whatsmeow_device (jid, lid, push_name, identity_key)"
            " VALUES (?, ?, 'Sales', ?)",
            (OUR_JID, "123456789012345@lid", secrets["identity_key"]),
        )
    conn.executemany(
        "INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?)",
        [(OUR_JID, f"1555999000{i}.0", os.urandom(200)) for i in range(3)],
    )
    conn.executemany(
        "INSERT INTO whatsmeow_sender_keys (our_jid, chat_id, sender_id, sender_key)"
        " VALUES (?, ?, ?, ?)",
        [(OUR_JID, f"12036300000000{i}@g.us", OUR_JID, os.urandom(120)) for i in range(2)],
    )
    return secrets


MakeStore = Callable[[Path], dict[str, bytes]]


@pytest.fixture(params=["sandbox", "neonize"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    """Builds a linked number's runtime store file (WAL, like the engines keep it)."""

    def make(path: Path) -> dict[str, bytes]:
        if request.param == "neonize":
            shutil.copyfile(request.getfixturevalue("neonize_template"), path)
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            if request.param == "sandbox":
                for statement in STORE_SCHEMA:
                    conn.execute(statement)
            with conn:
                conn.execute("BEGIN")
                return add_credentials(conn, whatsmeow=request.param == "neonize")
        finally:
            conn.close()

    return make


class Env:
    def __init__(self, store: Store, vault: Vault, tenant_id: str) -> None:
        self.store = store
        self.vault = vault
        self.tenant_id = tenant_id

    async def session(self, tenant_id: str | None = None) -> str:
        tenant_id = tenant_id or self.tenant_id
        stamp = "2026-01-01T00:00:00.000Z"
        row = WaSession(id=new_id("ses"), tenant_id=tenant_id, name="Sales", status="new",
                        status_reason="", status_since=stamp, desired="running", phone="",
                        jid="", lid="", push_name="", created_at=stamp, updated_at=stamp)
        await self.store.write(lambda conn: wa_sessions.insert(conn, row))
        return row.id

    async def blob(self, session_id: str, tenant_id: str | None = None
                   ) -> tuple[bytes, bool] | None:
        tenant_id = tenant_id or self.tenant_id
        return await self.store.write(
            lambda conn: wa_sessions.get_blob(conn, tenant_id, session_id))


@pytest.fixture
async def env(store: Store, tmp_path: Path) -> Env:
    keyring = Keyring(store, os.urandom(32))
    tenant = await tenants.create_tenant(store, CLI, name="Acme", now=time.time())
    root = tmp_path / "run"
    root.mkdir(mode=0o700)
    return Env(store, Vault(root, store, keyring, time.time), tenant.id)


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# -- snapshot and restore --------------------------------------------------------------------


async def test_snapshot_and_restore_keep_the_store_identical(
    env: Env, make_store: MakeStore
) -> None:
    session = await env.session()
    path = env.vault.path(session)
    make_store(path)
    before, tables = wastore.table_digests(path), schema(path)
    assert all(before[t] != EMPTY for t in wastore.SIGNAL_TABLES)

    await env.vault.release(env.tenant_id, session)  # a clean stop: last snapshot, file gone
    assert not any(p.exists() for p in wastore.companion_files(path))
    found = await env.blob(session)
    assert found is not None and found[1]

    prepared = await env.vault.prepare(env.tenant_id, session)
    assert (prepared.path, prepared.origin) == (path, "clean")
    assert wastore.table_digests(path) == before
    assert schema(path) == tables
    assert integrity(path) == "ok"
    assert (path.stat().st_mode & 0o777) == 0o600
    found = await env.blob(session)
    assert found is not None and not found[1], "the runtime file is the truth from now on"


async def test_a_restored_store_is_opened_by_whatsmeow_unchanged(
    env: Env, neonize_template: Path
) -> None:
    session = await env.session()
    path = env.vault.path(session)
    shutil.copyfile(neonize_template, path)
    before = wastore.table_digests(path)
    assert sorted(before) == WHATSMEOW_TABLES
    await env.vault.release(env.tenant_id, session)
    await env.vault.prepare(env.tenant_id, session)

    report = run_neonize(path)  # no migration needed, no crash: only the network is missing
    assert report["tables"] == WHATSMEOW_TABLES, report
    assert wastore.table_digests(path) == before


async def test_an_unclean_restore_drops_the_signal_state(
    env: Env, make_store: MakeStore
) -> None:
    session = await env.session()
    path = env.vault.path(session)
    make_store(path)
    before = wastore.table_digests(path)
    assert await env.vault.snapshot(env.tenant_id, session)  # a periodic one: not clean
    wastore.remove(path)  # power loss: the runtime directory (tmpfs) is gone

    prepared = await env.vault.prepare(env.tenant_id, session)
    assert (prepared.origin, prepared.note) == ("unclean", RESTORE_NOTE)
    after = wastore.table_digests(path)
    for table in wastore.SIGNAL_TABLES:
        assert after[table] == EMPTY
    assert {t: d for t, d in after.items() if t not in wastore.SIGNAL_TABLES} == {
        t: d for t, d in before.items() if t not in wastore.SIGNAL_TABLES}
    assert count(path, "whatsmeow_device") == 1
    assert integrity(path) == "ok"


async def test_a_leftover_runtime_file_wins_over_an_older_blob(
    env: Env, make_store: MakeStore
) -> None:
    session = await env.session()
    path = env.vault.path(session)
    make_store(path)
    assert await env.vault.snapshot(env.tenant_id, session)
    old = await env.blob(session)
    # The engine went on writing (a new contact), then the server died before a snapshot.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO whatsmeow_sessions (our_jid, their_id, session) VALUES (?, ?, ?)",
                     (OUR_JID, "15558880000.0", os.urandom(200)))
    conn.close()
    newest = wastore.table_digests(path)

    restarted = Vault(env.vault.root, env.store, env.vault.keyring, time.time)
    prepared = await restarted.prepare(env.tenant_id, session)
    assert prepared.origin == "leftover"
    assert wastore.table_digests(path) == newest, "the leftover file is used as it is"
    # ...and imported at once: the blob now holds the newest state.
    found = await env.blob(session)
    assert found is not None and found != old
    copy = path.with_name("copy.db")
    copy.write_bytes(await env.vault.keyring.decrypt(env.tenant_id, found[0], "wa_auth", session))
    assert wastore.table_digests(copy) == newest


# -- encryption ------------------------------------------------------------------------------


async def test_blobs_are_encrypted_and_bound_to_their_number(
    env: Env, make_store: MakeStore, store: Store
) -> None:
    first, second = await env.session(), await env.session()
    other_tenant = (await tenants.create_tenant(store, CLI, name="Other", now=time.time())).id
    elsewhere = await env.session(other_tenant)
    secrets = make_store(env.vault.path(first))
    await env.vault.release(env.tenant_id, first)
    found = await env.blob(first)
    assert found is not None
    blob = found[0]
    assert not blob.startswith(b"SQLite format 3")
    assert all(key not in blob for key in secrets.values())
    # The test could see the keys if they were there: the decrypted blob holds them.
    plain = await env.vault.keyring.decrypt(env.tenant_id, blob, "wa_auth", first)
    assert plain.startswith(b"SQLite format 3\x00")
    assert all(key in plain for key in secrets.values())

    # The blob copied onto another number's row (same tenant, or another tenant) stays shut.
    for tenant_id, target in ((env.tenant_id, second), (other_tenant, elsewhere)):
        await store.write(functools.partial(
            wa_sessions.put_blob, tenant_id=tenant_id, session_id=target, blob=blob, clean=True,
            now="2026-01-01T00:00:00.000Z"))
        with pytest.raises(DecryptionError, match=target):
            await env.vault.prepare(tenant_id, target)
        assert not env.vault.path(target).exists()
    prepared = await env.vault.prepare(env.tenant_id, first)
    assert prepared.origin == "clean"


async def test_the_data_file_holds_no_plaintext_credentials(
    env: Env, make_store: MakeStore, store: Store
) -> None:
    session = await env.session()
    path = env.vault.path(session)
    secrets = make_store(path)
    assert await env.vault.snapshot(env.tenant_id, session)
    await env.vault.release(env.tenant_id, session)
    assert await env.blob(session) is not None
    files = [p for p in (store.path, Path(f"{store.path}-wal")) if p.exists()]
    assert store.path in files
    for file in files:
        data = file.read_bytes()
        for name, key in secrets.items():
            assert key not in data, f"{name} in plaintext in {file.name}"


# -- in the running app ----------------------------------------------------------------------


def runtime_identity_key(path: Path) -> bytes:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return bytes(conn.execute("SELECT identity_key FROM whatsmeow_device").fetchone()[0])
    finally:
        conn.close()


def test_a_linked_number_leaves_no_plaintext_key_in_the_data_dir(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    key = runtime_identity_key(app.vault.path(session))
    assert len(key) == 32
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")
    data_dir = app.settings.data_dir

    def leaks() -> list[str]:
        return [p.name for p in data_dir.rglob("*") if p.is_file() and key in p.read_bytes()]

    assert leaks() == []
    app.close()  # the final snapshot, then the runtime file is deleted
    assert leaks() == []
    assert (data_dir / "whatsdex.db").exists()


def test_changes_reach_the_blob_within_seconds(run_app: RunApp, tmp_path: Path) -> None:
    """What a power loss can lose is bounded by the snapshot period."""
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")
    app.call(app.supervisor.sandbox, tenant, session, action="inbound", sender=CONTACT,
             text="hello")
    path = app.vault.path(session)
    current = wastore.table_digests(path)
    copy = tmp_path / "blob.db"

    def blob_is_current() -> bool:
        found = app.blob(tenant, session)
        assert found is not None and app.services.keyring is not None
        copy.write_bytes(app.call(app.services.keyring.decrypt, tenant, found[0], "wa_auth",
                                  session))
        return wastore.table_digests(copy) == current

    took = wait_until(blob_is_current, 10, "the new Signal session in the blob")
    print(f"\na store change reached the encrypted blob after {took:.2f}s")


def test_power_loss_restores_the_older_snapshot_and_says_so(
    run_app: RunApp, sandbox_env: Path
) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    app.call(app.supervisor.sandbox, tenant, session, action="inbound", sender=CONTACT,
             text="hello")
    path = app.vault.path(session)
    assert count(path, "whatsmeow_sessions") == 1
    app.call(app.vault.snapshot, tenant, session)
    app.close(final_snapshots=False)
    shutil.rmtree(sandbox_env)  # the runtime directory was in memory: gone with the power
    sandbox_env.mkdir(mode=0o700)

    again = run_app()
    again.wait_status(session, "connected")
    assert again.history(tenant, session)[-2].reason == f"resuming after a restart; {RESTORE_NOTE}"
    path = again.vault.path(session)
    assert count(path, "whatsmeow_sessions") == 0
    assert count(path, "whatsmeow_device") == 1
    # The contact writes again: the Signal session is negotiated anew.
    again.call(again.supervisor.sandbox, tenant, session, action="inbound", sender=CONTACT,
               text="still there?")
    assert count(path, "whatsmeow_sessions") == 1


def test_after_a_crash_the_leftover_runtime_file_is_used(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    session = app.link(tenant, PHONE)
    wait_until(lambda: app.blob(tenant, session) is not None, what="a snapshot after pairing")
    older = app.blob(tenant, session)
    assert older is not None
    app.call(app.supervisor.sandbox, tenant, session, action="inbound", sender=CONTACT,
             text="hello")
    path = app.vault.path(session)
    newest = wastore.table_digests(path)
    app.close(final_snapshots=False)
    assert path.exists()
    # Whatever the periodic snapshots did meanwhile, the blob is the one from before the message.
    with contextlib.closing(sqlite3.connect(app.settings.db_path)) as db, db:
        db.execute("UPDATE wa_auth_vault SET blob = ?, clean = 0 WHERE session_id = ?",
                   (older[0], session))

    again = run_app()
    again.wait_status(session, "connected")
    assert wastore.table_digests(path) == newest
    reasons = [h.reason for h in again.history(tenant, session)]
    assert not any(RESTORE_NOTE in reason for reason in reasons)
    assert reasons[-2].startswith("resuming after a restart")


def test_a_blob_that_does_not_open_fails_the_number_clearly(run_app: RunApp) -> None:
    app = run_app()
    tenant = app.tenant()
    first = app.link(tenant, PHONE)
    second = app.link(tenant, "15551230002", "Support")
    app.close()
    with contextlib.closing(sqlite3.connect(app.settings.db_path)) as db, db:
        db.execute("UPDATE wa_auth_vault SET blob = (SELECT blob FROM wa_auth_vault"
                   " WHERE session_id = ?) WHERE session_id = ?", (first, second))

    again = run_app()
    again.wait_status(second, "failed")
    reason = again.supervisor.live[second].reason
    assert "cannot be decrypted" in reason, reason
    again.wait_status(first, "connected")
