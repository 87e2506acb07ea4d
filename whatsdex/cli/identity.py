"""`whatsdex admin|tenant|apikey`: operator accounts, tenants and API keys from the shell.

Each command opens the store on the data dir, acts as the `CLI` principal (the audit log says
"command line") and closes it. SQLite lets these run while `whatsdex serve` uses the same file,
so they do not take the data-dir lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from whatsdex.cli.common import DataDir, friendly, settings_from
from whatsdex.clock import system_clock
from whatsdex.errors import BadRequest, NotFound
from whatsdex.identity import apikeys, passwords, tenants, users
from whatsdex.identity.principal import CLI
from whatsdex.store import Store
from whatsdex.store import apikeys as key_rows
from whatsdex.store import tenants as tenant_rows
from whatsdex.store.records import ApiKey

T = TypeVar("T")

admin_app = typer.Typer(help="Operator accounts.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants: the client workspaces.", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of a tenant or of the operator.", no_args_is_help=True)

PASSWORD_ATTEMPTS = 3

TenantOpt = Annotated[
    str | None, typer.Option("--tenant", metavar="ID", help="The tenant (workspace) id.",
                             show_default=False),
]
OperatorOpt = Annotated[bool, typer.Option("--operator", help="The operator's own keys.")]


def _run(data_dir: Path | None, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store (applying migrations), run one piece of async work on it, close it."""
    settings = settings_from(data_dir=data_dir)

    async def main() -> T:
        store = Store(settings.db_path, readers=1)
        await asyncio.to_thread(store.open)
        try:
            return await work(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def _day(stamp: str | None) -> str:
    """`2026-11-22T02:10:00.123Z` → `2026-11-22 02:10`: enough to read in a table."""
    return stamp[:16].replace("T", " ") if stamp else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def _owner(tenant_id: str | None, operator: bool) -> str | None:
    """Whose keys: exactly one of `--tenant ID` and `--operator` (None means the operator)."""
    if operator and tenant_id:
        raise BadRequest("use either --tenant ID or --operator, not both")
    if not operator and not tenant_id:
        raise BadRequest("say whose keys: --tenant ID or --operator")
    return tenant_id


# -- admin -------------------------------------------------------------------------------------


def _stdin_password() -> str:
    line = typer.get_text_stream("stdin").readline().rstrip("\r\n")
    if not line:
        raise BadRequest("no password on standard input")
    return line


def _prompt_password(email: str) -> str:
    """Ask twice with hidden input; a password the policy refuses is asked for again."""
    for _ in range(PASSWORD_ATTEMPTS):
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            passwords.check_policy(password, email)
        except BadRequest as exc:
            typer.secho(exc.message, err=True, fg=typer.colors.YELLOW)
            continue
        return password
    raise BadRequest("no acceptable password given")


@admin_app.command("create")
@friendly
def admin_create(
    email: Annotated[str, typer.Option("--email", help="The operator's e-mail (their login).")],
    name: Annotated[str, typer.Option("--name", help="Display name.")] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin",
                           help="Read the password from the first line of standard input."),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create an operator account (the first one replaces the first-run set-up link)."""
    clean = users.clean_email(email)
    password = _stdin_password() if password_stdin else _prompt_password(clean)
    passwords.check_policy(password, clean)  # before the data file is touched
    user = _run(data_dir, lambda store: users.create_operator(
        store, CLI, email=clean, password=password, name=name, now=system_clock()))
    typer.echo(f"operator {user.email} created ({user.id})")


# -- tenant ------------------------------------------------------------------------------------


@tenant_app.command("create")
@friendly
def tenant_create(
    name: Annotated[str, typer.Argument(help="The workspace name, e.g. the client's company.")],
    plan: Annotated[str, typer.Option("--plan", help="Plan id.")] = "free",
    data_dir: DataDir = None,
) -> None:
    """Create a tenant (a client workspace) on a plan."""
    tenant = _run(data_dir, lambda store: tenants.create_tenant(
        store, CLI, name=name, plan_id=plan, now=system_clock()))
    typer.echo(f"tenant {tenant.id} created: {tenant.name} (plan {tenant.plan_id})")


@tenant_app.command("list")
@friendly
def tenant_list(data_dir: DataDir = None) -> None:
    """List the tenants."""
    found = _run(data_dir, tenant_rows.list_tenants)
    if not found:
        typer.echo("no tenants yet: create one with `whatsdex tenant create NAME`")
        return
    _table(("ID", "NAME", "PLAN", "STATUS", "CREATED"),
           [(t.id, t.name, t.plan_id, t.status, _day(t.created_at)) for t in found])


# -- apikey ------------------------------------------------------------------------------------


@apikey_app.command("create")
@friendly
def apikey_create(
    tenant: TenantOpt = None,
    operator: OperatorOpt = False,
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "API key",
    role: Annotated[
        str | None, typer.Option("--role", help="owner or member (tenant keys; default owner).",
                                 show_default=False),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it once: only its hash is kept."""
    tenant_id = _owner(tenant, operator)
    if tenant_id is None and role is not None:
        raise BadRequest("--role applies to tenant keys; operator keys have the operator role")
    key, secret = _run(data_dir, lambda store: apikeys.create_key(
        store, CLI, tenant_id, name=name, role=role or "owner", now=system_clock()))
    owner = f"tenant {tenant_id}" if tenant_id else "the operator"
    # The key alone on stdout (so `$(whatsdex apikey create ...)` captures it); the rest on stderr.
    typer.echo(f"API key {key.id} ({key.role}) created for {owner}:", err=True)
    typer.echo(secret)
    typer.echo("This key will not be shown again: store it now.", err=True)


async def _owner_of_key(store: Store, key_id: str) -> str | None:
    """The tenant a key belongs to (None: the operator's), found by looking through each."""
    if any(k.id == key_id for k in await key_rows.list_keys(store, None)):
        return None
    for tenant in await tenant_rows.list_tenants(store):
        if any(k.id == key_id for k in await key_rows.list_keys(store, tenant.id)):
            return tenant.id
    raise NotFound(f"API key {key_id} not found")


@apikey_app.command("revoke")
@friendly
def apikey_revoke(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id (see `list`).")],
    tenant: TenantOpt = None,
    operator: OperatorOpt = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key: requests using it are refused from now on."""
    if tenant and operator:
        raise BadRequest("use either --tenant ID or --operator, not both")

    async def work(store: Store) -> None:
        tenant_id = tenant if tenant or operator else await _owner_of_key(store, key_id)
        await apikeys.revoke_key(store, CLI, tenant_id, key_id, now=system_clock())

    _run(data_dir, work)
    typer.echo(f"API key {key_id} revoked")


@apikey_app.command("list")
@friendly
def apikey_list(
    tenant: TenantOpt = None,
    operator: OperatorOpt = False,
    data_dir: DataDir = None,
) -> None:
    """List a tenant's (or the operator's) API keys; the keys themselves are never shown."""
    tenant_id = _owner(tenant, operator)

    async def work(store: Store) -> list[ApiKey]:
        if tenant_id is not None:
            await tenants.get_tenant(store, tenant_id)  # an unknown tenant is an error, not empty
        return await key_rows.list_keys(store, tenant_id)

    found = _run(data_dir, work)
    if not found:
        typer.echo("no API keys")
        return
    _table(
        ("ID", "PREFIX", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"),
        [(k.id, k.prefix, k.name, k.role, _day(k.created_at), _day(k.last_used_at),
          _day(k.revoked_at)) for k in found],
    )
