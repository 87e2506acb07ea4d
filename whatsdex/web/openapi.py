"""OpenAPI docs at `/api/docs` from vendored Swagger UI: no CDN, no inline script (strict CSP)."""

from __future__ import annotations

from typing import Any

from litestar import MediaType, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from whatsdex import __version__

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>WhatsDeX API</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-spec-url="/api/openapi.json"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/js/api-docs.js"></script>
</body>
</html>
"""


class LocalSwaggerPlugin(OpenAPIRenderPlugin):
    """Swagger UI served from our own static files."""

    def __init__(self, path: str = "/docs") -> None:
        super().__init__(path=path, media_type=MediaType.HTML)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return _PAGE.encode()


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="WhatsDeX API",
        version=__version__,
        description=(
            "Multi-tenant WhatsApp gateway. Authenticate with `Authorization: Bearer <api key>`. "
            'Errors are JSON `{"status", "message", "detail"}`.'
        ),
        path="/api",
        render_plugins=[JsonRenderPlugin(path="/openapi.json"), LocalSwaggerPlugin()],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http", scheme="bearer", description="A tenant or operator API key"
                )
            }
        ),
    )
