"""Sign-in pages: login and logout, first-run set-up of the operator, invitation acceptance.

Forms post back to the page that rendered them. Every failure a person can fix (wrong password,
weak password, throttling) re-renders the form with a readable message and the right status;
a password is never written back into a form.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter, URLEncodedBody
from litestar.response import Redirect, Template

from whatsdex.errors import BadRequest, Conflict, LimitReached, NotFound, WhatsdexError
from whatsdex.identity import links, logins, passwords, users
from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.store import tenants
from whatsdex.store import users as user_rows
from whatsdex.store.records import LinkToken
from whatsdex.web.auth import SESSION_COOKIE, client_ip

# Pages that carry a token in their URL or a password form are never stored by a cache.
_NO_STORE = {"Cache-Control": "no-store"}
_MISMATCH = "The two passwords do not match"
# The set-up link acts before any account exists: the audit log names it as the actor.
_SETUP_ACTOR = Principal(kind="link", id=None, label="first-run set-up link", role="operator",
                         tenant_id=None)


class LoginForm(msgspec.Struct):
    email: str = ""
    password: str = ""
    next: str = ""


class SetupForm(msgspec.Struct):
    token: str = ""
    email: str = ""
    name: str = ""
    password: str = ""
    password_confirm: str = ""


class InviteForm(msgspec.Struct):
    token: str = ""
    name: str = ""
    password: str = ""
    password_confirm: str = ""


def safe_next(target: str | None) -> str:
    """A local path to return to after sign-in; anything that could leave the site becomes `/`.

    Browsers treat `\\` like `/` and drop tabs and newlines inside URLs, so `/\\evil` or
    `/<TAB>/evil` would become the protocol-relative `//evil`: refuse those characters too.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    # A Location header is ASCII: escape the rest (existing %-escapes and delimiters stay).
    return quote(target, safe="/?#[]@!$&'()*+,;=:%~-._")


def _signed_in(request: Request[Any, Any, Any]) -> Principal | None:
    user = request.scope.get("user")
    return user if isinstance(user, Principal) and user.kind == "user" else None


def _session_cookie(value: str, max_age: int) -> Cookie:
    # `__Host-` obliges Secure, Path=/ and no Domain; browsers ignore a deletion without them.
    return Cookie(key=SESSION_COOKIE, value=value, max_age=max_age, path="/", secure=True,
                  httponly=True, samesite="lax")


async def _start_session(
    request: Request[Any, Any, Any], services: Services, email: str, password: str,
) -> logins.NewLogin:
    """Open a new session; the one in the current cookie (if any) ends, so ids never carry over."""
    return await logins.login(
        services.store, email=email, password=password, ip=client_ip(request),
        user_agent=request.headers.get("user-agent", ""), now=services.clock(),
        limits=services.session_limits, replaces=request.cookies.get(SESSION_COOKIE) or None,
    )


def _go(target: str, services: Services, new: logins.NewLogin) -> Redirect:
    max_age = int(services.session_limits.max_seconds)
    return Redirect(target, status_code=303, cookies=[_session_cookie(new.token, max_age)])


def _invalid_link(message: str = links.INVALID, status: int = 404, *, setup: bool = False,
                  ) -> Template:
    return Template(
        template_name="auth/invalid_link.html",
        context={"message": message, "setup": setup},
        status_code=status,
        headers=_NO_STORE,
    )


# -- login and logout ------------------------------------------------------------------------


def _login_page(*, email: str = "", next_path: str = "/", error: str = "", status: int = 200,
                headers: dict[str, str] | None = None, first_run: bool = False) -> Template:
    return Template(
        template_name="auth/login.html",
        context={"email": email, "next": next_path, "error": error, "first_run": first_run},
        status_code=status,
        headers={**_NO_STORE, **(headers or {})},
    )


@get("/login", include_in_schema=False)
async def login_form(
    request: Request[Any, Any, Any], services: NamedDependency[Services],
    next_path: Annotated[str, QueryParameter(name="next")] = "",
) -> Response[Any]:
    if _signed_in(request):
        return Redirect(safe_next(next_path), status_code=303)
    first_run = not await user_rows.operator_exists(services.store)
    return _login_page(next_path=safe_next(next_path), first_run=first_run)


@post("/login", include_in_schema=False)
async def login_submit(
    request: Request[Any, Any, Any], services: NamedDependency[Services],
    data: URLEncodedBody[LoginForm],
) -> Response[Any]:
    target = safe_next(data.next)
    try:
        new = await _start_session(request, services, data.email, data.password)
    except LimitReached as exc:
        retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        return _login_page(email=data.email, next_path=target, error=exc.message,
                           status=exc.status_code, headers=retry)
    except WhatsdexError as exc:  # wrong credentials (401), suspended workspace (403)
        return _login_page(email=data.email, next_path=target, error=exc.message,
                           status=exc.status_code)
    return _go(target, services, new)


