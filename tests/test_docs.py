"""The README documents every setting, its flag and its environment variable (Datasette habit)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main

from whatsdex.cli import app
from whatsdex.settings import DESCRIPTIONS, ENV_PREFIX, Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
FIELDS = [f.name for f in dataclasses.fields(Settings)]


def serve_flags() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts}


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_is_documented(name: str) -> None:
    assert name in DESCRIPTIONS, f"{name} has no description for --help"
    row = next((line for line in README.splitlines() if line.startswith(f"| {name} |")), None)
    assert row is not None, f"README's configuration table lacks {name}"
    assert f"`{ENV_PREFIX}{name.upper()}`" in row


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "secret_key"])
def test_every_setting_is_a_serve_flag(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    assert flag in serve_flags()
    assert f"`{flag}`" in README


def test_the_secret_key_is_never_a_flag() -> None:
    assert "--secret-key" not in serve_flags()
