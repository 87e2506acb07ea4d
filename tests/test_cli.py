"""The command line through Typer's runner: real commands on a temporary data dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from whatsdex import __version__
from whatsdex.store import migrations
from whatsdex.store.lock import DataDirLock

Cli = Callable[..., Result]


def _one_error_line(result: Result) -> str:
    """A refused command says why in exactly one line on stderr, with no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout.strip() == ""
    return lines[0]


def test_version(cli: Cli) -> None:
    result = cli("version")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"WhatsDeX {__version__} ")


def test_no_arguments_shows_help(cli: Cli) -> None:
    result = cli()
    assert "serve" in result.output
    assert "migrate" in result.output


def test_migrate_a_new_data_dir(cli: Cli, data_dir: Path) -> None:
    names = migrations.known_names()
    result = cli("migrate", "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"applied {len(names)} migration(s): {', '.join(names)}"
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "whatsdex.db").stat().st_mode & 0o777 == 0o600

    again = cli("migrate", "--data-dir", data_dir)
    assert again.exit_code == 0
    assert again.stdout.strip() == "the database is up to date"

    listed = cli("migrate", "--list", "--data-dir", data_dir)
    assert listed.exit_code == 0
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["applied", name] for name in names
    ]


def test_data_dir_from_the_environment(cli: Cli, data_dir: Path) -> None:
    result = cli("migrate", env={"WHATSDEX_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    assert (data_dir / "whatsdex.db").exists()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "abc"], {}, "error: --port: must be a whole number, got 'abc'"),
        (["--port", "70000"], {}, "error: --port: port must be between 0 and 65535"),
        ([], {"WHATSDEX_PORT": "70000"}, "error: WHATSDEX_PORT: port must be between 0 and"),
        (["--engine", "foo"], {}, "error: --engine: must be one of neonize, sandbox"),
        ([], {"WHATSDEX_LOG_LEVEL": "loud"}, "error: WHATSDEX_LOG_LEVEL: must be one of"),
        (["--backup-keep", "0"], {}, "error: --backup-keep: must be 1 or more"),
        (["--public-url", "example.com"], {}, "error: --public-url: must start with http"),
    ],
)
def test_serve_rejects_bad_settings_in_one_line(
    cli: Cli, data_dir: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = cli("serve", "--data-dir", data_dir, *args, env=env)
    assert _one_error_line(result).startswith(expected)
    assert not data_dir.exists(), "nothing is created before the settings are valid"


def test_serve_refuses_a_data_dir_in_use(cli: Cli, data_dir: Path) -> None:
    lock = DataDirLock(data_dir / "whatsdex.lock")
    lock.acquire("restore")
    try:
        result = cli("serve", "--data-dir", data_dir, "--port", "0", "--engine", "sandbox")
    finally:
        lock.release()
    line = _one_error_line(result)
    assert "is in use by WhatsDeX pid" in line
    assert "(restore)" in line
    assert not (data_dir / "whatsdex.db").exists()


@pytest.mark.parametrize("world_readable", [False, True], ids=["private", "world-readable"])
def test_doctor(cli: Cli, data_dir: Path, world_readable: bool) -> None:
    """One run each: the engine check loads neonize's Go library in a child process."""
    assert cli("migrate", "--data-dir", data_dir).exit_code == 0
    data_dir.chmod(0o755 if world_readable else 0o700)
    result = cli("doctor", "--data-dir", data_dir)
    lines = result.stdout.splitlines()
    marks = ("ok  ", "FAIL")
    checks = {line[5:20].strip(): line[:4].strip() for line in lines if line[:4] in marks}
    assert set(checks) == {"data dir", "database", "engine library", "disk space"}, lines
    assert "Traceback" not in result.output
    if world_readable:
        assert result.exit_code == 1
        assert checks["data dir"] == "FAIL"
        fail_line = next(line for line in lines if line.startswith("FAIL"))
        assert "mode 755" in fail_line
        assert "1 problem(s) found" in result.stderr
    else:
        assert result.exit_code == 0, result.output
        assert set(checks.values()) == {"ok"}, lines
        assert "everything looks fine" in result.stdout
