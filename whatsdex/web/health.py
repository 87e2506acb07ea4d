"""Liveness and readiness probes for systemd, load balancers and the smoke test."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from whatsdex import __version__
from whatsdex.services import Services
from whatsdex.store import migrations


@get("/healthz", include_in_schema=True, tags=["operations"], sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok", "version": __version__}


@get("/readyz", tags=["operations"])
async def readyz(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    """Ready when the data file is open and every migration this binary knows is applied."""
    checks: dict[str, Any] = {"store": "closed", "migrations": "unknown"}
    ready = False
    if services.store.is_open:
        checks["store"] = "open"
        rows = await services.store.fetchall(
            f"SELECT name FROM {migrations.MIGRATIONS_TABLE} WHERE migration_set = ?",
            (migrations.MIGRATION_SET,),
        )
        missing = set(migrations.known_names()) - {row[0] for row in rows}
        checks["migrations"] = "current" if not missing else f"{len(missing)} pending"
        ready = not missing
    return Response(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
    )
