"""Managing a tenant's webhooks: create (secret shown once), change, enable/disable, delete,
rotate the secret, replay deliveries, send a test event. Every change is audited in the
transaction that makes it.

Secrets are sealed with the tenant's data key (associated data: "webhook" and the id). After a
rotation the previous secret keeps signing, next to the new one, for `ROTATION_WINDOW`;
rotating again inside that window drops the oldest.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

import httpx

from whatsdex.clock import iso
from whatsdex.crypto.keyring import Keyring
from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import audit, limits
from whatsdex.identity.principal import Principal
from whatsdex.store import Store
from whatsdex.store import webhooks as rows
from whatsdex.store.ids import new_id
from whatsdex.store.webhooks import Delivery, Webhook
from whatsdex.webhooks import outbox, signing
from whatsdex.webhooks.ssrf import Resolver, check_url, resolve

ROTATION_WINDOW = 86_400
MAX_DESCRIPTION = 500


def redact_url(url: str) -> str:
    """The URL without a password in it (for logs, excerpts and the audit log)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return url
    if not parsed.password:
        return url
    return str(parsed.copy_with(password="***"))  # noqa: S106 - a mask, not a password


def clean_description(text: str | None) -> str:
    text = " ".join((text or "").split())
    if len(text) > MAX_DESCRIPTION:
        raise BadRequest(f"description: at most {MAX_DESCRIPTION} characters",
                         {"field": "description"})
    return text


def parse_since(text: str, field: str = "since") -> str:
    """An ISO 8601 time (a date, or a time with or without offset; none means UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field}: give a time like 2026-01-31T09:00:00Z",
                         {"field": field}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return iso(moment.timestamp())


def _seal_aad(webhook_id: str) -> tuple[str, str]:
    return ("webhook", webhook_id)


def _must(conn: sqlite3.Connection, tenant_id: str, webhook_id: str) -> Webhook:
    hook = rows.get_sync(conn, tenant_id, webhook_id)
    if hook is None:
        raise NotFound("Webhook not found")
    return hook


async def get_webhook(db: Store, tenant_id: str, webhook_id: str) -> Webhook:
    hook = await rows.get(db, tenant_id, webhook_id)
    if hook is None:
        raise NotFound("Webhook not found")
    return hook


async def list_webhooks(db: Store, tenant_id: str) -> list[Webhook]:
    return await rows.list_for_tenant(db, tenant_id)


async def create_webhook(
    db: Store, keyring: Keyring, actor: Principal, tenant_id: str, *, url: str,
    events: list[str], description: str | None, allow_private: bool, now: float, ip: str = "",
    resolver: Resolver = resolve,
) -> tuple[Webhook, str]:
    """A new enabled webhook and its signing secret (returned this once, stored sealed)."""
    url = await check_url(url, allow_private=allow_private, resolver=resolver)
    filters = outbox.clean_filters(events)
    stamp = iso(now)
    hook = Webhook(id=new_id("wh"), tenant_id=tenant_id, url=url,
                   description=clean_description(description), events=filters, enabled=True,
                   disabled_reason="", consecutive_failures=0, failing_since=None,
                   rotation_ends_at=None, created_at=stamp, updated_at=stamp)
    secret = signing.new_secret()
    sealed = await keyring.encrypt(tenant_id, secret.encode(), *_seal_aad(hook.id))

    def write(conn: sqlite3.Connection) -> Webhook:
        limits.enforce(conn, tenant_id, "max_webhooks", rows.count_for_tenant(conn, tenant_id))
        rows.insert_webhook(conn, hook, sealed)
        audit.record(conn, actor, "webhook.created", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=hook.id,
                     detail={"url": redact_url(url), "events": filters}, ip=ip)
        return hook

    return await db.write(write), secret


async def update_webhook(
    db: Store, actor: Principal, tenant_id: str, webhook_id: str, *, url: str | None = None,
    events: list[str] | None = None, description: str | None = None,
    enabled: bool | None = None, allow_private: bool, now: float, ip: str = "",
    resolver: Resolver = resolve,
) -> Webhook:
    """Change what is given. Enabling clears the failure count and resumes waiting deliveries."""
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = await check_url(url, allow_private=allow_private, resolver=resolver)
    if events is not None:
        changes["events"] = outbox.clean_filters(events)
    if description is not None:
        changes["description"] = clean_description(description)
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Webhook:
        before = _must(conn, tenant_id, webhook_id)
        fields = {name: value for name, value in changes.items()
                  if getattr(before, name) != value}
        if enabled is True and not before.enabled:
            fields.update(enabled=1, disabled_reason="", consecutive_failures=0,
                          failing_since=None)
        elif enabled is False and before.enabled:
            fields.update(enabled=0, disabled_reason=f"Disabled by {actor.label}")
        if not fields:
            return before
        rows.update_fields(conn, tenant_id, webhook_id, stamp, **fields)
        if fields.get("enabled") == 1:
            rows.resume(conn, tenant_id, webhook_id, stamp)
        detail: dict[str, Any] = {
            name: redact_url(value) if name == "url" else value
            for name, value in fields.items() if name in ("url", "events", "description")}
        if "enabled" in fields:
            action = "webhook.enabled" if fields["enabled"] else "webhook.disabled"
        else:
            action = "webhook.updated"
        audit.record(conn, actor, action, at=stamp, tenant_id=tenant_id, object_type="webhook",
                     object_id=webhook_id, detail=detail, ip=ip)
        return _must(conn, tenant_id, webhook_id)

    return await db.write(write)


async def delete_webhook(db: Store, actor: Principal, tenant_id: str, webhook_id: str, *,
                         now: float, ip: str = "") -> None:
    """Its delivery log and waiting deliveries go with it."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        hook = _must(conn, tenant_id, webhook_id)
        rows.delete(conn, tenant_id, webhook_id)
        audit.record(conn, actor, "webhook.deleted", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=webhook_id,
                     detail={"url": redact_url(hook.url)}, ip=ip)

    await db.write(write)


