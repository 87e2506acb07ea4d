"""No secret is kept or logged in plaintext: passwords, API keys, session cookies, link tokens."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from whatsdex.crypto import masterkey
from whatsdex.identity import apikeys, users
from whatsdex.identity.principal import CLI
from whatsdex.settings import Settings

from .conftest import OPERATOR_PASSWORD, Cli, SiteFactory, new_tenant, ok, set_up_operator

MEMBER_PASSWORD = "quartz-meadow-lantern-91"


def data_files(settings: Settings) -> bytes:
    """The database with its write-ahead log and shared-memory index, as they are on disk."""
    path = settings.db_path
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
                    if p.exists())


def test_a_scripted_session_leaves_no_secret_in_the_data_file_or_logs(
    open_site: SiteFactory, cli: Cli, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    site = open_site()
    setup_token = site.services.setup_token
    assert setup_token

    # First run, sign out, a few wrong passwords, then a real sign-in.
    set_up_operator(site)
    cookies = [site.session_cookie]
    site.logout()
    guesses = [f"wrong-guess-{i}-{OPERATOR_PASSWORD}" for i in range(3)]
    for guess in guesses:
        assert site.login(password=guess).status_code == 401
    assert site.login().status_code == 303
    cookies.append(site.session_cookie)
    site.advance(120)
    assert site.whoami() is not None  # touches the session

    # The command line creates a tenant and a key; the key is used once.
    cli_output: list[str] = []
    tenant = new_tenant(cli)
    created = ok(cli("apikey", "create", "--tenant", tenant, "--name", "CRM"))
    key = created.stdout.strip()
    cli_output.append(created.stderr)  # everything but the one deliberate print of the key
    cli_output.append(ok(cli("apikey", "list", "--tenant", tenant)).output)
    site.call(apikeys.authenticate, site.store, key, now=site.now[0])

    # An invitation is accepted (its token and the member's password are secrets too).
    _, invite_token = site.call(users.invite, site.store, CLI, tenant, email="amy@acme.example",
                                role="member", now=site.now[0])
    accepted = site.submit("/invite", f"/invite?token={invite_token}", name="Amy",
                           password=MEMBER_PASSWORD, password_confirm=MEMBER_PASSWORD)
    assert accepted.status_code == 303
    cookies.append(site.session_cookie)
    site.logout()

    secrets = {
        "operator password": OPERATOR_PASSWORD,
        "member password": MEMBER_PASSWORD,
        "API key": key,
        "invitation token": invite_token,
        **{f"wrong password {i}": guess for i, guess in enumerate(guesses)},
        **{f"session cookie {i}": cookie for i, cookie in enumerate(cookies) if cookie},
    }
    assert len(secrets) == 10
    if settings.key_file.exists():
        text = settings.key_file.read_text().strip()
        secrets["master key file"] = text
        raw = masterkey.decode_key(text)
    else:
        raw = None

    on_disk = [data_files(settings)]  # while running: recent writes are still in the -wal
    site.close()
    on_disk.append(data_files(settings))  # after the checkpoint at close
    # The test's own HTTP client logs the URLs it requests (a browser's history, in real life);
    # everything the product and its libraries log is checked.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logs = "\n".join(
        caplog.handler.format(r) + repr(r.args) + (r.exc_text or "") for r in records
    ) + "".join(cli_output)

    # The capture saw the session at DEBUG level: the SQL statements of the login are there.
    assert "FROM login_sessions" in logs
    for what, secret in secrets.items():
        for data in on_disk:
            assert secret.encode() not in data, f"the {what} is in the database"
        assert secret not in logs, f"the {what} is in the logs"
    for data in on_disk:
        assert setup_token.encode() not in data, "the set-up token is in the database"
        if raw is not None:
            assert raw not in data, "the raw master key is in the database"
    # The set-up link is printed to the log on purpose: it is how the operator gets in.
    assert f"/setup?token={setup_token}" in logs
