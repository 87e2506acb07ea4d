"""`create_app(settings)`: the whole product as one Litestar application."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from whatsdex import __version__
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.web import health
from whatsdex.web.api import admin as api_admin
from whatsdex.web.api import campaigns as api_campaigns
from whatsdex.web.api import contacts as api_contacts
from whatsdex.web.api import events as api_events
from whatsdex.web.api import messages as api_messages
from whatsdex.web.api import sandbox as api_sandbox
from whatsdex.web.api import sessions as api_sessions
from whatsdex.web.api import templates as api_templates
from whatsdex.web.api import webhooks as api_webhooks
from whatsdex.web.api import workspace as api_workspace
from whatsdex.web.auth import identity_middleware
from whatsdex.web.errors import handle_exception
from whatsdex.web.metrics import Metrics
from whatsdex.web.openapi import openapi_config
from whatsdex.web.security import security_headers
from whatsdex.web.ui import admin as ui_admin
from whatsdex.web.ui import auth as ui_auth
from whatsdex.web.ui import campaigns as ui_campaigns
from whatsdex.web.ui import client_link as ui_client_link
from whatsdex.web.ui import contacts as ui_contacts
from whatsdex.web.ui import home
from whatsdex.web.ui import inbox as ui_inbox
from whatsdex.web.ui import numbers as ui_numbers
from whatsdex.web.ui import templates as ui_templates
from whatsdex.web.ui import webhooks as ui_webhooks
from whatsdex.web.ui import workspace as ui_workspace

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the app; the lifespan opens the data file and starts the background services."""
    services = services or Services.build(settings)
    metrics = Metrics(settings.db_path)
    csrf_config = CSRFConfig(
        secret=services.csrf_secret,
        cookie_name="__Host-csrftoken",
        cookie_secure=True,
        cookie_httponly=True,
        cookie_samesite="lax",
        # The API authenticates with bearer keys, never cookies: nothing to forge there.
        exclude=["/api/"],
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await services.start()
        # Litestar reads the secret per request; it is known only once the master key is open.
        csrf_config.secret = services.csrf_secret
        log.info("WhatsDeX %s ready (engine: %s)", __version__, settings.engine)
        try:
            yield
        finally:
            await services.stop()
            log.info("WhatsDeX stopped")

    def set_globals(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals.update(version=__version__, engine=settings.engine)

    app = Litestar(
        route_handlers=[
            health.healthz,
            health.readyz,
            metrics.handler(),
            home.home,
            *ui_auth.ROUTES,
            *ui_admin.ROUTES,
            *ui_workspace.ROUTES,
            *api_admin.ROUTES,
            *api_workspace.ROUTES,
            *ui_numbers.ROUTES,
            *ui_client_link.ROUTES,
            *api_sessions.ROUTES,
            *api_events.ROUTES,
            *api_sandbox.routes_for(settings),
            *ui_templates.ROUTES,
            *api_templates.ROUTES,
            *ui_contacts.ROUTES,
            *api_contacts.ROUTES,
            *ui_inbox.ROUTES,
            *api_messages.ROUTES,
            *ui_webhooks.ROUTES,
            *api_webhooks.ROUTES,
            *ui_campaigns.ROUTES,
            *api_campaigns.ROUTES,
            create_static_files_router(
                path="/static", directories=[WEB_DIR / "static"], include_in_schema=False
            ),
        ],
        dependencies={"services": Provide(lambda: services, sync_to_thread=False)},
        lifespan=[lifespan],
        middleware=[identity_middleware(services)],
        csrf_config=csrf_config,
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
    # Litestar runs `middleware=` only for matched routes; wrapping the outermost handler puts
    # the headers and the request count on 404/405 answers too (and on routes registered later).
    app.asgi_handler = metrics.middleware(security_headers(app.asgi_handler))
    return app