@post("/logout", include_in_schema=False)
async def logout(request: Request[Any, Any, Any], services: NamedDependency[Services]) -> Redirect:
    session = request.scope.get("auth")
    if isinstance(session, logins.LoginSession):
        await logins.logout(services.store, session, now=services.clock(), ip=client_ip(request))
    return Redirect("/login", status_code=303, cookies=[_session_cookie("", 0)])


# -- first-run set-up --------------------------------------------------------------------------


def _setup_page(token: str, *, email: str = "", name: str = "", error: str = "",
                status: int = 200) -> Template:
    return Template(
        template_name="auth/setup.html",
        context={"link_token": token, "email": email, "name": name, "error": error,
                 "min_length": passwords.MIN_LENGTH},
        status_code=status,
        headers=_NO_STORE,
    )


@get("/setup", include_in_schema=False)
async def setup_form(services: NamedDependency[Services], token: FromQuery[str] = "") -> Template:
    if await user_rows.operator_exists(services.store):
        return _invalid_link(setup=True)
    try:
        await links.resolve(services.store, token, "setup", now=services.clock())
    except NotFound:
        return _invalid_link(setup=True)
    return _setup_page(token)


@post("/setup", include_in_schema=False)
async def setup_submit(
    request: Request[Any, Any, Any], services: NamedDependency[Services],
    data: URLEncodedBody[SetupForm],
) -> Response[Any]:
    def again(message: str, status: int = 400) -> Template:
        return _setup_page(data.token, email=data.email, name=data.name, error=message,
                           status=status)

    if data.password != data.password_confirm:
        return again(_MISMATCH)
    try:
        user = await users.create_operator(
            services.store, _SETUP_ACTOR, email=data.email, password=data.password,
            name=data.name, now=services.clock(), setup_token=data.token,
            ip=client_ip(request),
        )
    except BadRequest as exc:
        return again(exc.message)
    except NotFound:
        return _invalid_link(setup=True)
    except Conflict as exc:
        if await user_rows.operator_exists(services.store):
            return _invalid_link(setup=True)
        return again(exc.message, exc.status_code)  # the e-mail belongs to a tenant's user
    services.setup_token = None
    return await _sign_in_new_account(request, services, user.email, data.password)


async def _sign_in_new_account(
    request: Request[Any, Any, Any], services: Services, email: str, password: str,
) -> Redirect:
    try:
        new = await _start_session(request, services, email, password)
    except WhatsdexError:
        # The account exists; only the automatic sign-in failed (e.g. this address is throttled).
        return Redirect("/login", status_code=303)
    return _go("/", services, new)


# -- invitations -------------------------------------------------------------------------------


async def _invite_page(services: Services, link: LinkToken, token: str, *, name: str = "",
                       error: str = "", status: int = 200) -> Template:
    tenant = await tenants.get_tenant(services.store, link.tenant_id) if link.tenant_id else None
    if tenant is None:
        return _invalid_link()
    return Template(
        template_name="auth/invite.html",
        context={"link_token": token, "email": link.subject, "workspace": tenant.name,
                 "role": link.role or "member", "name": name, "error": error,
                 "min_length": passwords.MIN_LENGTH},
        status_code=status,
        headers=_NO_STORE,
    )


@get("/invite", include_in_schema=False)
async def invite_form(services: NamedDependency[Services], token: FromQuery[str] = "") -> Template:
    try:
        link = await links.resolve(services.store, token, "invite", now=services.clock())
    except NotFound:
        return _invalid_link()
    return await _invite_page(services, link, token)


@post("/invite", include_in_schema=False)
async def invite_submit(
    request: Request[Any, Any, Any], services: NamedDependency[Services],
    data: URLEncodedBody[InviteForm],
) -> Response[Any]:
    try:
        link = await links.resolve(services.store, data.token, "invite", now=services.clock())
    except NotFound:
        return _invalid_link()
    if data.password != data.password_confirm:
        return await _invite_page(services, link, data.token, name=data.name, error=_MISMATCH,
                                  status=400)
    try:
        user = await users.accept_invite(services.store, data.token, password=data.password,
                                         name=data.name, now=services.clock(),
                                         ip=client_ip(request))
    except BadRequest as exc:
        return await _invite_page(services, link, data.token, name=data.name, error=exc.message,
                                  status=400)
    except NotFound:
        return _invalid_link()
    except Conflict as exc:  # someone already has this e-mail
        return _invalid_link(exc.message, exc.status_code)
    return await _sign_in_new_account(request, services, user.email, data.password)


ROUTES: list[Any] = [
    login_form, login_submit, logout, setup_form, setup_submit, invite_form, invite_submit,
]
