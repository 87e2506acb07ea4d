"""Creating, changing and moving campaigns through their states, one transaction each.

    draft → scheduled → running ⇄ paused → completed | cancelled | failed

(`now` campaigns go from draft straight to running; a recurring campaign goes back from
running to scheduled after each run). Every state change writes its webhook event
(`campaign.*`) and, when a person asked for it, its audit entry in the same transaction.
Starting a run takes its audience into `campaign_recipients` in that transaction too, so a
run either has all its recipients or has not started.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from whatsdex.campaigns import audience as audiences
from whatsdex.campaigns import pacing as pacings
from whatsdex.campaigns import schedule as schedules
from whatsdex.campaigns.audience import Audience
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.campaigns.schedule import Schedule
from whatsdex.clock import iso, parse_iso
from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import audit, limits
from whatsdex.identity.principal import Principal
from whatsdex.messaging.outbox import MAX_TYPING
from whatsdex.store import Store, wa_sessions
from whatsdex.store import campaigns as rows
from whatsdex.store import templates as template_rows
from whatsdex.store import tenants as tenant_rows
from whatsdex.store.campaigns import Campaign, NewRecipient
from whatsdex.store.ids import new_id
from whatsdex.templates import syntax
from whatsdex.webhooks import outbox as webhook_outbox

NAME_MAX = 100
MAX_NUMBERS = 20
# Why recipients are skipped (statistics group by these).
NO_ADDRESS = "no valid WhatsApp number"
CANCELLED = "the campaign was cancelled"
OPTED_OUT = "opted out"
CONTACT_GONE = "the contact was deleted"


class CampaignInput(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    template_id: str
    session_ids: list[str]
    audience: Audience = msgspec.field(default_factory=Audience)
    schedule: Schedule = msgspec.field(default_factory=Schedule)
    window: Window | None = None
    pacing: Pacing = msgspec.field(default_factory=Pacing)
    typing_seconds: float = 0.0


class CampaignPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields sent change; `"window": null` removes the send window."""

    name: str | UnsetType = UNSET
    template_id: str | UnsetType = UNSET
    session_ids: list[str] | UnsetType = UNSET
    audience: Audience | UnsetType = UNSET
    schedule: Schedule | UnsetType = UNSET
    window: Window | UnsetType | None = UNSET
    pacing: Pacing | UnsetType = UNSET
    typing_seconds: float | UnsetType = UNSET


@dataclass(frozen=True, slots=True)
class Changed:
    """A state change as committed, for the caller to announce (bus, scheduler, runner)."""

    campaign: Campaign
    previous: str


# -- Validation ------------------------------------------------------------------------------------

def _name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned or len(cleaned) > NAME_MAX:
        raise BadRequest(f"The name must have 1 to {NAME_MAX} characters", {"field": "name"})
    return cleaned


def _typing(seconds: float) -> float:
    if not 0 <= seconds <= MAX_TYPING:
        raise BadRequest(f"`typing_seconds` must be between 0 and {MAX_TYPING:g}",
                         {"field": "typing_seconds"})
    return float(seconds)


def _template(conn: sqlite3.Connection, tenant_id: str, template_id: str
              ) -> template_rows.MessageTemplate:
    template = template_rows.get_sync(conn, tenant_id, template_id)
    if template is None:
        raise NotFound("Template not found", {"field": "template_id"})
    return template


def _numbers(conn: sqlite3.Connection, tenant_id: str, session_ids: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(s.strip() for s in session_ids if s.strip()))
    if not unique:
        raise BadRequest("Choose at least one number to send from", {"field": "session_ids"})
    if len(unique) > MAX_NUMBERS:
        raise BadRequest(f"At most {MAX_NUMBERS} numbers per campaign", {"field": "session_ids"})
    for session_id in unique:
        if wa_sessions.get_sync(conn, tenant_id, session_id) is None:
            raise NotFound(f"Number {session_id!r} not found", {"field": "session_ids"})
    return unique


