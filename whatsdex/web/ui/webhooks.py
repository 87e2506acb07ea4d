"""The workspace's webhooks in the dashboard (`/webhooks`, owners only): the list with status,
a create form (the secret shown once), and one webhook's page with its settings, secret
rotation, replays and a delivery log that refreshes itself.

Mutations are HTMX requests answered with the part of the page they change; failures become
toasts (web/errors.py). Everything goes through `whatsdex.webhooks.manage`, like the API.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Template

from whatsdex.clock import iso
from whatsdex.errors import BadRequest
from whatsdex.identity.tenants import get_tenant
from whatsdex.services import Services
from whatsdex.store.webhooks import Webhook
from whatsdex.web.api.webhooks import (
    DeliveryPage,
    allow_private,
    delivery_page,
    keyring_of,
    wake_dispatcher,
)
from whatsdex.web.auth import client_ip, principal_of, requires_owner, tenant_id_of
from whatsdex.web.ui.workspace import go, page, partial, text
from whatsdex.webhooks import manage
from whatsdex.webhooks.outbox import EVENT_TYPES

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Cursor = Annotated[int | None, QueryParameter(ge=1)]
StatusFilter = Annotated[str, QueryParameter(max_length=16)]
Seen = Annotated[str, QueryParameter(max_length=64, description="What the page shows now")]
LOG_PAGE = 25
# The choices the form offers; the API takes any valid filter.
EVENT_CHOICES = (("*", "Every event"), ("message.*", "Every message event"),
                 *((event, event) for event in EVENT_TYPES if event != "webhook.test"))


def _events(form: FormMultiDict) -> list[str]:
    return [value for value in form.getall("events", []) if isinstance(value, str)]


def _status(value: str) -> str | None:
    return value if value in ("pending", "delivered", "failed") else None


async def _list_card(request: AnyRequest, services: Services, *, created: Webhook | None = None,
                     secret: str | None = None) -> dict[str, Any]:
    hooks = await manage.list_webhooks(services.store, tenant_id_of(request))
    return {"hooks": hooks, "created": created, "secret": secret, "choices": EVENT_CHOICES}


def _fingerprint(page: DeliveryPage) -> str:
    """What the log's first page shows, in a few characters (a poll that matches gets 204)."""
    shown = "|".join(f"{d.id}:{d.status}:{d.attempts}:{d.last_attempt_at}" for d in page.items)
    return hashlib.sha256(shown.encode()).hexdigest()[:16]


async def _deliveries(request: AnyRequest, services: Services, webhook_id: str,
                      status: str | None, before: int | None = None, notice: str = "",
                      seen: str = "") -> Response[Any]:
    """The delivery log: the polled first page, or (with `before`) the next rows only."""
    hook = await manage.get_webhook(services.store, tenant_id_of(request), webhook_id)
    found = await delivery_page(services, hook.tenant_id, webhook_id, status, before, LOG_PAGE)
    context = {"hook": hook, "deliveries": found.items, "status": status or "",
               "next_before": found.next_before, "notice": notice, "seen": _fingerprint(found)}
    if before is not None:
        return partial("webhooks/_delivery_rows.html", **context)
    if seen and seen == context["seen"] and request.headers.get("hx-request") == "true":
        return Response(b"", status_code=204)
    return partial("webhooks/_deliveries.html", **context)


async def _settings(request: AnyRequest, services: Services, webhook_id: str, notice: str = ""
                    ) -> Template:
    hook = await manage.get_webhook(services.store, tenant_id_of(request), webhook_id)
    return partial("webhooks/_settings.html", hook=hook, choices=EVENT_CHOICES, notice=notice)


# -- The list ----------------------------------------------------------------------------------

@get("/", summary="Webhooks")
async def webhooks_page(request: AnyRequest, services: ServicesDep) -> Template:
    return page(request, "webhooks/list.html", **await _list_card(request, services))


@post("/", status_code=200, summary="Create a webhook")
async def create_webhook(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    hook, secret = await manage.create_webhook(
        services.store, keyring_of(services), principal_of(request), tenant_id_of(request),
        url=text(form, "url"), events=_events(form), description=text(form, "description"),
        allow_private=allow_private(services), now=services.clock(), ip=client_ip(request))
    return partial("webhooks/_list.html",
                   **await _list_card(request, services, created=hook, secret=secret))


# -- One webhook -------------------------------------------------------------------------------

@get("/{webhook_id:str}", summary="A webhook")
async def webhook_page(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                       ) -> Template:
    tenant_id = tenant_id_of(request)
    hook = await manage.get_webhook(services.store, tenant_id, webhook_id)
    found = await delivery_page(services, tenant_id, webhook_id, None, None, LOG_PAGE)
    return page(request, "webhooks/webhook.html", hook=hook, choices=EVENT_CHOICES,
                deliveries=found.items, next_before=found.next_before, status="",
                seen=_fingerprint(found), new_secret=None, notice="",
                now=iso(services.clock()))


@get("/{webhook_id:str}/deliveries", summary="Delivery log")
async def deliveries(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                     status: StatusFilter = "", before: Cursor = None, seen: Seen = ""
                     ) -> Response[Any]:
    return await _deliveries(request, services, webhook_id, _status(status), before, seen=seen)


@patch("/{webhook_id:str}", summary="Change a webhook")
async def update_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                         ) -> Template:
    form = await request.form()
    await manage.update_webhook(
        services.store, principal_of(request), tenant_id_of(request), webhook_id,
        url=text(form, "url"), events=_events(form), description=text(form, "description"),
        allow_private=allow_private(services), now=services.clock(), ip=client_ip(request))
    return await _settings(request, services, webhook_id, "Webhook saved")


