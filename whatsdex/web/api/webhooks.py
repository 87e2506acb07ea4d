"""Webhooks in the JSON API (`/api/v1/webhooks`, owners only): endpoints, their signing
secrets, the delivery log, replays and test events.

Handlers check who asks and call `whatsdex.webhooks.manage`, which validates, audits and
writes; the dashboard pages (`ui/webhooks.py`) call the same functions.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Router, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from msgspec import Meta, Struct

from whatsdex.crypto.keyring import Keyring
from whatsdex.errors import Unavailable
from whatsdex.services import Services
from whatsdex.store.webhooks import Delivery, Webhook
from whatsdex.web.api.admin import Before, PageSize
from whatsdex.web.api.session_schemas import ErrorOut
from whatsdex.web.auth import client_ip, principal_of, requires_owner, tenant_id_of
from whatsdex.webhooks import manage
from whatsdex.webhooks.dispatcher import WebhookDispatcher
from whatsdex.webhooks.outbox import EVENT_TYPES, FAMILIES

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)

Url = Annotated[str, Meta(min_length=1, max_length=2000,
                          description="http:// or https://; its host must resolve to public "
                                      "addresses unless the operator allows private ones",
                          examples=["https://crm.example.com/hooks/whatsapp"])]
EventFilter = Annotated[str, Meta(min_length=1, max_length=64)]
Events = Annotated[
    list[EventFilter],
    Meta(min_length=1, max_length=50,
         description=f"'*' for everything, a family like 'message.*' ({', '.join(FAMILIES)}) "
                     f"or exact types: {', '.join(EVENT_TYPES)}",
         examples=[["message.*", "session.status"]]),
]
Description = Annotated[str, Meta(max_length=500)]
DeliveryStatus = Literal["pending", "delivered", "failed"]
StatusQuery = Annotated[DeliveryStatus | None, QueryParameter(description="Only this status")]


# -- Bodies ------------------------------------------------------------------------------------

class WebhookCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    url: Url
    events: Events = msgspec.field(default_factory=lambda: ["*"])
    description: Description = ""


class WebhookUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields present change. Enabling clears the failure count and resumes the
    deliveries that waited."""

    url: Url | None = None
    events: Events | None = None
    description: Description | None = None
    enabled: bool | None = None


class ReplaySince(Struct, kw_only=True, forbid_unknown_fields=True):
    since: Annotated[str, Meta(description="ISO 8601; without an offset it is UTC",
                               examples=["2026-01-31T09:00:00Z"])]
    only_failed: bool = False


class WebhookOut(Struct, kw_only=True):
    id: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str
    consecutive_failures: int
    failing_since: str | None
    pending_deliveries: int
    previous_secret_valid_until: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, hook: Webhook) -> WebhookOut:
        return cls(id=hook.id, url=hook.url, description=hook.description, events=hook.events,
                   enabled=hook.enabled, disabled_reason=hook.disabled_reason,
                   consecutive_failures=hook.consecutive_failures,
                   failing_since=hook.failing_since, pending_deliveries=hook.pending,
                   previous_secret_valid_until=hook.rotation_ends_at,
                   created_at=hook.created_at, updated_at=hook.updated_at)


class WebhookCreated(WebhookOut, kw_only=True):
    """The only time the signing secret is returned: store it now."""

    secret: str


class SecretRotated(Struct, kw_only=True):
    """The new secret, shown once. Until `previous_valid_until` every delivery carries a
    signature from each secret, so receivers can switch without missing an event."""

    secret: str
    previous_valid_until: str


class DeliveryOut(Struct, kw_only=True):
    id: int
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: str | None
    last_status: int | None
    last_error: str
    request_excerpt: str
    response_excerpt: str
    created_at: str
    last_attempt_at: str | None
    delivered_at: str | None

    @classmethod
    def of(cls, row: Delivery) -> DeliveryOut:
        return cls(id=row.id, event_id=row.event_id, event_type=row.event_type,
                   status=row.status,  # type: ignore[arg-type]
                   attempts=row.attempts,
                   next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
                   last_status=row.last_status, last_error=row.last_error,
                   request_excerpt=row.request_excerpt, response_excerpt=row.response_excerpt,
                   created_at=row.created_at, last_attempt_at=row.last_attempt_at,
                   delivered_at=row.delivered_at)