def tenant_timezone(conn: sqlite3.Connection, tenant_id: str) -> str:
    tenant = tenant_rows.get_tenant_sync(conn, tenant_id)
    return tenant.timezone if tenant is not None else "UTC"


def timezone_of(conn: sqlite3.Connection, campaign: Campaign) -> str:
    return campaign.timezone or tenant_timezone(conn, campaign.tenant_id)


def settings_of(campaign: Campaign) -> tuple[Audience, Pacing, Window | None]:
    return (audiences.from_stored(campaign.audience), msgspec.convert(campaign.pacing, Pacing),
            pacings.window_from(campaign.send_window))


def schedule_of(campaign: Campaign) -> Schedule:
    return Schedule(kind=campaign.schedule_kind,  # type: ignore[arg-type]
                    at=campaign.schedule_at, cron=campaign.schedule_cron,
                    timezone=campaign.timezone)


def _fields(conn: sqlite3.Connection, tenant_id: str, data: CampaignInput) -> dict[str, Any]:
    """Validated settings, template and numbers of this workspace included."""
    when = schedules.clean(data.schedule, default_timezone=tenant_timezone(conn, tenant_id))
    window = pacings.clean_window(data.window)
    return {
        "name": _name(data.name),
        "audience": msgspec.to_builtins(audiences.clean(data.audience)),
        "schedule_kind": when.kind, "schedule_at": when.at, "schedule_cron": when.cron,
        "timezone": when.timezone,
        "send_window": msgspec.to_builtins(window) if window is not None else {},
        "pacing": msgspec.to_builtins(pacings.clean_pacing(data.pacing)),
        "typing_seconds": _typing(data.typing_seconds),
        "template_id": _template(conn, tenant_id, data.template_id.strip()).id,
        "session_ids": _numbers(conn, tenant_id, data.session_ids),
    }


def _audit(conn: sqlite3.Connection, actor: Principal, action: str, campaign: Campaign, *,
           at: str, ip: str, detail: dict[str, Any] | None = None) -> None:
    audit.record(conn, actor, action, at=at, tenant_id=campaign.tenant_id,
                 object_type="campaign", object_id=campaign.id,
                 detail={"name": campaign.name, **(detail or {})}, ip=ip)


def _must(conn: sqlite3.Connection, tenant_id: str, campaign_id: str) -> Campaign:
    campaign = rows.get_sync(conn, tenant_id, campaign_id)
    if campaign is None:
        raise NotFound("Campaign not found")
    return campaign


# -- Reading ---------------------------------------------------------------------------------------

async def get(db: Store, tenant_id: str, campaign_id: str) -> Campaign:
    campaign = await rows.get(db, tenant_id, campaign_id)
    if campaign is None:
        raise NotFound("Campaign not found")
    return campaign


async def list_campaigns(db: Store, tenant_id: str, status: str | None = None
                         ) -> list[Campaign]:
    if status is not None and status not in rows.STATUSES:
        raise BadRequest(f"`status` must be one of {', '.join(rows.STATUSES)}",
                         {"field": "status"})
    return await rows.list_for_tenant(db, tenant_id, status)


# -- Drafts ----------------------------------------------------------------------------------------

async def create(db: Store, actor: Principal, tenant_id: str, data: CampaignInput, *,
                 now: float, ip: str = "") -> Campaign:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Campaign:
        campaign = Campaign(
            id=new_id("cmp"), tenant_id=tenant_id, message={}, status="draft",
            status_reason="", targeted=0, sent=0, failed=0, skipped=0, excluded=0, runs=0,
            next_run_at=None, created_by=actor.label, created_at=stamp, updated_at=stamp,
            started_at=None, finished_at=None,
            **_fields(conn, tenant_id, data))
        rows.insert(conn, campaign)
        _audit(conn, actor, "campaign.created", campaign, at=stamp, ip=ip)
        return campaign

    return await db.write(write)


