"""The one exception handler: JSON `{status, message, detail}` for the API, a page for the UI."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from whatsdex.errors import LimitReached, WhatsdexError

log = logging.getLogger(__name__)

_API_PREFIXES = ("/api/", "/healthz", "/readyz", "/metrics")


def wants_json(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    return path.startswith(_API_PREFIXES) or path == "/api"


def _describe(exc: Exception) -> tuple[int, str, Any, dict[str, str]]:
    """Status, message, detail and extra headers for any exception, without leaking internals."""
    headers: dict[str, str] = {}
    if isinstance(exc, WhatsdexError):
        if isinstance(exc, LimitReached) and exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return exc.status_code, exc.message, exc.detail, headers
    if isinstance(exc, ValidationException):
        return 400, "The request is not valid", exc.extra or exc.detail, headers
    if isinstance(exc, HTTPException):
        headers.update(exc.headers or {})
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else "Request failed"
        return exc.status_code, message, exc.extra or None, headers
    return HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error", None, headers


def _login_redirect(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """A signed-out visitor of a dashboard page goes to the login page, and comes back after."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = "/login?next=" + quote(here, safe="/")
    if request.headers.get("hx-request") == "true":
        # htmx follows HX-Redirect with a full page load (an XHR would follow a 303 silently).
        return Response(content=None, status_code=401, headers={"HX-Redirect": target})
    if request.method in ("GET", "HEAD"):
        return Redirect(target, status_code=303)
    return None


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    status, message, detail, headers = _describe(exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, message, exc_info=exc)
    if wants_json(request):
        return Response(
            {"status": status, "message": message, "detail": detail},
            status_code=status,
            media_type=MediaType.JSON,
            headers=headers,
        )
    if status == 401 and request.scope.get("user") is None:
        redirect = _login_redirect(request)
        if redirect is not None:
            return redirect
    if request.headers.get("hx-request") == "true":
        # HTMX swaps only 2xx by default: answer with a toast the page shows in its corner.
        headers.update({"HX-Retarget": "#toasts", "HX-Reswap": "beforeend"})
        return Template(
            template_name="_toast.html",
            context={"level": "error", "message": message},
            status_code=status,
            headers=headers,
        )
    return Template(
        template_name="error.html",
        context={"status": status, "message": message, "detail": detail},
        status_code=status,
        headers=headers,
    )
