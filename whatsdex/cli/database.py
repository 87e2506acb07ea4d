"""`whatsdex migrate` and `whatsdex version`."""

from __future__ import annotations

import platform
from typing import Annotated

import typer

from whatsdex import __version__
from whatsdex.cli.common import DataDir, friendly, settings_from
from whatsdex.store import Store, connection, migrations


@friendly
def migrate(
    data_dir: DataDir = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="Only list migrations and whether they are applied.")
    ] = False,
) -> None:
    """Apply pending database migrations (serve does this too), or list them."""
    settings = settings_from(data_dir=data_dir)
    if list_only:
        if not settings.db_path.exists():
            for name in migrations.known_names():
                typer.echo(f"pending  {name}")
            return
        conn = connection.open_untouched(settings.db_path)
        try:
            migrations.check_not_newer(conn, settings.db_path)
            for item in migrations.status(conn):
                state = f"applied  {item.name}  ({item.applied_at})" if item.applied_at else (
                    f"pending  {item.name}"
                )
                typer.echo(state)
        finally:
            conn.close()
        return
    store = Store(settings.db_path)
    store.open()
    try:
        applied = store.applied_at_open
    finally:
        store.close()
    if applied:
        typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        typer.echo("the database is up to date")


def version() -> None:
    """Print the WhatsDeX version."""
    typer.echo(f"WhatsDeX {__version__} (Python {platform.python_version()})")