async def update(db: Store, actor: Principal, tenant_id: str, campaign_id: str,
                 patch: CampaignPatch, *, now: float, ip: str = "") -> Campaign:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Campaign:
        before = _must(conn, tenant_id, campaign_id)
        if before.status != "draft":
            raise Conflict(f"Only a draft can be changed; this campaign is {before.status}",
                           {"status": before.status})
        audience, pacing, window = settings_of(before)
        merged = CampaignInput(
            name=before.name if patch.name is UNSET else patch.name,
            template_id=(before.template_id or "") if patch.template_id is UNSET
            else patch.template_id,
            session_ids=before.session_ids if patch.session_ids is UNSET
            else patch.session_ids,
            audience=audience if patch.audience is UNSET else patch.audience,
            schedule=schedule_of(before) if patch.schedule is UNSET else patch.schedule,
            window=window if patch.window is UNSET else patch.window,
            pacing=pacing if patch.pacing is UNSET else patch.pacing,
            typing_seconds=before.typing_seconds if patch.typing_seconds is UNSET
            else patch.typing_seconds)
        fields = _fields(conn, tenant_id, merged)
        rows.update(conn, tenant_id, campaign_id, stamp, **fields)
        after = _must(conn, tenant_id, campaign_id)
        changed = [name for name in rows.UPDATABLE if getattr(before, name) != getattr(after, name)]
        _audit(conn, actor, "campaign.updated", after, at=stamp, ip=ip,
               detail={"changed": changed})
        return after

    return await db.write(write)


async def delete(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *,
                 now: float, ip: str = "") -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        campaign = _must(conn, tenant_id, campaign_id)
        if campaign.status in rows.ACTIVE:
            raise Conflict(f"The campaign is {campaign.status}: cancel it first, then delete it",
                           {"status": campaign.status})
        rows.delete(conn, tenant_id, campaign_id)
        _audit(conn, actor, "campaign.deleted", campaign, at=stamp, ip=ip,
               detail={"status": campaign.status, "sent": campaign.sent})

    await db.write(write)


# -- Runs ------------------------------------------------------------------------------------------

def event_data(campaign: Campaign, previous: str, at: str) -> dict[str, Any]:
    """The `data` of `campaign.*` webhook events."""
    return {"id": campaign.id, "name": campaign.name, "status": campaign.status,
            "previous": previous, "reason": campaign.status_reason, "run": campaign.runs,
            "targeted": campaign.targeted, "sent": campaign.sent, "failed": campaign.failed,
            "skipped": campaign.skipped, "at": at}


def _announce(conn: sqlite3.Connection, campaign: Campaign, previous: str, event: str | None,
              at: str) -> Changed:
    if event is not None:
        webhook_outbox.enqueue(conn, campaign.tenant_id, event,
                               event_data(campaign, previous, at), now=at)
    return Changed(campaign=campaign, previous=previous)


def _message_of(conn: sqlite3.Connection, campaign: Campaign) -> dict[str, Any]:
    """The template as this run sends it (later edits do not change a running campaign)."""
    if campaign.template_id is None:
        raise Conflict("The campaign's template was deleted: choose another one",
                       {"field": "template_id"})
    template = _template(conn, campaign.tenant_id, campaign.template_id)
    parsed = syntax.parse(template.body)
    if parsed.problems:  # saved templates are checked; an old one may not have been
        raise syntax.TemplateInvalid(parsed.problems)
    return {"template": template.name, "body": template.body, "media_id": template.media_id,
            "media_kind": template.media_kind, "filename": template.filename}


