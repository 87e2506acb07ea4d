"""Engine implementations, imported lazily: the sandbox never loads the WhatsApp library."""

from __future__ import annotations

import importlib

from whatsdex.sessions.engine import Engine

ENGINES = {
    "neonize": "whatsdex.sessions.engines.neonize:NeonizeEngine",
    "sandbox": "whatsdex.sessions.engines.sandbox:SandboxEngine",
}


def load_engine(name: str) -> type[Engine]:
    try:
        module_name, _, class_name = ENGINES[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose {' or '.join(ENGINES)}") from None
    engine: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return engine