async def rotate_secret(db: Store, keyring: Keyring, actor: Principal, tenant_id: str,
                        webhook_id: str, *, now: float, ip: str = "") -> tuple[str, str]:
    """A new secret (returned once) and until when the previous one still signs."""
    await get_webhook(db, tenant_id, webhook_id)
    secret = signing.new_secret()
    sealed = await keyring.encrypt(tenant_id, secret.encode(), *_seal_aad(webhook_id))
    stamp, ends = iso(now), iso(now + ROTATION_WINDOW)

    def write(conn: sqlite3.Connection) -> None:
        current = rows.get_secrets(conn, tenant_id, webhook_id)
        if current is None:
            raise NotFound("Webhook not found")
        rows.set_secrets(conn, tenant_id, webhook_id, secret=sealed, previous=current[0],
                         rotation_ends_at=ends, now=stamp)
        audit.record(conn, actor, "webhook.secret_rotated", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=webhook_id,
                     detail={"previous_valid_until": ends}, ip=ip)

    await db.write(write)
    return secret, ends


async def list_deliveries(db: Store, tenant_id: str, webhook_id: str, *,
                          status: str | None = None, before: int | None = None,
                          limit: int = 50) -> list[Delivery]:
    await get_webhook(db, tenant_id, webhook_id)
    if status is not None and status not in rows.DELIVERY_STATUSES:
        raise BadRequest(f"status: one of {', '.join(rows.DELIVERY_STATUSES)}",
                         {"field": "status"})
    return await rows.list_deliveries(db, tenant_id, webhook_id, status=status, before=before,
                                      limit=limit)


async def get_delivery(db: Store, tenant_id: str, webhook_id: str, delivery_id: int
                       ) -> tuple[Delivery, str]:
    found = await rows.get_delivery(db, tenant_id, webhook_id, delivery_id)
    if found is None:
        raise NotFound("Delivery not found")
    return found


async def replay_delivery(db: Store, actor: Principal, tenant_id: str, webhook_id: str,
                          delivery_id: int, *, now: float, ip: str = "") -> Delivery:
    """Send one event again, with its original webhook-id (receivers may drop it as a
    duplicate if they processed it): a finished delivery starts a fresh retry schedule."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Delivery:
        _must(conn, tenant_id, webhook_id)
        before = rows.get_delivery_sync(conn, tenant_id, webhook_id, delivery_id)
        if before is None:
            raise NotFound("Delivery not found")
        rows.replay_one(conn, tenant_id, webhook_id, delivery_id, stamp)
        audit.record(conn, actor, "webhook.replayed", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=webhook_id,
                     detail={"delivery_id": delivery_id, "event_id": before.event_id,
                             "was": before.status}, ip=ip)
        after = rows.get_delivery_sync(conn, tenant_id, webhook_id, delivery_id)
        assert after is not None
        return after

    return await db.write(write)


async def replay_since(db: Store, actor: Principal, tenant_id: str, webhook_id: str,
                       since: str, *, only_failed: bool = False, now: float, ip: str = ""
                       ) -> int:
    """Send again every delivered (unless `only_failed`) and failed event of this webhook
    created at or after `since`, in their original order. Returns how many."""
    start = parse_since(since)
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> int:
        _must(conn, tenant_id, webhook_id)
        count = rows.replay_since(conn, tenant_id, webhook_id, start, stamp,
                                  only_failed=only_failed)
        audit.record(conn, actor, "webhook.replayed", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=webhook_id,
                     detail={"since": start, "only_failed": only_failed, "count": count}, ip=ip)
        return count

    return await db.write(write)


async def send_test(db: Store, actor: Principal, tenant_id: str, webhook_id: str, *,
                    now: float, ip: str = "") -> Delivery:
    """Queue a `webhook.test` event for this webhook only (after what it already has queued)."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Delivery:
        hook = _must(conn, tenant_id, webhook_id)
        if not hook.enabled:
            raise Conflict("The webhook is disabled: enable it to send a test event",
                           {"enabled": False})
        delivery_id = outbox.enqueue_test(conn, tenant_id, webhook_id, now=stamp)
        audit.record(conn, actor, "webhook.tested", at=stamp, tenant_id=tenant_id,
                     object_type="webhook", object_id=webhook_id,
                     detail={"delivery_id": delivery_id}, ip=ip)
        found = rows.get_delivery_sync(conn, tenant_id, webhook_id, delivery_id)
        assert found is not None
        return found

    return await db.write(write)
