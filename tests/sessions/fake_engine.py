"""A tiny engine for the transport tests: echoes sends, fakes a link and misbehaves on request.

Loaded by the engine host only through `--engine test` with
`WHATSDEX_TEST_ENGINE=fake_engine:FakeEngine` (this directory on PYTHONPATH).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from whatsdex.sessions import protocol
from whatsdex.sessions.engine import Engine, EngineError, EngineOptions, EngineSink

log = logging.getLogger("fake_engine")

JID = "15550001111@s.whatsapp.net"


class FakeEngine(Engine):
    name = "test"

    def __init__(self, sink: EngineSink, options: EngineOptions) -> None:
        super().__init__(sink, options)
        self.committed: list[str] = []  # wa_ids whose emit_committed has returned
        self.fail_sends = False

    async def start(self, session: str, store_path: Path) -> None:
        self.sink.emit(protocol.Qr(session=session, code=f"qr-{session}", expires_in=60.0))
        self.sink.emit(protocol.Connected(session=session, jid=JID))

    async def pair_phone(self, session: str, phone: str) -> str:
        return f"{phone[-4:]}-CODE"

    async def send(self, command: protocol.Send) -> dict[str, Any]:
        text = command.text
        if self.fail_sends:
            raise EngineError("sending is failing", retryable=True)
        if text == "boom":
            raise ValueError("boom")
        if text.startswith("sleep:"):
            await asyncio.sleep(float(text.removeprefix("sleep:")))
        if text.startswith("log:"):
            log.warning(text.removeprefix("log:"), extra={"session": command.session})
        return {"wa_id": f"wa-{command.outbox_id}", "timestamp_ms": int(time.time() * 1000)}

    async def mark_read(self, command: protocol.MarkRead) -> None:
        return None

    async def logout(self, session: str) -> None:
        self.sink.emit(protocol.LoggedOut(session=session))
        self.sink.emit(protocol.Stopped(session=session, reason="logged out"))

    async def stop(self, session: str) -> None:
        self.sink.emit(protocol.Stopped(session=session, reason="stopped"))

    async def sandbox(self, command: protocol.SandboxControl) -> dict[str, Any]:
        if command.action == "inbound":
            for i in range(command.count):
                wa_id = f"{command.text}-{i}"
                await self.sink.emit_committed(_message(command.session, wa_id))
                self.committed.append(wa_id)
        elif command.action == "receipts":
            # From a plain thread, as the WhatsApp library does.
            await asyncio.to_thread(self._burst, command.session, command.count)
        elif command.action == "fail_sends":
            self.fail_sends = command.count > 0
        elif command.action == "crash_host" and command.text == "garbage":
            fd = int(sys.argv[sys.argv.index("--fd") + 1])
            os.write(fd, b"\x00\x00\x00\x04junk")  # a well-framed body that is not msgpack
            await asyncio.sleep(30)
        elif command.action == "crash_host":
            os._exit(command.count)
        return {"committed": list(self.committed)}

    def _burst(self, session: str, count: int) -> None:
        assert threading.current_thread() is not threading.main_thread()
        person = protocol.Person(jid=JID)
        for i in range(count):
            self.sink.emit(protocol.ReceiptEvent(
                session=session, chat=person, sender=person, message_ids=[str(i)],
                status="delivered", timestamp_ms=i,
            ))

    async def shutdown(self) -> None:
        # Proof for the tests that the host stopped its engine before exiting.
        (self.options.data_dir / f"shutdown-{os.getpid()}").write_text("clean")


def _message(session: str, wa_id: str) -> protocol.InboundMessage:
    person = protocol.Person(jid=JID, phone="15550001111")
    return protocol.InboundMessage(
        session=session, wa_id=wa_id, chat=person, sender=person,
        timestamp_ms=int(time.time() * 1000), kind="text", text=f"hello {wa_id}",
    )
