"""`whatsdex serve`: one process with the dashboard, the API and every background service."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import Iterator
from typing import Annotated

import typer
import uvicorn

from whatsdex import logs
from whatsdex.app import create_app
from whatsdex.cli.common import DataDir, fail, friendly, settings_from
from whatsdex.services import Services
from whatsdex.settings import DESCRIPTIONS, Settings
from whatsdex.store import migrations
from whatsdex.store.lock import DataDirLock


def _opt(name: str, flag: str) -> typer.models.OptionInfo:
    env = "WHATSDEX_" + name.upper()
    option: typer.models.OptionInfo = typer.Option(
        flag, help=f"{DESCRIPTIONS[name]} [env: {env}]", show_default=False
    )
    return option


class _Server(uvicorn.Server):
    """Uvicorn that announces the dashboard URL once it really listens."""

    def __init__(
        self, config: uvicorn.Config, settings: Settings, port: int, services: Services
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self.port = port
        self.services = services

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # With --port 0 the kernel chose the port: announce the real one.
            url = dataclasses.replace(self.settings, port=self.port).base_url
            typer.echo(f"WhatsDeX is ready: {url}/", err=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Uvicorn waits for open connections before the app's own shutdown runs: end the
        # dashboard's event streams first, or every open page delays the stop by seconds.
        self.services.bus.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Uvicorn re-raises SIGTERM/SIGINT after a graceful stop; a clean stop should exit 0."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def _bind(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a busy port is one clear error and nothing is opened."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@friendly
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, _opt("host", "--host")] = None,
    # Numbers are taken as text so that Settings reports a bad value in one line, like env vars.
    port: Annotated[str | None, _opt("port", "--port")] = None,
    engine: Annotated[str | None, _opt("engine", "--engine")] = None,
    log_level: Annotated[str | None, _opt("log_level", "--log-level")] = None,
    log_format: Annotated[str | None, _opt("log_format", "--log-format")] = None,
    public_url: Annotated[str | None, _opt("public_url", "--public-url")] = None,
    backup_interval_minutes: Annotated[
        str | None, _opt("backup_interval_minutes", "--backup-interval-minutes")
    ] = None,
    backup_keep: Annotated[str | None, _opt("backup_keep", "--backup-keep")] = None,
    engine_hosts: Annotated[str | None, _opt("engine_hosts", "--engine-hosts")] = None,
    secret_key_file: Annotated[str | None, _opt("secret_key_file", "--secret-key-file")] = None,
    session_idle_minutes: Annotated[
        str | None, _opt("session_idle_minutes", "--session-idle-minutes")
    ] = None,
    session_max_hours: Annotated[
        str | None, _opt("session_max_hours", "--session-max-hours")
    ] = None,
    send_min_gap_seconds: Annotated[
        str | None, _opt("send_min_gap_seconds", "--send-min-gap-seconds")
    ] = None,
    send_jitter_seconds: Annotated[
        str | None, _opt("send_jitter_seconds", "--send-jitter-seconds")
    ] = None,
    number_daily_cap: Annotated[str | None, _opt("number_daily_cap", "--number-daily-cap")] = None,
    allow_private_webhooks: Annotated[
        bool | None, _opt("allow_private_webhooks", "--allow-private-webhooks")
    ] = None,
    allow_private_urls: Annotated[
        bool | None, _opt("allow_private_urls", "--allow-private-urls")
    ] = None,
    media_cache_mb: Annotated[str | None, _opt("media_cache_mb", "--media-cache-mb")] = None,
) -> None:
    """Run WhatsDeX: dashboard, API, sessions, campaigns and webhooks in one process."""
    settings = settings_from(
        data_dir=data_dir,
        host=host,
        port=port,
        engine=engine,
        log_level=log_level,
        log_format=log_format,
        public_url=public_url,
        backup_interval_minutes=backup_interval_minutes,
        backup_keep=backup_keep,
        engine_hosts=engine_hosts,
        secret_key_file=secret_key_file,
        session_idle_minutes=session_idle_minutes,
        session_max_hours=session_max_hours,
        send_min_gap_seconds=send_min_gap_seconds,
        send_jitter_seconds=send_jitter_seconds,
        number_daily_cap=number_daily_cap,
        allow_private_webhooks=allow_private_webhooks,
        allow_private_urls=allow_private_urls,
        media_cache_mb=media_cache_mb,
    )
    logs.configure(settings.log_level, settings.log_format)
    lock = DataDirLock(settings.lock_path)
    lock.acquire("serve")
    try:
        migrations.check_file_not_newer(settings.db_path)
        sock = _bind(settings.host, settings.port)
        bound_port: int = sock.getsockname()[1]
        services = Services.build(settings)
        app = create_app(settings, services)
        config = uvicorn.Config(
            app,
            log_config=None,
            lifespan="on",
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        server = _Server(config, settings, bound_port, services)
        server.run(sockets=[sock])
        if not server.started:
            raise fail("WhatsDeX could not start: see the log above", 1)
    finally:
        lock.release()
