"""`whatsdex key status|escrow|rotate`: the master key, its escrow and its rotation.

Nothing here prints a key or a passphrase, except once the new key of a rotation whose key lives
in the environment: that is the only way for the operator to install it.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from whatsdex.cli.common import DataDir, friendly, settings_from
from whatsdex.crypto import escrow, keyring, masterkey
from whatsdex.errors import BadRequest, ConfigError, WhatsdexError
from whatsdex.settings import Settings
from whatsdex.store import Store, keys
from whatsdex.store.lock import DataDirLock

key_app = typer.Typer(help="Master key: rotation and escrow.", no_args_is_help=True)

PassphraseStdin = Annotated[
    bool,
    typer.Option(
        "--passphrase-stdin",
        help="Read the recovery passphrase from the first line of standard input.",
    ),
]


def _stdin_passphrase() -> str:
    line = typer.get_text_stream("stdin").readline().rstrip("\r\n")
    if not line:
        raise BadRequest("no passphrase on standard input")
    return line


def _describe_kdf(row: keys.EscrowRow) -> str:
    try:
        params = json.loads(row.kdf_params)
        return f"{row.kdf} n={params['n']} r={params['r']} p={params['p']}"
    except (ValueError, KeyError, TypeError):
        return row.kdf


def _source(settings: Settings) -> str:
    if settings.secret_key:
        return f"environment ({masterkey.ENV_NAME})"
    return f"file {settings.key_file}"


@key_app.command()
@friendly
def status(data_dir: DataDir = None) -> None:
    """Where the master key comes from, its id, the tenant keys and the escrow (never a key)."""
    settings = settings_from(data_dir=data_dir)
    problems = 0
    try:
        loaded = masterkey.read_master_key(settings)
    except WhatsdexError as exc:
        loaded = None
        problems += 1
        typer.echo(f"master key:  {_source(settings)}: {exc.message}")
    else:
        if loaded is None:
            typer.echo(f"master key:  {_source(settings)} (missing: created on first start)")
        else:
            typer.echo(f"master key:  {_source(settings)}, id {loaded.id}")
    if masterkey.pending_path(settings).exists() and not settings.secret_key:
        typer.echo(
            f"pending:     {masterkey.pending_path(settings)} (an interrupted rotation, "
            "finished or discarded on the next start)"
        )
    if not settings.db_path.exists():
        typer.echo(f"database:    none yet at {settings.db_path}")
        raise typer.Exit(1 if problems else 0)
    state = keys.read_key_state(settings.db_path)
    if state is None:
        typer.echo("database:    not migrated yet (run `whatsdex migrate`)")
        raise typer.Exit(1 if problems else 0)
    if state.master_key_id is None:
        typer.echo("database:    no master key recorded yet (recorded on first start)")
    else:
        verdict = ""
        if loaded is not None:
            matches = loaded.id == state.master_key_id
            verdict = " (matches)" if matches else " (DOES NOT MATCH the master key)"
            problems += 0 if matches else 1
        typer.echo(f"database:    uses master key id {state.master_key_id}{verdict}")
    total = sum(state.tenant_keys.values())
    stale = {k: n for k, n in state.tenant_keys.items() if k != state.master_key_id}
    typer.echo(f"tenant keys: {total}")
    if stale:
        problems += 1
        detail = ", ".join(f"{n} under {k}" for k, n in sorted(stale.items()))
        typer.echo(f"             wrapped by another master key: {detail}")
    if state.escrow is None:
        typer.echo("escrow:      none (set one with `whatsdex key escrow`)")
    else:
        row = state.escrow
        outdated = "" if row.master_key_id == state.master_key_id else " (OUT OF DATE)"
        typer.echo(
            f"escrow:      set {row.created_at} for key id {row.master_key_id}{outdated}, "
            f"{_describe_kdf(row)}"
        )
        problems += 1 if outdated else 0
    if problems:
        raise typer.Exit(1)


@key_app.command("escrow")
@friendly
def escrow_command(data_dir: DataDir = None, passphrase_stdin: PassphraseStdin = False) -> None:
    """Keep the master key in the database under a recovery passphrase (replaces an old one).

    With it, the data file alone restores everything: `whatsdex restore --passphrase`.
    """
    settings = settings_from(data_dir=data_dir)
    if passphrase_stdin:
        passphrase = _stdin_passphrase()
    else:
        passphrase = typer.prompt(
            "Recovery passphrase", hide_input=True, confirmation_prompt=True
        )
    escrow.check_passphrase(passphrase)
    store = Store(settings.db_path)
    store.open()
    try:
        # Without the data dir lock (a server may run): a pending rotation is read, not moved.
        loaded = masterkey.open_master_key(settings, store, finish_pending=False)
        row = escrow.escrow_master_key(store, loaded.key, passphrase)
    finally:
        store.close()
    typer.echo(
        f"master key {row.master_key_id} escrowed ({_describe_kdf(row)}). Keep the passphrase "
        "safe and apart from the data: with it, a copy of whatsdex.db restores everything."
    )


@key_app.command()
@friendly
def rotate(
    data_dir: DataDir = None,
    passphrase_stdin: PassphraseStdin = False,
    drop_escrow: Annotated[
        bool,
        typer.Option("--drop-escrow", help="Delete the recovery escrow instead of renewing it."),
    ] = False,
) -> None:
    """Make a new master key and re-wrap every tenant's data key with it (server stopped)."""
    settings = settings_from(data_dir=data_dir)
    if not settings.db_path.exists():
        raise ConfigError(f"no database at {settings.db_path}: nothing to rotate")
    # Check for a running server first, so nobody types a passphrase only to be refused.
    probe = DataDirLock(settings.lock_path)
    probe.acquire("rotate the master key")
    probe.release()
    state = keys.read_key_state(settings.db_path)
    passphrase: str | None = None
    if state is not None and state.escrow is not None and not drop_escrow:
        if passphrase_stdin:
            passphrase = _stdin_passphrase()
        else:
            passphrase = typer.prompt(
                "Recovery passphrase (the new key is escrowed with it)", hide_input=True
            )
    store = Store(settings.db_path)
    store.open()
    try:
        result = keyring.rotate_master_key(
            settings, store, passphrase=passphrase, drop_escrow=drop_escrow
        )
    finally:
        store.close()
    escrow_note = {
        "none": "",
        "re-escrowed": " The escrow now holds the new key (same passphrase).",
        "dropped": " The escrow was deleted.",
    }[result.escrow]
    typer.echo(
        f"master key rotated: {result.old_key_id} -> {result.new_key_id}, "
        f"{result.tenant_keys} tenant key(s) re-wrapped.{escrow_note}"
    )
    if result.new_key is None:
        typer.echo(
            f"The new key is in {result.key_file}: back it up now. Backups made before this "
            "rotation still need the previous key (or their escrow passphrase)."
        )
        return
    typer.echo(
        f"The master key comes from {masterkey.ENV_NAME}: replace its value with the new key "
        "below before the next start (it is shown only this once; the old key no longer opens "
        "this database):",
        err=True,
    )
    typer.echo(f"{masterkey.ENV_NAME}={masterkey.encode_key(result.new_key)}")
