"""`/`: everyone lands where their work is (or on the sign-in page)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Redirect

from whatsdex.identity.principal import Principal


@get("/", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Redirect:
    user = request.scope.get("user")
    if not isinstance(user, Principal) or user.kind != "user":
        return Redirect("/login", status_code=303)
    if user.is_operator:
        return Redirect("/admin/tenants", status_code=303)
    return Redirect("/numbers", status_code=303)
