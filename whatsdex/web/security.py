"""Security headers on every response: strict CSP (no inline script), no framing, no sniffing."""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

# Swagger UI sets style attributes; its page alone may use inline styles (never inline script).
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
DOCS_PATH = "/api/docs"

_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
    "cross-origin-opener-policy": "same-origin",
}


def is_https(scope: Scope) -> bool:
    """True when the client reached us over TLS (directly or through the configured proxy)."""
    return scope.get("scheme") == "https"


def security_headers(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        tls = is_https(scope)
        csp = DOCS_CSP if scope["path"] == DOCS_PATH else CSP

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in _HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                headers["content-security-policy"] = csp
                if tls:
                    headers["strict-transport-security"] = "max-age=63072000; includeSubDomains"
            await send(message)

        await app(scope, receive, add_headers)

    return wrapped