def snapshot(conn: sqlite3.Connection, campaign: Campaign, now: str) -> tuple[int, int, int]:
    """Take the audience into recipients: (added, skipped for no number, left out opted out).

    Each new recipient goes to the number with the fewest recipients of this campaign so far
    (round robin for a first run) and stays there.
    """
    audience = audiences.from_stored(campaign.audience)
    candidates = rows.audience(conn, campaign.tenant_id, campaign.id,
                               audiences.as_filter(audience))
    load = rows.load_by_session(conn, campaign.id)
    numbers = [s for s in campaign.session_ids
               if wa_sessions.get_sync(conn, campaign.tenant_id, s) is not None]
    if not numbers:
        raise Conflict("None of the campaign's numbers exists any more: choose another one",
                       {"field": "session_ids"})
    counts = {s: load.get(s, 0) for s in numbers}
    seq = rows.next_seq(conn, campaign.id)
    added: list[NewRecipient] = []
    excluded = no_address = 0
    for candidate in candidates:
        if candidate.opted_out:
            excluded += 1
            continue
        address = audiences.address_of(candidate)
        number = min(numbers, key=counts.__getitem__)
        counts[number] += 1
        if address is None:
            no_address += 1
        added.append(NewRecipient(contact_id=candidate.contact_id, seq=seq, session_id=number,
                                  address=address or candidate.phone or candidate.lid,
                                  status="pending" if address else "skipped",
                                  reason="" if address else NO_ADDRESS))
        seq += 1
    rows.insert_recipients(conn, campaign.tenant_id, campaign.id, added, now)
    rows.add_counts(conn, campaign.id, targeted=len(added), skipped=no_address, now=now)
    rows.set_excluded(conn, campaign.id, excluded)
    return len(added), no_address, excluded


def _begin_run(conn: sqlite3.Connection, campaign: Campaign, previous: str, at: str
               ) -> Changed:
    """scheduled/draft → running, with this run's recipients; same transaction."""
    message = _message_of(conn, campaign)
    if not rows.set_status(conn, campaign.tenant_id, campaign.id, status="running", reason="",
                           now=at, expected=(previous,), started=True, message=message,
                           run=True):
        raise Conflict(f"The campaign is no longer {previous}")
    snapshot(conn, campaign, at)
    return _announce(conn, _must(conn, campaign.tenant_id, campaign.id), previous,
                     "campaign.started", at)


