"""The `whatsdex` command line: one Typer app, one module per group of commands."""

from __future__ import annotations

import typer

from whatsdex.cli import backup, contacts, database, doctor, identity, keys, sandbox, serve

app = typer.Typer(
    name="whatsdex",
    help="WhatsDeX: a self-hosted, multi-tenant WhatsApp gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(serve.serve)
app.command()(database.migrate)
app.command()(database.version)
app.command()(doctor.doctor)
app.command()(backup.backup)
app.command()(backup.restore)
app.add_typer(identity.admin_app, name="admin")
app.add_typer(identity.tenant_app, name="tenant")
app.add_typer(identity.apikey_app, name="apikey")
app.add_typer(keys.key_app, name="key")
app.add_typer(sandbox.sandbox_app, name="sandbox")
app.add_typer(contacts.contacts_app, name="contacts")
app.command("engine-check", hidden=True)(doctor.engine_check)


def main() -> None:
    app()
