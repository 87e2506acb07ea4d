"""`create_app(settings)`: the whole product as one Litestar application."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.di import Provide
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from whatsdex import __version__
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.web import health
from whatsdex.web.errors import handle_exception
from whatsdex.web.metrics import Metrics
from whatsdex.web.openapi import openapi_config
from whatsdex.web.security import security_headers
from whatsdex.web.ui import home

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the app; the lifespan opens the data file and starts the background services."""
    services = services or Services.build(settings)
    metrics = Metrics(settings.db_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        log.info("WhatsDeX %s ready (engine: %s)", __version__, settings.engine)
        try:
            yield
        finally:
            await services.stop()
            log.info("WhatsDeX stopped")

    def set_globals(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals.update(version=__version__, engine=settings.engine)

    return Litestar(
        route_handlers=[
            health.healthz,
            health.readyz,
            metrics.handler(),
            home.home,
            create_static_files_router(
                path="/static", directories=[WEB_DIR / "static"], include_in_schema=False
            ),
        ],
        dependencies={"services": Provide(lambda: services, sync_to_thread=False)},
        lifespan=[lifespan],
        middleware=[metrics.middleware, security_headers],
        exception_handlers={Exception: handle_exception},
        template_config=TemplateConfig(
            directory=WEB_DIR / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=set_globals,
        ),
        openapi_config=openapi_config(),
        state=State({"services": services, "metrics": metrics}),
        logging_config=None,  # logging is configured once by the CLI (whatsdex.logs)
        debug=False,
    )