class DeliveryDetail(DeliveryOut, kw_only=True):
    payload: Any  # the event envelope sent: {"type", "timestamp", "data"}


class DeliveryPage(Struct, kw_only=True):
    """Newest first. Pass `next_before` as `before` for the next page; null: no more."""

    items: list[DeliveryOut]
    next_before: int | None


class Replayed(Struct, kw_only=True):
    replayed: int


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    described = {
        400: "Invalid input, named in `detail.field` (e.g. a URL that reaches a private address)",
        403: "Not an owner, or the plan's webhook limit (named in `message`)",
        404: "No such webhook (or delivery) in this workspace",
        409: "Not possible now (a disabled webhook cannot send a test event)",
    }
    return {code: ResponseSpec(data_container=ErrorOut, description=described[code],
                               generate_examples=False) for code in codes}


# -- Shared with the dashboard -----------------------------------------------------------------

def keyring_of(services: Services) -> Keyring:
    if services.keyring is None:
        raise Unavailable("WhatsDeX is starting: try again in a moment")
    return services.keyring


def wake_dispatcher(services: Services) -> None:
    """New or replayed deliveries go out now rather than at the next poll."""
    dispatcher = getattr(services, "webhooks", None)
    if isinstance(dispatcher, WebhookDispatcher):
        dispatcher.wake()


def allow_private(services: Services) -> bool:
    return services.settings.allow_private_webhooks


async def delivery_page(services: Services, tenant_id: str, webhook_id: str,
                        status: str | None, before: int | None, limit: int) -> DeliveryPage:
    found = await manage.list_deliveries(services.store, tenant_id, webhook_id, status=status,
                                         before=before, limit=limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return DeliveryPage(items=[DeliveryOut.of(row) for row in items],
                        next_before=items[-1].id if more and items else None)


# -- Handlers ----------------------------------------------------------------------------------

@post("/", summary="Create a webhook", responses=_errors(400, 403),
      description="Events matching `events` are POSTed to `url`, signed as Standard Webhooks "
                  "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). The signing "
                  "secret is in this answer once and never again. Counts against the plan.")
async def create_webhook(request: AnyRequest, services: ServicesDep,
                         data: JSONBody[WebhookCreate]) -> WebhookCreated:
    hook, secret = await manage.create_webhook(
        services.store, keyring_of(services), principal_of(request), tenant_id_of(request),
        url=data.url, events=data.events, description=data.description,
        allow_private=allow_private(services), now=services.clock(), ip=client_ip(request))
    return WebhookCreated(secret=secret, **msgspec.structs.asdict(WebhookOut.of(hook)))


@get("/", summary="List webhooks", description="Oldest first, without their secrets.")
async def list_webhooks(request: AnyRequest, services: ServicesDep) -> list[WebhookOut]:
    hooks = await manage.list_webhooks(services.store, tenant_id_of(request))
    return [WebhookOut.of(hook) for hook in hooks]


@get("/{webhook_id:str}", summary="A webhook", responses=_errors(404))
async def read_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                       ) -> WebhookOut:
    return WebhookOut.of(await manage.get_webhook(services.store, tenant_id_of(request),
                                                  webhook_id))


@patch("/{webhook_id:str}", summary="Change, enable or disable a webhook",
       responses=_errors(400, 404),
       description="Only the fields sent change. A disabled webhook keeps its waiting "
                   "deliveries; enabling it sends them, in order.")
async def update_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                         data: JSONBody[WebhookUpdate]) -> WebhookOut:
    hook = await manage.update_webhook(
        services.store, principal_of(request), tenant_id_of(request), webhook_id, url=data.url,
        events=data.events, description=data.description, enabled=data.enabled,
        allow_private=allow_private(services), now=services.clock(), ip=client_ip(request))
    wake_dispatcher(services)
    return WebhookOut.of(await manage.get_webhook(services.store, hook.tenant_id, hook.id))


@delete("/{webhook_id:str}", summary="Delete a webhook", responses=_errors(404),
        description="With its delivery log; events waiting for it are dropped.")
