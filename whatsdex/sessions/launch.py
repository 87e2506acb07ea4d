"""Start child processes from the same program, whether installed as a package or frozen."""

from __future__ import annotations

import os
import subprocess
import sys

# whatsmeow adds a "bot" node to 1:1 messages (an "AI" badge) unless this is set; Go reads the
# environment only at exec, so it must be in the child's environment from the start.
ENGINE_ENV = {"NEONIZE_BOT_TAG": "off"}


def self_command(*args: str) -> list[str]:
    """argv that runs `whatsdex <args>` with this very program."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "whatsdex", *args]


def engine_environment() -> dict[str, str]:
    return {**os.environ, **ENGINE_ENV}


def check_engine_library(timeout: float = 60.0) -> tuple[bool, str]:
    """Load neonize's Go library in a child process (it may abort a process it runs in)."""
    try:
        done = subprocess.run(
            self_command("engine-check"),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=engine_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"loading the engine library took more than {timeout:.0f}s"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return False, f"the engine library did not load: {tail[0]}"
    return True, done.stdout.strip()


def engine_library_report() -> str:
    """Run inside the child: import neonize (loads the .so) and describe what was loaded."""
    import importlib.metadata
    import importlib.util
    import logging
    import platform
    from pathlib import Path

    spec = importlib.util.find_spec("neonize")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the neonize package is not installed")
    # Without its library neonize would try to download one: refuse before importing it.
    suffix = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    library_file = Path(spec.submodule_search_locations[0]) / f"neonize-linux-{suffix}.so"
    if not library_file.exists():
        raise RuntimeError(f"missing {library_file.name} next to the neonize package")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from neonize import _binder  # loads the Go shared library

    # Importing neonize calls logging.basicConfig(INFO): put the caller's logging back.
    root.handlers[:] = handlers
    root.setLevel(level)
    library = getattr(_binder, "gocode", None)
    if library is None:
        raise RuntimeError("neonize loaded without its Go library")
    go_version = library.GetVersion().decode()
    return f"neonize {importlib.metadata.version('neonize')} (Go library {go_version} loaded)"
