"""One running app per test module (sandbox engine, no send pacing) for the messages API and
the inbox pages, with the identities of `tests/web_sessions` (owner, member, other, operator).

Tenant A has one linked number (`env.number`, phone 15551110001); tenant B has its own
(`env.other_number`). The sandbox contacts send delivered and read receipts within a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.middleware.csrf import generate_csrf_token
from litestar.testing import TestClient
from web_sessions.conftest import BASE_URL, PUBLIC_URL, Env, SseStream, _populate

from whatsdex.app import create_app
from whatsdex.services import Services
from whatsdex.sessions import sandbox_network
from whatsdex.settings import Settings
from whatsdex.web.auth import SESSION_COOKIE

WAIT = 10.0
PROGRESS = ["queued", "sending", "sent", "delivered", "read", "played"]
NUMBER_PHONE = "15551110001"
OTHER_PHONE = "15552220001"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00"
       b"\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N"
       b"\x00\x00\x00\x00IEND\xaeB`\x82")
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

__all__ = ["PDF", "PNG", "Inbox", "SseStream", "wait_until"]


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class Inbox(Env):
    """The web_sessions environment plus a linked number per tenant and message helpers."""

    number: str = ""
    other_number: str = ""

    def send(self, who: str = "member", session_id: str | None = None, *,
             headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        return self.api(who, "POST", f"/api/v1/sessions/{session_id or self.number}/messages",
                        json=body, headers=headers)

    def message(self, message_id: str, who: str = "member") -> dict[str, Any]:
        found = self.api(who, "GET", f"/api/v1/messages/{message_id}")
        assert found.status_code == 200, found.text
        body: dict[str, Any] = found.json()
        return body

    def wait_message(self, message_id: str, status: str) -> dict[str, Any]:
        """Until the message is `status` or further along (sent → delivered → read)."""
        wanted = set(PROGRESS[PROGRESS.index(status):]) if status in PROGRESS else {status}
        found: dict[str, Any] = wait_until(
            lambda: (m := self.message(message_id))["status"] in wanted and m,
            f"message {message_id} to be {status}")
        return found

    def inbound(self, sender: str, text: str, *, count: int = 1, session_id: str | None = None,
                who: str = "owner") -> list[str]:
        """A contact sends the number `text`; answers once the messages are committed."""
        done = self.api(who, "POST",
                        f"/api/v1/sandbox/sessions/{session_id or self.number}/inbound",
                        json={"from": sender, "text": text, "count": count})
        assert done.status_code == 200, done.text
        return list(done.json()["result"]["wa_ids"])

    def chat_of(self, phone: str, who: str = "member") -> dict[str, Any]:
        chats = self.api(who, "GET", "/api/v1/chats", headers=None).json()["items"]
        return next(c for c in chats if c["jid"] == f"{phone}@s.whatsapp.net")

    def deliveries(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """What the simulated contacts received, from the sandbox network's own record."""
        record = self.services.settings.data_dir / "sandbox-network.db"
        return sandbox_network.deliveries(record, session_id or self.number)

    def reads(self, session_id: str | None = None) -> list[dict[str, Any]]:
        record = self.services.settings.data_dir / "sandbox-network.db"
        return sandbox_network.reads(record, session_id or self.number)

    def post_form(self, who: str, path: str, data: dict[str, str],
                  files: dict[str, tuple[str, bytes, str]] | None = None) -> httpx.Response:
        """A multipart form post as htmx sends it (session and CSRF cookies, CSRF header)."""
        self.client.cookies.clear()
        return self.client.post(path, data=data, files=files or {"file": ("", b"", "")},
                                headers={"Cookie": f"__Host-csrftoken={self.csrf}; "
                                                   f"{SESSION_COOKIE}={self.cookies[who]}",
                                         "X-CSRFToken": self.csrf, "HX-Request": "true"},
                                follow_redirects=False)

    def fetchval(self, sql: str, *params: Any) -> Any:
        return self.run(self.services.store.fetchval, sql, params)


def build_inbox(data_dir: Path) -> Iterator[Inbox]:
    settings = Settings(data_dir=data_dir, engine="sandbox", backup_interval_minutes=0,
                        public_url=PUBLIC_URL, send_min_gap_seconds=0.0, send_jitter_seconds=0.0)
    services = Services.build(settings)
    app = create_app(settings, services)
    with TestClient(app, base_url=BASE_URL) as client:
        env = Inbox(client=client, services=services)
        env.csrf = generate_csrf_token(services.csrf_secret)
        env.run(_populate, env)
        env.number = env.linked(name="Front desk", phone="+" + NUMBER_PHONE)
        env.other_number = env.create(who="other", name="Zenith desk")
        env.wait_status(env.other_number, "pairing", who="other")
        assert env.scan(env.other_number, "+" + OTHER_PHONE, who="other").status_code == 200
        env.wait_status(env.other_number, "connected", who="other")
        yield env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    yield from build_inbox(tmp_path_factory.mktemp("inbox") / "data")