async def delete_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                         ) -> None:
    await manage.delete_webhook(services.store, principal_of(request), tenant_id_of(request),
                                webhook_id, now=services.clock(), ip=client_ip(request))


@post("/{webhook_id:str}/rotate-secret", status_code=200, summary="Rotate the signing secret",
      responses=_errors(404),
      description="A new secret, in this answer once. The previous one keeps signing (a second "
                  "`v1,` signature in `webhook-signature`) for 24 hours.")
async def rotate_secret(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                        ) -> SecretRotated:
    secret, ends = await manage.rotate_secret(
        services.store, keyring_of(services), principal_of(request), tenant_id_of(request),
        webhook_id, now=services.clock(), ip=client_ip(request))
    return SecretRotated(secret=secret, previous_valid_until=ends)


@get("/{webhook_id:str}/deliveries", summary="Delivery log", responses=_errors(404),
     description="Newest first: each event with its status, attempts, last HTTP status, error "
                 "and the first kilobyte of the last request and response.")
async def list_deliveries(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                          status: StatusQuery = None, before: Before = None,
                          limit: PageSize = 50) -> DeliveryPage:
    return await delivery_page(services, tenant_id_of(request), webhook_id, status, before,
                               limit)


@get("/{webhook_id:str}/deliveries/{delivery_id:int}", summary="One delivery, with its body",
     responses=_errors(404))
async def read_delivery(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                        delivery_id: FromPath[int]) -> DeliveryDetail:
    row, payload = await manage.get_delivery(services.store, tenant_id_of(request), webhook_id,
                                             delivery_id)
    return DeliveryDetail(payload=json.loads(payload),
                          **msgspec.structs.asdict(DeliveryOut.of(row)))


@post("/{webhook_id:str}/deliveries/{delivery_id:int}/replay", status_code=202,
      summary="Send one event again", responses=_errors(404),
      description="With its original `webhook-id`. A delivered or failed event starts a fresh "
                  "retry schedule; a pending one skips its wait (events are still sent in "
                  "order: it goes once those queued before it are done).")
async def replay_delivery(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                          delivery_id: FromPath[int]) -> DeliveryOut:
    row = await manage.replay_delivery(services.store, principal_of(request),
                                       tenant_id_of(request), webhook_id, delivery_id,
                                       now=services.clock(), ip=client_ip(request))
    wake_dispatcher(services)
    return DeliveryOut.of(row)


@post("/{webhook_id:str}/replay", status_code=202, summary="Send everything since a time again",
      responses=_errors(400, 404),
      description="Every delivered (unless `only_failed`) and failed event of this webhook "
                  "created at or after `since`, in the original order. The log keeps 30 days.")
async def replay_since(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str],
                       data: JSONBody[ReplaySince]) -> Replayed:
    count = await manage.replay_since(services.store, principal_of(request),
                                      tenant_id_of(request), webhook_id, data.since,
                                      only_failed=data.only_failed, now=services.clock(),
                                      ip=client_ip(request))
    wake_dispatcher(services)
    return Replayed(replayed=count)


@post("/{webhook_id:str}/test", status_code=202, summary="Send a test event",
      responses=_errors(404, 409),
      description="Queues a `webhook.test` event for this webhook only (whatever its filter), "
                  "after what it already has waiting. Watch it in the delivery log.")
async def test_webhook(request: AnyRequest, services: ServicesDep, webhook_id: FromPath[str]
                       ) -> DeliveryOut:
    row = await manage.send_test(services.store, principal_of(request), tenant_id_of(request),
                                 webhook_id, now=services.clock(), ip=client_ip(request))
    wake_dispatcher(services)
    return DeliveryOut.of(row)


ROUTES: list[Any] = [
    Router(
        path="/api/v1/webhooks",
        route_handlers=[create_webhook, list_webhooks, read_webhook, update_webhook,
                        delete_webhook, rotate_secret, list_deliveries, read_delivery,
                        replay_delivery, replay_since, test_webhook],
        guards=[requires_owner],
        security=[{"apiKey": []}],
        tags=["Webhooks"],
    )
]
