"""The dashboard's landing page."""

from __future__ import annotations

from litestar import get
from litestar.response import Template

from whatsdex import backups
from whatsdex.services import Services


@get("/", include_in_schema=False)
async def home(services: Services) -> Template:
    latest = backups.latest_backup(services.settings)
    return Template(
        template_name="home.html",
        context={
            "ready": services.store.is_open,
            "last_backup": latest.created_at if latest else None,
        },
    )
