"""Prometheus `/metrics`: process, HTTP requests by route, database size.

Each app gets its own `CollectorRegistry`, so tests can build many apps in one process.
"""

from __future__ import annotations

import time
from pathlib import Path

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from whatsdex import __version__

# Any other method (clients may send anything) is counted as "other": labels must stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The app's registry and the instruments the middleware and domain code update."""

    def __init__(self, db_path: Path) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "whatsdex_http_requests_total",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "whatsdex_http_request_duration_seconds",
            "HTTP request latency by method and route",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        db_size = Gauge(
            "whatsdex_database_size_bytes",
            "Size of whatsdex.db plus its write-ahead log",
            registry=self.registry,
        )
        db_size.set_function(lambda: _file_size(db_path) + _file_size(Path(f"{db_path}-wal")))
        info = Gauge("whatsdex_build_info", "Version of the running binary", ["version"],
                     registry=self.registry)
        info.labels(version=__version__).set(1)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware recording count and latency by route template (not raw path)."""

        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, capture)
            finally:
                route = scope.get("path_template") or "unmatched"
                method = scope["method"] if scope["method"] in _METHODS else "other"
                self.requests.labels(method, route, str(status)).inc()
                self.latency.labels(method, route).observe(time.perf_counter() - start)

        return record

    def handler(self) -> HTTPRouteHandler:
        registry = self.registry

        @get("/metrics", tags=["operations"], sync_to_thread=False, media_type=CONTENT_TYPE_LATEST)
        def metrics() -> Response[bytes]:
            """Prometheus text exposition format."""
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        return metrics


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
