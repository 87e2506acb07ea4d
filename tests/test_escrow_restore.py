"""One backup file plus the recovery passphrase restores everything on a new machine."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from whatsdex import backups
from whatsdex.cli import app
from whatsdex.crypto import escrow
from whatsdex.crypto.keyring import Keyring
from whatsdex.crypto.masterkey import open_master_key
from whatsdex.settings import Settings
from whatsdex.store import Store

PASSPHRASE = "a long recovery passphrase"
SECRET = b"whatsmeow identity key material"


def _origin(tmp_path: Path) -> tuple[Settings, bytes, Path]:
    """A data dir with one tenant's encrypted row, an escrow, and a backup of it all."""
    settings = Settings(data_dir=tmp_path / "origin")
    store = Store(settings.db_path)
    store.open()
    try:
        store.write_sync(lambda conn: conn.execute(
            "INSERT INTO tenants (id, name, plan_id, created_at, updated_at) "
            "VALUES ('ten_a', 'A', 'free', '2026-11-22T00:00:00.000Z', "
            "'2026-11-22T00:00:00.000Z')"))
        master = open_master_key(settings, store, finish_pending=True)
        sealed = Keyring(store, master.key).encrypt_sync("ten_a", SECRET, "row", 1)
        escrow.escrow_master_key(store, master.key, PASSPHRASE)
    finally:
        store.close()
    backup = backups.create_backup(settings, dest=tmp_path / "copy.db")
    return settings, sealed, backup.path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def test_restore_with_passphrase_on_a_fresh_data_dir(tmp_path: Path) -> None:
    _, sealed, backup = _origin(tmp_path)
    fresh = Settings(data_dir=tmp_path / "fresh")
    result = CliRunner().invoke(
        app, ["restore", str(backup), "--data-dir", str(fresh.data_dir), "--passphrase-stdin"],
        input=PASSPHRASE + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "master key was recovered" in result.output
    assert fresh.key_file.stat().st_mode & 0o777 == 0o600
    store = Store(fresh.db_path)
    store.open()
    try:
        master = open_master_key(fresh, store, finish_pending=True)
        assert Keyring(store, master.key).decrypt_sync("ten_a", sealed, "row", 1) == SECRET
    finally:
        store.close()


def test_wrong_passphrase_changes_nothing(tmp_path: Path) -> None:
    _, _, backup = _origin(tmp_path)
    fresh = Settings(data_dir=tmp_path / "fresh")
    fresh.data_dir.mkdir(mode=0o700)
    before = (_digest(fresh.db_path), _digest(fresh.key_file))
    result = CliRunner().invoke(
        app, ["restore", str(backup), "--data-dir", str(fresh.data_dir), "--passphrase-stdin"],
        input="not the passphrase at all\n",
    )
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert (_digest(fresh.db_path), _digest(fresh.key_file)) == before == ("absent", "absent")


def test_different_existing_key_is_refused_before_replacing(tmp_path: Path) -> None:
    _, _, backup = _origin(tmp_path)
    fresh = Settings(data_dir=tmp_path / "fresh")
    fresh.data_dir.mkdir(mode=0o700)
    fresh.key_file.write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    fresh.key_file.chmod(0o600)
    result = CliRunner().invoke(
        app, ["restore", str(backup), "--data-dir", str(fresh.data_dir), "--passphrase-stdin"],
        input=PASSPHRASE + "\n",
    )
    assert result.exit_code != 0
    assert "different master key" in result.output
    assert not fresh.db_path.exists()
