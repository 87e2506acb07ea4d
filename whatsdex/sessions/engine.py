"""The engine interface inside an engine host: neonize (real WhatsApp) and sandbox implement it.

An engine owns the WhatsApp clients of one host process. It never touches `whatsdex.db`: it
reports through its `EngineSink`, and for inbound messages and receipts it waits until the
supervisor confirms they are committed before letting the library acknowledge them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from whatsdex.sessions import protocol


class EngineError(Exception):
    """A command failed; `retryable` says whether trying again later may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class EngineSink(Protocol):
    """How an engine talks back to its host (and through it to the supervisor)."""

    def emit(self, event: protocol.Base) -> None:
        """Report a state or log event; returns at once."""

    async def emit_committed(self, event: protocol.InboundMessage | protocol.ReceiptEvent) -> None:
        """Report a message or receipt and wait until the supervisor committed it."""


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """What the host was started with."""

    data_dir: Path
    # Sandbox: the durable record of what the simulated network delivered.
    sandbox_record: Path | None = None
    # Seconds between lifecycle calls (connect, stop, logout) in one host.
    lifecycle_spacing: float = 0.2


class Engine(abc.ABC):
    """One implementation per WhatsApp backend; every method is called on the host's loop."""

    name: str

    def __init__(self, sink: EngineSink, options: EngineOptions) -> None:
        self.sink = sink
        self.options = options

    @abc.abstractmethod
    async def start(self, session: str, store_path: Path) -> None:
        """Begin connecting (QR codes follow for an unlinked store); outcomes arrive as events."""

    @abc.abstractmethod
    async def pair_phone(self, session: str, phone: str) -> str:
        """A pairing code (e.g. `ABCD-EFGH`) to type on the phone instead of scanning."""

    @abc.abstractmethod
    async def send(self, command: protocol.Send) -> dict[str, Any]:
        """Send one message; returns `{"wa_id": str, "timestamp_ms": int}`."""

    @abc.abstractmethod
    async def mark_read(self, command: protocol.MarkRead) -> None:
        """Send read receipts for these messages."""

    @abc.abstractmethod
    async def logout(self, session: str) -> None:
        """Unlink the device; the client is stopped afterwards (a `Stopped` event follows)."""

    @abc.abstractmethod
    async def stop(self, session: str) -> None:
        """Disconnect and free the client; its store keeps the credentials."""

    async def sandbox(self, command: protocol.SandboxControl) -> dict[str, Any]:
        raise EngineError("this is the real WhatsApp engine: sandbox controls are not available")

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Stop every client (the host is exiting)."""
