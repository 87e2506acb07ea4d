"""Who is asking: API keys on `/api`, the session cookie elsewhere; guards decide what they may do.

The middleware only resolves the identity (`request.user`, a Principal or None); guards on
routers and handlers enforce it. The tenant always comes from that identity, never from a header
or a path, so another tenant's ids simply are not found.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from whatsdex.errors import Forbidden, NotFound, Unauthorized
from whatsdex.identity import apikeys, logins
from whatsdex.identity.principal import Principal, Role
from whatsdex.services import Services

SESSION_COOKIE = "__Host-whatsdex"


def identity_middleware(services: Services) -> Any:
    """ASGI middleware factory resolving `scope["user"]` and `scope["auth"]` for each request."""

    def factory(app: ASGIApp) -> ASGIApp:
        async def resolve(scope: Scope, receive: Receive, send: Send) -> None:
            scope["user"] = None
            scope["auth"] = None
            if scope["type"] in ("http", "websocket"):
                await _resolve(services, scope)
            await app(scope, receive, send)

        return resolve

    return factory


async def _resolve(services: Services, scope: Scope) -> None:
    path: str = scope["path"]
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    now = services.clock()
    if path.startswith("/api/"):
        authorization = headers.get("authorization", "")
        if authorization:
            scheme, _, secret = authorization.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthorized("Use the header `Authorization: Bearer <api key>`")
            scope["user"] = await apikeys.authenticate(services.store, secret.strip(), now=now)
        return
    token = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
    if token:
        try:
            session = await logins.resolve(services.store, token, now=now,
                                           limits=services.session_limits)
        except Forbidden:
            if path in ("/login", "/logout"):  # let them sign out, or in as someone else
                return
            raise
        if session is not None:
            scope["user"] = session.principal
            scope["auth"] = session


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):
        raise Unauthorized("Sign in or send an API key")
    return user


def _require(role: Role, *, tenant: bool) -> Any:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = principal_of(connection)
        if principal.kind == "link":
            raise NotFound("Not found")
        if tenant and principal.tenant_id is None:
            raise Forbidden("This needs a tenant's identity: use a tenant API key or account")
        if not principal.at_least(role):
            raise Forbidden(f"This needs the {role} role")

    guard.__name__ = f"requires_{role}" + ("_in_tenant" if tenant else "")
    return guard


requires_operator = _require("operator", tenant=False)
requires_owner = _require("owner", tenant=True)
requires_member = _require("member", tenant=True)


def requires_signed_in(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
                       ) -> None:
    principal_of(connection)


def tenant_id_of(request: Request[Any, Any, Any]) -> str:
    """The tenant a request acts for: only ever the authenticated identity's own."""
    tenant_id = principal_of(request).tenant_id
    if tenant_id is None:
        raise Forbidden("This needs a tenant's identity")
    return tenant_id


def client_ip(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else ""
