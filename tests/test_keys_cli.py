"""`whatsdex key status|escrow|rotate` through Typer's runner, on a real data dir."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from whatsdex.cli.keys import key_app
from whatsdex.crypto import keyring, masterkey
from whatsdex.settings import Settings
from whatsdex.store import Store, keys
from whatsdex.store.lock import DataDirLock

PASSPHRASE = "a long recovery passphrase"
# The variables that could change which key or data dir the commands use.
CLEAN_ENV: dict[str, str | None] = {
    "WHATSDEX_SECRET_KEY": None,
    "WHATSDEX_SECRET_KEY_FILE": None,
    "WHATSDEX_DATA_DIR": None,
}

app = typer.Typer()
app.add_typer(key_app, name="key")


def run(data_dir: Path, *args: str, input: str | None = None,
        env_key: bytes | None = None) -> Result:
    env = dict(CLEAN_ENV)
    if env_key is not None:
        env["WHATSDEX_SECRET_KEY"] = base64.b64encode(env_key).decode()
    return CliRunner().invoke(app, ["key", *args, "--data-dir", str(data_dir)], input=input,
                              env=env)


def one_error_line(result: Result) -> str:
    assert result.exit_code not in (0, None)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def db_state(settings: Settings) -> keys.KeyState:
    state = keys.read_key_state(settings.db_path)
    assert state is not None
    return state


def make_database(settings: Settings, env_key: bytes | None = None) -> masterkey.MasterKey:
    """A used data dir: its master key recorded and two tenants with data keys."""
    if env_key is not None:
        settings = Settings(data_dir=settings.data_dir,
                            secret_key=base64.b64encode(env_key).decode())
    store = Store(settings.db_path)
    store.open()
    try:
        loaded = masterkey.open_master_key(settings, store, finish_pending=True)
        ring = keyring.Keyring(store, loaded.key)
        store.write_sync(
            lambda conn: conn.executemany(
                "INSERT INTO tenants (id, name, plan_id, created_at, updated_at)"
                " VALUES (?, ?, 'free', '2026-11-22T02:10:00.000Z', '2026-11-22T02:10:00.000Z')",
                [("acme", "Acme"), ("globex", "Globex")],
            )
        )
        for tenant in ("acme", "globex"):
            ring.data_key_sync(tenant)
    finally:
        store.close()
    return loaded


def test_status_escrow_and_rotate(settings: Settings) -> None:
    data_dir = settings.data_dir
    fresh = run(data_dir, "status")
    assert fresh.exit_code == 0, fresh.output
    assert "missing: created on first start" in fresh.stdout

    master = make_database(settings)
    key_text = settings.key_file.read_text().strip()
    status = run(data_dir, "status")
    assert status.exit_code == 0, status.output
    assert f"id {master.id}" in status.stdout and "(matches)" in status.stdout
    assert "tenant keys: 2" in status.stdout and "escrow:      none" in status.stdout

    escrowed = run(data_dir, "escrow", input=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert escrowed.exit_code == 0, escrowed.output
    assert f"master key {master.id} escrowed" in escrowed.stdout
    status = run(data_dir, "status")
    assert re.search(rf"escrow: +set \S+ for key id {master.id}, scrypt n=131072", status.stdout)

    # Escrow exists: a wrong passphrase is one line, and nothing changes.
    wrong = run(data_dir, "rotate", "--passphrase-stdin", input="not the passphrase\n")
    assert "wrong recovery passphrase" in one_error_line(wrong)
    assert settings.key_file.read_text().strip() == key_text
    assert db_state(settings).master_key_id == master.id
    empty = run(data_dir, "rotate", "--passphrase-stdin", input="")
    assert "no passphrase" in one_error_line(empty)

    rotated = run(data_dir, "rotate", input=f"{PASSPHRASE}\n")
    assert rotated.exit_code == 0, rotated.output
    new_key = masterkey.read_key_file(settings.key_file)
    new_id = masterkey.master_key_id(new_key)
    assert f"{master.id} -> {new_id}, 2 tenant key(s) re-wrapped" in rotated.stdout
    assert "escrow now holds the new key" in rotated.stdout
    state = db_state(settings)
    assert state.master_key_id == new_id and state.tenant_keys == {new_id: 2}
    assert state.escrow is not None and state.escrow.master_key_id == new_id

    dropped = run(data_dir, "rotate", "--drop-escrow")
    assert dropped.exit_code == 0, dropped.output
    assert "escrow was deleted" in dropped.stdout
    status = run(data_dir, "status")
    assert status.exit_code == 0 and "escrow:      none" in status.stdout

    # No command ever printed a key or the passphrase.
    outputs = [fresh, status, escrowed, wrong, empty, rotated, dropped]
    for secret in (key_text, base64.b64encode(new_key).decode(), PASSPHRASE):
        assert all(secret not in r.output for r in outputs)


def test_escrow_refuses_a_short_passphrase(settings: Settings) -> None:
    result = run(settings.data_dir, "escrow", "--passphrase-stdin", input="too short\n")
    assert "at least 12 characters" in one_error_line(result)
    assert not settings.db_path.exists()


def test_rotate_with_env_key_prints_the_new_key_once(settings: Settings) -> None:
    old_key = os.urandom(32)
    old = make_database(settings, env_key=old_key)
    result = run(settings.data_dir, "rotate", env_key=old_key)
    assert result.exit_code == 0, result.output
    printed = re.findall(r"^WHATSDEX_SECRET_KEY=(\S+)$", result.stdout, re.MULTILINE)
    assert len(printed) == 1
    assert "replace its value" in result.stderr
    new_key = base64.b64decode(printed[0])
    assert db_state(settings).master_key_id == masterkey.master_key_id(new_key) != old.id
    assert not settings.key_file.exists()

    with_new = run(settings.data_dir, "status", env_key=new_key)
    assert with_new.exit_code == 0 and "(matches)" in with_new.stdout
    assert "environment (WHATSDEX_SECRET_KEY)" in with_new.stdout
    with_old = run(settings.data_dir, "status", env_key=old_key)
    assert with_old.exit_code == 1 and "DOES NOT MATCH" in with_old.stdout


def test_rotate_refused_while_serving(settings: Settings) -> None:
    master = make_database(settings)
    server = DataDirLock(settings.lock_path)
    server.acquire("serve")
    try:
        result = run(settings.data_dir, "rotate")
    finally:
        server.release()
    assert "stop it before trying to rotate the master key" in one_error_line(result)
    assert db_state(settings).master_key_id == master.id


def test_rotate_without_a_database(settings: Settings) -> None:
    assert "nothing to rotate" in one_error_line(run(settings.data_dir, "rotate"))


@pytest.mark.parametrize("mode", [0o644, 0o604])
def test_status_reports_a_key_file_open_to_others(settings: Settings, mode: int) -> None:
    make_database(settings)
    settings.key_file.chmod(mode)
    result = run(settings.data_dir, "status")
    assert result.exit_code == 1
    assert f"chmod 600 {settings.key_file}" in result.stdout
    assert "Traceback" not in result.output
