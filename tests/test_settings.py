"""Settings: flags > WHATSDEX_* environment > defaults, every bad value one clear ConfigError."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from whatsdex.errors import ConfigError
from whatsdex.settings import DESCRIPTIONS, Settings, default_data_dir


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.resolve({}, env={})
    assert settings.data_dir == tmp_path / "whatsdex-data"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.engine == "neonize"
    assert settings.log_level == "info"
    assert settings.log_format == "text"
    assert settings.public_url is None
    assert settings.backup_interval_minutes == 30
    assert settings.backup_keep == 48
    assert settings.db_path == tmp_path / "whatsdex-data" / "whatsdex.db"
    assert settings.base_url == "http://127.0.0.1:8000"


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    env = {
        "WHATSDEX_DATA_DIR": str(tmp_path / "from-env"),
        "WHATSDEX_HOST": "0.0.0.0",
        "WHATSDEX_PORT": "9001",
        "WHATSDEX_ENGINE": "SANDBOX",
        "WHATSDEX_LOG_LEVEL": "debug",
        "WHATSDEX_LOG_FORMAT": "json",
        "WHATSDEX_PUBLIC_URL": "https://wa.example.com/",
        "WHATSDEX_BACKUP_INTERVAL_MINUTES": "0",
        "WHATSDEX_BACKUP_KEEP": "3",
    }
    settings = Settings.resolve({}, env=env)
    assert settings.data_dir == tmp_path / "from-env"
    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.engine == "sandbox"
    assert settings.log_level == "debug"
    assert settings.log_format == "json"
    assert settings.public_url == "https://wa.example.com"
    assert settings.backup_interval_minutes == 0
    assert settings.backup_keep == 3


def test_flags_override_environment(tmp_path: Path) -> None:
    env = {"WHATSDEX_PORT": "9001", "WHATSDEX_ENGINE": "neonize", "WHATSDEX_HOST": "0.0.0.0"}
    flags = {"port": "9002", "engine": "sandbox", "host": None, "data_dir": tmp_path / "flag"}
    settings = Settings.resolve(flags, env=env)
    assert settings.port == 9002
    assert settings.engine == "sandbox"
    assert settings.host == "0.0.0.0"  # a flag given as None means "not given"
    assert settings.data_dir == tmp_path / "flag"


def test_empty_environment_variable_means_unset() -> None:
    assert Settings.resolve({}, env={"WHATSDEX_PORT": ""}).port == 8000


def test_resolve_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSDEX_PORT", "8123")
    assert Settings.resolve().port == 8123


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("port", "70000", "between 0 and 65535"),
        ("port", "-1", "between 0 and 65535"),
        ("port", "abc", "whole number"),
        ("engine", "foo", "neonize, sandbox"),
        ("log_level", "loud", "debug, info, warning, error"),
        ("log_format", "xml", "text, json"),
        ("backup_interval_minutes", "-5", "0 or more"),
        ("backup_keep", "0", "1 or more"),
        ("public_url", "wa.example.com", "http:// or https://"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "env"])
def test_invalid_values_name_their_source(
    name: str, value: str, complaint: str, source: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        if source == "flag":
            Settings.resolve({name: value}, env={})
        else:
            Settings.resolve({}, env={f"WHATSDEX_{name.upper()}": value})
    origin = f"--{name.replace('_', '-')}" if source == "flag" else f"WHATSDEX_{name.upper()}"
    assert caught.value.message.startswith(f"{origin}: ")
    assert complaint in caught.value.message
    assert "\n" not in caught.value.message


def test_unknown_flag() -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*colour"):
        Settings.resolve({"colour": "red"}, env={})


def test_every_setting_has_a_description() -> None:
    assert {f.name for f in dataclasses.fields(Settings)} <= set(DESCRIPTIONS)


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_data_dir_default_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delattr(sys, "frozen", raising=False)
    assert default_data_dir() == tmp_path / "whatsdex-data"


def test_data_dir_default_is_next_to_the_frozen_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "opt" / "whatsdex"
    exe.parent.mkdir()
    exe.touch()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(exe))
    assert default_data_dir() == tmp_path / "opt" / "whatsdex-data"
    assert Settings.resolve({}, env={}).data_dir == tmp_path / "opt" / "whatsdex-data"


@pytest.mark.parametrize(
    ("host", "port", "public_url", "expected"),
    [
        ("127.0.0.1", 8000, None, "http://127.0.0.1:8000"),
        ("0.0.0.0", 8080, None, "http://127.0.0.1:8080"),
        ("::", 8080, None, "http://127.0.0.1:8080"),
        ("::1", 8080, None, "http://[::1]:8080"),
        ("fd00::5", 9000, None, "http://[fd00::5]:9000"),
        ("wa.internal", 80, None, "http://wa.internal:80"),
        ("0.0.0.0", 8080, "https://wa.example.com/", "https://wa.example.com"),
    ],
)
def test_base_url(
    tmp_path: Path, host: str, port: int, public_url: str | None, expected: str
) -> None:
    settings = Settings(data_dir=tmp_path, host=host, port=port, public_url=public_url)
    assert settings.base_url == expected