async def start(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *, now: float,
                ip: str = "") -> Changed:
    """Draft → running (`now`, or an `at` already past) or scheduled; the plan's number of
    active campaigns is checked here."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Changed:
        campaign = _must(conn, tenant_id, campaign_id)
        if campaign.status != "draft":
            raise Conflict(f"Only a draft can be started; this campaign is {campaign.status}",
                           {"status": campaign.status})
        limits.enforce(conn, tenant_id, "max_active_campaigns",
                       rows.count_active(conn, tenant_id))
        _message_of(conn, campaign)
        _numbers(conn, tenant_id, campaign.session_ids)
        _audit(conn, actor, "campaign.started", campaign, at=stamp, ip=ip,
               detail={"schedule": campaign.schedule_kind})
        due = schedules.next_run(campaign, timezone_of(conn, campaign), now)
        if campaign.schedule_kind == "now" or (
                campaign.schedule_kind == "at" and due is not None and parse_iso(due) <= now):
            return _begin_run(conn, campaign, "draft", stamp)
        rows.set_status(conn, tenant_id, campaign_id, status="scheduled", reason="", now=stamp,
                        expected=("draft",), next_run_at=due)
        return _announce(conn, _must(conn, tenant_id, campaign_id), "draft", None, stamp)

    return await db.write(write)


async def fire(db: Store, campaign_id: str, *, now: float) -> Changed | None:
    """A scheduled campaign's time came: it runs (None when it is no longer scheduled). A
    campaign that cannot run any more (its template or numbers are gone) fails instead."""
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Changed | None:
        row = conn.execute("SELECT tenant_id FROM campaigns WHERE id = ?",
                           (campaign_id,)).fetchone()
        if row is None:
            return None
        campaign = _must(conn, str(row[0]), campaign_id)
        if campaign.status != "scheduled":
            return None
        conn.execute("SAVEPOINT fire")
        try:
            changed = _begin_run(conn, campaign, "scheduled", stamp)
        except (Conflict, NotFound, BadRequest) as exc:
            conn.execute("ROLLBACK TO fire")
            conn.execute("RELEASE fire")
            return fail(conn, campaign, exc.message, stamp)
        conn.execute("RELEASE fire")
        return changed

    return await db.write(write)


def fail(conn: sqlite3.Connection, campaign: Campaign, reason: str, at: str) -> Changed | None:
    """The campaign cannot go on; its pending recipients are not sent to."""
    if not rows.set_status(conn, campaign.tenant_id, campaign.id, status="failed",
                           reason=reason, now=at, expected=rows.ACTIVE, finished=True):
        return None
    skipped = rows.skip_pending(conn, campaign.id, f"the campaign failed: {reason}", at)
    rows.add_counts(conn, campaign.id, skipped=skipped, now=at)
    return _announce(conn, _must(conn, campaign.tenant_id, campaign.id), campaign.status,
                     "campaign.failed", at)


def finish(conn: sqlite3.Connection, campaign: Campaign, at: str, timezone: str
           ) -> Changed | None:
    """Every recipient of the run is done: completed, or (cron) scheduled for the next run.
    None when someone is still open (the caller looked too early) or it is not running."""
    if rows.has_open(conn, campaign.id):
        return None
    recurring = campaign.schedule_kind == "cron"
    status = "scheduled" if recurring else "completed"
    due = schedules.next_run(campaign, timezone, parse_iso(at)) if recurring else None
    if not rows.set_status(conn, campaign.tenant_id, campaign.id, status=status, reason="",
                           now=at, expected=("running",), finished=not recurring,
                           next_run_at=due):
        return None
    return _announce(conn, _must(conn, campaign.tenant_id, campaign.id), "running",
                     "campaign.completed", at)


async def pause(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *, now: float,
                ip: str = "") -> Changed:
    return await _move(db, actor, tenant_id, campaign_id, now=now, ip=ip, to="paused",
                       expected=("running",), event="campaign.paused")


async def resume(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *, now: float,
                 ip: str = "") -> Changed:
    return await _move(db, actor, tenant_id, campaign_id, now=now, ip=ip, to="running",
                       expected=("paused",), event="campaign.resumed")


async def cancel(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *, now: float,
                 ip: str = "") -> Changed:
    """Nobody else is sent to; messages already handed to the outbox still go out."""
    return await _move(db, actor, tenant_id, campaign_id, now=now, ip=ip, to="cancelled",
                       expected=rows.ACTIVE, event="campaign.cancelled")


async def _move(db: Store, actor: Principal, tenant_id: str, campaign_id: str, *, now: float,
                ip: str, to: str, expected: Sequence[str], event: str) -> Changed:
    stamp = iso(now)
    verb = {"paused": "paused", "running": "resumed", "cancelled": "cancelled"}[to]

    def write(conn: sqlite3.Connection) -> Changed:
        campaign = _must(conn, tenant_id, campaign_id)
        if campaign.status not in expected:
            raise Conflict(f"A {campaign.status} campaign cannot be {verb}",
                           {"status": campaign.status})
        rows.set_status(conn, tenant_id, campaign_id, status=to, reason="", now=stamp,
                        expected=expected, finished=to == "cancelled",
                        next_run_at=campaign.next_run_at if to != "cancelled" else None)
        if to == "cancelled":
            skipped = rows.skip_pending(conn, campaign_id, CANCELLED, stamp)
            rows.add_counts(conn, campaign_id, skipped=skipped, now=stamp)
        _audit(conn, actor, f"campaign.{verb}", campaign, at=stamp, ip=ip)
        return _announce(conn, _must(conn, tenant_id, campaign_id), campaign.status, event,
                         stamp)

    return await db.write(write)