@post("/{webhook_id:str}/enable", status_code=200, summary="Enable a webhook")
async def enable(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                 ) -> Template:
    await manage.update_webhook(services.store, principal_of(request), tenant_id_of(request),
                                webhook_id, enabled=True, allow_private=allow_private(services),
                                now=services.clock(), ip=client_ip(request))
    wake_dispatcher(services)
    return await _settings(request, services, webhook_id, "Webhook enabled")


@post("/{webhook_id:str}/disable", status_code=200, summary="Disable a webhook")
async def disable(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                  ) -> Template:
    await manage.update_webhook(services.store, principal_of(request), tenant_id_of(request),
                                webhook_id, enabled=False, allow_private=allow_private(services),
                                now=services.clock(), ip=client_ip(request))
    return await _settings(request, services, webhook_id, "Webhook disabled")


@delete("/{webhook_id:str}", status_code=200, summary="Delete a webhook")
async def delete_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                         ) -> Response[Any]:
    await manage.delete_webhook(services.store, principal_of(request), tenant_id_of(request),
                                webhook_id, now=services.clock(), ip=client_ip(request))
    return go(request, "/webhooks")


@post("/{webhook_id:str}/rotate-secret", status_code=200, summary="Rotate the signing secret")
async def rotate_secret(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                        ) -> Template:
    tenant_id = tenant_id_of(request)
    secret, _ = await manage.rotate_secret(
        services.store, keyring_of(services), principal_of(request), tenant_id, webhook_id,
        now=services.clock(), ip=client_ip(request))
    hook = await manage.get_webhook(services.store, tenant_id, webhook_id)
    return partial("webhooks/_secret.html", hook=hook, new_secret=secret,
                   now=iso(services.clock()))


@post("/{webhook_id:str}/test", status_code=200, summary="Send a test event")
async def send_test(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                    ) -> Response[Any]:
    await manage.send_test(services.store, principal_of(request), tenant_id_of(request),
                           webhook_id, now=services.clock(), ip=client_ip(request))
    wake_dispatcher(services)
    return await _deliveries(request, services, webhook_id, None,
                             notice="Test event queued: it appears in the log below")


@post("/{webhook_id:str}/deliveries/{delivery_id:int}/replay", status_code=200,
      summary="Send one event again")
async def replay_delivery(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                          delivery_id: FromPath[int]) -> Response[Any]:
    await manage.replay_delivery(services.store, principal_of(request), tenant_id_of(request),
                                 webhook_id, delivery_id, now=services.clock(),
                                 ip=client_ip(request))
    wake_dispatcher(services)
    return await _deliveries(request, services, webhook_id, None,
                             notice=f"Delivery {delivery_id} queued again")


@post("/{webhook_id:str}/replay", status_code=200, summary="Send everything since a time again")
async def replay_since(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                       ) -> Response[Any]:
    form = await request.form()
    tenant_id = tenant_id_of(request)
    since = await _local_time(services, tenant_id, text(form, "since"))
    count = await manage.replay_since(
        services.store, principal_of(request), tenant_id, webhook_id, since,
        only_failed=text(form, "only_failed") == "1", now=services.clock(),
        ip=client_ip(request))
    wake_dispatcher(services)
    return await _deliveries(request, services, webhook_id, None,
                             notice=f"{count} event{'s' if count != 1 else ''} queued again")


async def _local_time(services: Services, tenant_id: str, value: str) -> str:
    """A `datetime-local` field means the workspace's time zone."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadRequest("since: choose a date and time", {"field": "since"}) from None
    if moment.tzinfo is None:
        tenant = await get_tenant(services.store, tenant_id)
        try:
            moment = moment.replace(tzinfo=ZoneInfo(tenant.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            moment = moment.replace(tzinfo=ZoneInfo("UTC"))
    return moment.isoformat()


ROUTES: list[Any] = [
    Router(path="/webhooks", guards=[requires_owner], include_in_schema=False, route_handlers=[
        webhooks_page, create_webhook, webhook_page, deliveries, update_webhook, enable, disable,
        delete_webhook, rotate_secret, send_test, replay_delivery, replay_since,
    ]),
]
