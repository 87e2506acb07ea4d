"""`whatsdex admin|tenant|apikey`: real commands on a real data dir, through Typer's runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import Result

from whatsdex.errors import Unauthorized
from whatsdex.identity import apikeys, passwords
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import users as user_rows

from .conftest import (
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    Cli,
    SiteFactory,
    new_tenant,
    ok,
    run_on_store,
)


def one_line_error(result: Result, message: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip() == f"error: {message}"
    assert "Traceback" not in result.output


def authenticate(settings: Settings, key: str) -> tuple[str, str | None]:
    async def check(store: Store) -> tuple[str, str | None]:
        principal = await apikeys.authenticate(store, key, now=1_790_000_000.0)
        return principal.role, principal.tenant_id

    return run_on_store(settings, check)


def test_admin_create_reads_the_password_from_stdin(cli: Cli, settings: Settings,
                                                     open_site: SiteFactory) -> None:
    result = ok(cli("admin", "create", "--email", "Operator@Agency.example", "--name", "Ops",
                    "--password-stdin", input=OPERATOR_PASSWORD + "\n"))
    assert result.stdout.startswith(f"operator {OPERATOR_EMAIL} created (usr_")
    assert OPERATOR_PASSWORD not in result.output

    async def stored(store: Store) -> tuple[str, str]:
        found = await user_rows.find_for_login(store, OPERATOR_EMAIL)
        assert found is not None
        return found[0].role, found[1]

    role, password_hash = run_on_store(settings, stored)
    assert role == "operator"
    assert password_hash.startswith("$argon2id$")
    assert passwords.verify_password(password_hash, OPERATOR_PASSWORD)
    # The dashboard takes the same password, and the first-run link is not offered any more.
    site = open_site()
    assert site.services.setup_token is None
    assert site.login().status_code == 303


def test_admin_create_asks_twice_with_hidden_input(cli: Cli) -> None:
    typed = f"password1\npassword1\n{OPERATOR_PASSWORD}\n{OPERATOR_PASSWORD}\n"
    result = ok(cli("admin", "create", "--email", OPERATOR_EMAIL, input=typed))
    assert "too common" in result.stderr  # asked again after the refused one
    assert result.stdout.count("Password") == 2  # the prompts
    assert "Repeat for confirmation" in result.stdout
    assert OPERATOR_PASSWORD not in result.output  # hidden input is not echoed


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short", "The password must have at least 8 characters"),
        ("password123", "This password is too common; choose another one"),
        ("", "no password on standard input"),
    ],
)
def test_admin_create_applies_the_password_policy(
    cli: Cli, data_dir: Path, password: str, message: str
) -> None:
    result = cli("admin", "create", "--email", OPERATOR_EMAIL, "--password-stdin",
                 input=password + "\n")
    one_line_error(result, message)
    assert not (data_dir / "whatsdex.db").exists()  # refused before anything was written


def test_admin_create_errors_are_one_line(cli: Cli) -> None:
    one_line_error(cli("admin", "create", "--email", "not-an-email", "--password-stdin",
                       input=OPERATOR_PASSWORD + "\n"), "Enter a valid e-mail address")
    ok(cli("admin", "create", "--email", OPERATOR_EMAIL, "--password-stdin",
           input=OPERATOR_PASSWORD + "\n"))
    one_line_error(cli("admin", "create", "--email", OPERATOR_EMAIL, "--password-stdin",
                       input=OPERATOR_PASSWORD + "\n"), "A user with this e-mail already exists")


def test_tenant_create_and_list(cli: Cli) -> None:
    assert ok(cli("tenant", "list")).stdout.startswith("no tenants yet")
    acme = new_tenant(cli)
    zed = new_tenant(cli, "Zed Motors", "--plan", "free")

    lines = ok(cli("tenant", "list")).stdout.splitlines()

    assert lines[0].split() == ["ID", "NAME", "PLAN", "STATUS", "CREATED"]
    assert len(lines) == 3
    assert lines[1].startswith(acme)
    assert "Acme Bakery" in lines[1]
    assert lines[1].split()[-4:-2] == ["free", "active"]
    assert lines[2].startswith(zed)


def test_tenant_errors_are_one_line(cli: Cli) -> None:
    one_line_error(cli("tenant", "create", "Acme", "--plan", "gold"), "Unknown plan 'gold'")
    one_line_error(cli("tenant", "create", "   "), "The name must not be empty")
    assert ok(cli("tenant", "list")).stdout.startswith("no tenants yet")


def test_tenant_key_is_shown_once_and_works_until_revoked(cli: Cli, settings: Settings) -> None:
    tenant = new_tenant(cli)

    result = ok(cli("apikey", "create", "--tenant", tenant, "--name", "CRM", "--role", "member"))

    key = result.stdout.strip()
    assert key.startswith("wdx_") and "\n" not in key
    assert "will not be shown again" in result.stderr
    assert key not in result.stderr
    assert authenticate(settings, key) == ("member", tenant)

    listing = ok(cli("apikey", "list", "--tenant", tenant)).stdout
    header, row = listing.splitlines()
    assert header.split() == ["ID", "PREFIX", "NAME", "ROLE", "CREATED", "LAST", "USED",
                              "REVOKED"]
    key_id = row.split()[0]
    assert row.split()[1] == key[:12]
    assert key not in listing
    assert row.split()[2:4] == ["CRM", "member"]
    assert row.rstrip().endswith("-")  # not revoked

    assert ok(cli("apikey", "revoke", key_id, "--tenant", tenant)).stdout.strip() == (
        f"API key {key_id} revoked")

    with pytest.raises(Unauthorized):
        authenticate(settings, key)
    row = ok(cli("apikey", "list", "--tenant", tenant)).stdout.splitlines()[1]
    assert not row.rstrip().endswith("-")  # the revocation time is shown


def test_operator_keys(cli: Cli, settings: Settings) -> None:
    key = ok(cli("apikey", "create", "--operator", "--name", "Automation")).stdout.strip()
    assert authenticate(settings, key) == ("operator", None)
    row = ok(cli("apikey", "list", "--operator")).stdout.splitlines()[1]
    assert row.split()[2:4] == ["Automation", "operator"]

    # Without --tenant/--operator, revoke finds whose key it is.
    ok(cli("apikey", "revoke", row.split()[0]))
    with pytest.raises(Unauthorized):
        authenticate(settings, key)


def test_revoke_without_owner_finds_a_tenant_key(cli: Cli, settings: Settings) -> None:
    tenant = new_tenant(cli)
    key = ok(cli("apikey", "create", "--tenant", tenant)).stdout.strip()
    key_id = ok(cli("apikey", "list", "--tenant", tenant)).stdout.splitlines()[1].split()[0]
    ok(cli("apikey", "revoke", key_id))
    with pytest.raises(Unauthorized):
        authenticate(settings, key)


def test_apikey_errors_are_one_line(cli: Cli) -> None:
    one_line_error(cli("apikey", "create", "--tenant", "ten_nope"), "Tenant not found")
    one_line_error(cli("apikey", "list", "--tenant", "ten_nope"), "Tenant not found")
    one_line_error(cli("apikey", "create"), "say whose keys: --tenant ID or --operator")
    one_line_error(cli("apikey", "list", "--operator", "--tenant", "ten_x"),
                   "use either --tenant ID or --operator, not both")
    one_line_error(cli("apikey", "create", "--operator", "--role", "member"),
                   "--role applies to tenant keys; operator keys have the operator role")
    tenant = new_tenant(cli)
    one_line_error(cli("apikey", "create", "--tenant", tenant, "--role", "admin"),
                   "role must be owner or member")
    one_line_error(cli("apikey", "revoke", "key_nope"), "API key key_nope not found")
    one_line_error(cli("apikey", "revoke", "key_nope", "--tenant", tenant), "API key not found")


def test_commands_work_while_the_server_runs(cli: Cli, open_site: SiteFactory) -> None:
    site = open_site()  # the app holds the store open on the same data dir
    tenant = new_tenant(cli)
    key = ok(cli("apikey", "create", "--tenant", tenant)).stdout.strip()

    principal = site.call(apikeys.authenticate, site.store, key, now=site.now[0])

    assert principal.tenant_id == tenant
    with site.store.read_sync() as conn:
        actors = conn.execute(
            "SELECT DISTINCT actor_type, actor_label FROM audit_log WHERE tenant_id = ?",
            (tenant,),
        ).fetchall()
    assert [tuple(row) for row in actors] == [("cli", "command line")]
