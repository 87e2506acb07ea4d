"""Frozen settings resolved as CLI flags > `WHATSDEX_*` environment > defaults.

Nothing here is read at import time: `Settings.resolve()` is called by the CLI (or a test) and
the result is passed to `create_app`, so one process can build as many apps as it likes.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from whatsdex.errors import ConfigError

Engine = Literal["neonize", "sandbox"]
LogFormat = Literal["text", "json"]

ENV_PREFIX = "WHATSDEX_"
DB_FILENAME = "whatsdex.db"
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_data_dir() -> Path:
    """`./whatsdex-data`, or next to the executable when running as the frozen binary."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve().parent / "whatsdex-data"
    return Path.cwd() / "whatsdex-data"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the process needs to know about its environment, validated once."""

    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    engine: Engine = "neonize"
    log_level: str = "info"
    log_format: LogFormat = "text"
    public_url: str | None = None
    backup_interval_minutes: int = 30
    backup_keep: int = 48
    secret_key_file: Path | None = None
    # The master key itself, when given in the environment; never a CLI flag (argv is public).
    secret_key: str | None = field(default=None, repr=False)
    session_idle_minutes: int = 60
    session_max_hours: int = 12
    engine_hosts: int = 1
    send_min_gap_seconds: float = 1.0
    send_jitter_seconds: float = 1.0
    number_daily_cap: int = 1000
    allow_private_webhooks: bool = False
    allow_private_urls: bool = False
    media_cache_mb: int = 1024

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILENAME

    @property
    def backups_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def key_file(self) -> Path:
        """The master key file: configured, or `secret.key` in the data dir."""
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "whatsdex.lock"

    @property
    def base_url(self) -> str:
        """Where users reach the dashboard: the configured public URL, else the bind address."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @classmethod
    def resolve(
        cls, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Merge flags (None = not given) over `WHATSDEX_*` variables over defaults."""
        flags = flags or {}
        env = os.environ if env is None else env
        unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env_name = ENV_PREFIX + f.name.upper()
            if flags.get(f.name) is not None:
                raw, source = flags[f.name], f"--{f.name.replace('_', '-')}"
            elif env.get(env_name, "") != "":
                raw, source = env[env_name], env_name
            else:
                continue
            try:
                values[f.name] = _PARSERS[f.name](raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{source}: {exc}") from None
        return cls(**values)


def _path(raw: Any) -> Path:
    return Path(raw).expanduser().resolve()


def _int(raw: Any) -> int:
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None


def _port(raw: Any) -> int:
    port = _int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port}")
    return port


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return parse


def _non_negative(raw: Any) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _positive(raw: Any) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError(f"must be 1 or more, got {value}")
    return value


def _seconds(raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"must be between 0 and 3600 seconds, got {value}")
    return value


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _url(raw: Any) -> str:
    value = str(raw).strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {raw!r}")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "data_dir": _path,
    "host": lambda raw: str(raw).strip(),
    "port": _port,
    "engine": _choice("neonize", "sandbox"),
    "log_level": _choice(*LOG_LEVELS),
    "log_format": _choice("text", "json"),
    "public_url": _url,
    "backup_interval_minutes": _non_negative,
    "backup_keep": _positive,
    "secret_key_file": _path,
    "secret_key": lambda raw: str(raw).strip(),
    "session_idle_minutes": _positive,
    "session_max_hours": _positive,
    "engine_hosts": _positive,
    "send_min_gap_seconds": _seconds,
    "send_jitter_seconds": _seconds,
    "number_daily_cap": _positive,
    "allow_private_webhooks": _bool,
    "allow_private_urls": _bool,
    "media_cache_mb": _positive,
}

# Shown by `--help` and checked against the README by a test, so no setting goes undocumented.
DESCRIPTIONS: dict[str, str] = {
    "data_dir": "Directory holding whatsdex.db, the key file and backups/.",
    "host": "Address to listen on.",
    "port": "TCP port to listen on.",
    "engine": "WhatsApp engine: neonize (real) or sandbox (simulated network).",
    "log_level": "debug, info, warning or error.",
    "log_format": "text (human) or json (one object per line).",
    "public_url": "URL users reach the dashboard at (behind a reverse proxy).",
    "backup_interval_minutes": "Minutes between scheduled backups; 0 turns them off.",
    "backup_keep": "How many scheduled backups to keep.",
    "secret_key_file": (
        "Master key file (created 0600 on first run); default <data-dir>/secret.key."
    ),
    "secret_key": "The master key itself (base64, 32 bytes), instead of the key file.",
    "session_idle_minutes": "Dashboard sessions end after this many idle minutes.",
    "session_max_hours": "Dashboard sessions end this many hours after login, active or not.",
    "engine_hosts": "Engine host processes the numbers are spread over (crash isolation).",
    "send_min_gap_seconds": "Least time between two sends of one number.",
    "send_jitter_seconds": "Random extra time (0 to this) added to each gap between sends.",
    "number_daily_cap": "Most messages one number sends per UTC day; the rest wait.",
    "allow_private_webhooks": "Let webhooks target loopback and private network addresses.",
    "allow_private_urls": "Let media URLs point at loopback and private network addresses.",
    "media_cache_mb": "Most megabytes of downloaded received media kept (least recent go first).",
}
