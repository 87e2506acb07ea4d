"""`whatsdex sandbox scan` against a real server listening on a port."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from whatsdex.app import create_app
from whatsdex.cli.sandbox import sandbox_app
from whatsdex.identity import apikeys, tenants
from whatsdex.identity.principal import CLI
from whatsdex.settings import Settings
from whatsdex.store import Store


@dataclass
class Server:
    url: str
    port: int
    key: str
    member_key: str


async def _tenant_with_keys(settings: Settings) -> tuple[str, str]:
    store = Store(settings.db_path)
    store.open()
    try:
        tenant = await tenants.create_tenant(store, CLI, name="CLI tenant", plan_id="premium",
                                             now=time.time())
        _, owner = await apikeys.create_key(store, CLI, tenant.id, name="cli", role="owner",
                                            now=time.time())
        _, member = await apikeys.create_key(store, CLI, tenant.id, name="ro", role="member",
                                             now=time.time())
        return owner, member
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(data_dir=tmp_path_factory.mktemp("cli-sandbox") / "data", port=port,
                        engine="sandbox", backup_interval_minutes=0)
    owner, member = asyncio.run(_tenant_with_keys(settings))
    config = uvicorn.Config(create_app(settings), lifespan="on", log_config=None,
                            access_log=False, timeout_graceful_shutdown=5)
    app_server = uvicorn.Server(config)
    thread = threading.Thread(target=app_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield Server(url=url, port=port, key=owner, member_key=member)
    finally:
        app_server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def status_of(server: Server, session_id: str) -> str:
    answer = httpx.get(f"{server.url}/api/v1/sessions/{session_id}",
                       headers={"Authorization": f"Bearer {server.key}"}, timeout=5)
    return str(answer.json()["status"])


def wait_for(server: Server, session_id: str, status: str) -> None:
    deadline = time.monotonic() + 10
    while status_of(server, session_id) != status:
        assert time.monotonic() < deadline, f"{session_id} never became {status}"
        time.sleep(0.05)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(sandbox_app, list(args), env=env)
    return result.exit_code, result.output


def test_scan_links_a_number_on_the_running_server(server: Server) -> None:
    created = httpx.post(f"{server.url}/api/v1/sessions", json={"name": "Via CLI"},
                         headers={"Authorization": f"Bearer {server.key}"}, timeout=10)
    assert created.status_code == 201
    session_id = created.json()["id"]
    wait_for(server, session_id, "pairing")

    # The address comes from the settings (here WHATSDEX_PORT), the key from the environment.
    code, output = run("scan", session_id, "--phone", "+15557770001",
                       env={"WHATSDEX_PORT": str(server.port), "WHATSDEX_API_KEY": server.key})
    assert code == 0, output
    assert f"{session_id}: scanned by +15557770001; linked as 15557770001@s.whatsapp.net" in output
    wait_for(server, session_id, "connected")

    code, output = run("scan", session_id, "--phone", "+15557770001", "--url", server.url,
                       "--api-key", server.key)
    assert code == 2
    assert "not waiting for a scan" in output and "(HTTP 409)" in output


@pytest.mark.parametrize(("args", "wanted"), [
    ((), "an owner API key is needed"),
    (("--api-key", "wdx_nope"), "Invalid API key (HTTP 401)"),
    (("--api-key", "MEMBER"), "needs the owner role (HTTP 403)"),
    (("--api-key", "KEY", "--url", "URL/elsewhere"), "has no sandbox API"),
    (("--api-key", "KEY", "--url", "http://127.0.0.1:9"), "cannot reach WhatsDeX"),
])
def test_scan_explains_what_went_wrong(server: Server, args: tuple[str, ...], wanted: str
                                       ) -> None:
    replaced = [a.replace("MEMBER", server.member_key).replace("KEY", server.key)
                .replace("URL", server.url) for a in args]
    if "--url" not in replaced:
        replaced += ["--url", server.url]
    code, output = run("scan", "ses_unknown", "--phone", "+15557770002", *replaced)
    assert code == 2, output
    assert wanted in output
    assert "Traceback" not in output


def test_unknown_number_is_named(server: Server) -> None:
    code, output = run("scan", "ses_unknown", "--phone", "+15557770002", "--url", server.url,
                       "--api-key", server.key)
    assert code == 2 and "Session not found (HTTP 404)" in output
