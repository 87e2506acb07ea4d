"""What every command shares: the settings options, one-line errors, progress output."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from whatsdex.errors import WhatsdexError
from whatsdex.settings import DESCRIPTIONS, Settings

P = ParamSpec("P")
R = TypeVar("R")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help=DESCRIPTIONS["data_dir"] + " [env: WHATSDEX_DATA_DIR]",
                 show_default=False),
]


def settings_from(**flags: Any) -> Settings:
    """Settings from the given flags (None = not given) over the environment."""
    return Settings.resolve(flags)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a product error into one readable line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except WhatsdexError as exc:
            raise fail(exc.message) from None
        except PermissionError as exc:
            raise fail(f"permission denied: {exc.filename or exc}") from None
        except OSError as exc:
            raise fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


class Progress:
    """A single self-updating line on a terminal, plain lines otherwise (logs, CI)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, done * 100 // total)
        if pct == self._last or (not self.tty and pct % 25 and pct != 100):
            return
        self._last = pct
        line = f"{self.label}: {pct:3d}% ({_mb(done)} of {_mb(total)})"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if pct == 100 else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


def quiet_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
