"""Campaigns in the dashboard: the list with live progress bars, the create/edit form (with a
live audience count), and a campaign's page with live progress, its funnel and hourly chart
(server-rendered SVG), failure reasons, recipients and the CSV export.

Live parts follow the house pattern: `/campaigns/events` streams the tenant's campaign events
(htmx SSE), each live part re-fetches itself on them and also polls, answering 204 while
nothing changed, so a dropped stream costs seconds, not correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage, Stream, Template

from whatsdex.bus import BusEvent
from whatsdex.campaigns import audience as audiences
from whatsdex.campaigns import pacing as pacings
from whatsdex.campaigns import service, stats
from whatsdex.campaigns.audience import Audience
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.campaigns.schedule import Schedule
from whatsdex.clock import parse_iso
from whatsdex.errors import BadRequest, WhatsdexError
from whatsdex.identity import logins
from whatsdex.identity.tenants import get_tenant
from whatsdex.services import Services
from whatsdex.store import contact_lists, wa_sessions
from whatsdex.store import templates as template_rows
from whatsdex.store.campaigns import RECIPIENT_STATUSES, Campaign
from whatsdex.web.api.campaigns import engine_of, recipients_csv
from whatsdex.web.api.events import event_stream, sse
from whatsdex.web.auth import SESSION_COOKIE, client_ip, principal_of, requires_member, tenant_id_of
from whatsdex.web.ui.workspace import go, is_htmx, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
Seen = Annotated[str, QueryParameter(description="What the page shows now", max_length=200)]
StatusQ = Annotated[str | None, QueryParameter(max_length=20)]
CursorQ = Annotated[int | None, QueryParameter(ge=0)]

RECIPIENT_ROWS = 50
BADGES = {"draft": "badge-muted", "scheduled": "badge-info", "running": "badge-connecting",
          "paused": "badge-warning", "completed": "badge-success",
          "cancelled": "badge-stopped", "failed": "badge-failed"}
RECIPIENT_BADGES = {"pending": "badge-muted", "sending": "badge-queued", "sent": "badge-sent",
                    "failed": "badge-failed", "skipped": "badge-stopped"}
ACCENT = "#0f766e"
BAR_COLOURS = ("#0f766e", "#138a80", "#1f9d8f", "#3cb3a3", "#6cc9bb")


# -- Form --------------------------------------------------------------------------------------

def _getall(form: FormMultiDict, name: str) -> list[str]:
    return [value for value in form.getall(name, []) if isinstance(value, str) and value]


def _number(form: FormMultiDict, name: str, field: str, *, whole: bool = False) -> float:
    raw = text(form, name).strip()
    if not raw:
        return 0.0
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise BadRequest(f"`{field}` must be {kind}", {"field": field}) from None
    return float(value)


def _custom(raw: str) -> dict[str, str]:
    """`key=value` lines: custom fields the audience must have equal to a value."""
    custom: dict[str, str] = {}
    for line in raw.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BadRequest(f"Write custom fields as key=value: {line.strip()!r}",
                             {"field": "audience.custom"})
        custom[key.strip()] = value.strip()
    return custom


def audience_of(form: FormMultiDict) -> Audience:
    return Audience(tags_any=_getall(form, "tags_any"), tags_all=_getall(form, "tags_all"),
                    opt_status=_getall(form, "opt_status"),  # type: ignore[arg-type]
                    custom=_custom(text(form, "custom")))


def input_of(form: FormMultiDict) -> service.CampaignInput:
    window = None
    if text(form, "window_on"):
        window = Window(days=[int(d) for d in _getall(form, "window_days") if d.isdigit()],
                        start=text(form, "window_start") or "09:00",
                        end=text(form, "window_end") or "18:00")
    kind = text(form, "schedule_kind") or "now"
    if kind not in ("now", "at", "cron"):
        raise BadRequest("Choose when the campaign starts", {"field": "schedule.kind"})
    return service.CampaignInput(
        name=text(form, "name"), template_id=text(form, "template_id"),
        session_ids=_getall(form, "session_ids"), audience=audience_of(form),
        schedule=Schedule(kind=kind,  # type: ignore[arg-type]
                          at=text(form, "schedule_at") or None,
                          cron=text(form, "schedule_cron"), timezone=text(form, "timezone")),
        window=window,
        pacing=Pacing(min_gap=_number(form, "min_gap", "pacing.min_gap"),
                      max_gap=_number(form, "max_gap", "pacing.max_gap"),
                      daily_cap=int(_number(form, "daily_cap", "pacing.daily_cap", whole=True)),
                      warmup_start=int(_number(form, "warmup_start", "pacing.warmup_start",
                                               whole=True)),
                      warmup_increase=int(_number(form, "warmup_increase",
                                                  "pacing.warmup_increase", whole=True))),
        typing_seconds=_number(form, "typing_seconds", "typing_seconds"))


def _local_input(stamp: str | None, timezone: str) -> str:
    """A UTC moment as a datetime-local field shows it: wall-clock time in the time zone."""
    if not stamp:
        return ""
    moment = datetime.fromtimestamp(parse_iso(stamp), pacings.zone(timezone, "timezone"))
    return f"{moment:%Y-%m-%dT%H:%M}"


def _values(campaign: Campaign | None, tenant_timezone: str) -> dict[str, Any]:
    """What the form shows: a campaign's settings, or the defaults for a new one."""
    if campaign is None:
        return {"name": "", "template_id": "", "session_ids": [], "tags_any": [],
                "tags_all": [], "opt_status": ["unknown", "opted_in"], "custom": "",
                "schedule_kind": "now", "schedule_at": "", "schedule_cron": "", "timezone": "",
                "window": None, "pacing": Pacing(min_gap=20, max_gap=60, daily_cap=200),
                "typing_seconds": 0.0}
    audience, pacing, window = service.settings_of(campaign)
    return {"name": campaign.name, "template_id": campaign.template_id or "",
            "session_ids": campaign.session_ids, "tags_any": audience.tags_any,
            "tags_all": audience.tags_all, "opt_status": audience.opt_status,
            "custom": "\n".join(f"{k}={v}" for k, v in audience.custom.items()),
            "schedule_kind": campaign.schedule_kind,
            "schedule_at": _local_input(campaign.schedule_at,
                                        campaign.timezone or tenant_timezone),
            "timezone": campaign.timezone,
            "schedule_cron": campaign.schedule_cron, "window": window, "pacing": pacing,
            "typing_seconds": campaign.typing_seconds}


async def _form_page(request: AnyRequest, services: Services, campaign: Campaign | None
                     ) -> Template:
    tenant_id = tenant_id_of(request)
    tenant = await get_tenant(services.store, tenant_id)
    return page(request, "campaigns/form.html", campaign=campaign,
                values=_values(campaign, tenant.timezone),
                tenant=tenant,
                templates=await template_rows.list_for_tenant(services.store, tenant_id),
                numbers=await wa_sessions.list_for_tenant(services.store, tenant_id),
                tags=await contact_lists.tag_counts(services.store, tenant_id),
                days=list(enumerate(pacings.DAY_NAMES)),
                action=f"/campaigns/{campaign.id}" if campaign else "/campaigns")


def form_error(exc: WhatsdexError) -> Template:
    """A failed save shown above the form's button (app.js swaps 4xx with HX-Retarget)."""
    return Template(template_name="campaigns/_form_error.html",
                    context={"message": exc.message, "detail": exc.detail},
                    status_code=exc.status_code,
                    headers={"HX-Retarget": "#form-result", "HX-Reswap": "innerHTML"})


# -- Charts (server-rendered SVG: presentation attributes, no style attributes) -------------------

@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int
    fill: str
    title: str
    note: str = ""


# Drawn about as wide as they are shown (half a page), so the text keeps its size.
FUNNEL_W, FUNNEL_ROW, FUNNEL_LABEL = 420.0, 30.0, 76.0


def funnel_bars(found: stats.Stats) -> list[Bar]:
    room = FUNNEL_W - FUNNEL_LABEL - 84.0
    bars = []
    for i, step in enumerate(found.funnel):
        width = max(2.0, room * step.share) if step.value else 0.0
        bars.append(Bar(x=FUNNEL_LABEL, y=8 + i * FUNNEL_ROW, width=round(width, 1),
                        height=FUNNEL_ROW - 10, label=step.label, value=step.value,
                        fill=BAR_COLOURS[i % len(BAR_COLOURS)],
                        title=f"{step.label}: {step.value} ({step.share:.0%})",
                        note=f"{step.value} ({step.share:.0%})" if i else str(step.value)))
    return bars


CHART_W, CHART_H, CHART_LEFT, CHART_BOTTOM, CHART_TOP = 420.0, 180.0, 40.0, 28.0, 12.0
MAX_BAR = 40.0


def hour_bars(found: stats.Stats, timezone: str) -> tuple[list[Bar], list[tuple[float, str]], int]:
    """Bars of messages sent per hour, x labels (position, local hour) and the y maximum."""
    hours = found.hourly
    if not hours:
        return [], [], 0
    tz = pacings.zone(timezone, "timezone")
    top = max(n for _, n in hours) or 1
    plot_w = CHART_W - CHART_LEFT - 8
    plot_h = CHART_H - CHART_BOTTOM - CHART_TOP
    slot = plot_w / len(hours)
    bars, labels = [], []
    every = max(1, len(hours) // 6)
    for i, (start, count) in enumerate(hours):
        local = datetime.fromtimestamp(start, tz)
        height = plot_h * count / top
        width = min(slot * 0.8, MAX_BAR)
        bars.append(Bar(x=round(CHART_LEFT + i * slot + (slot - width) / 2, 1),
                        y=round(CHART_TOP + plot_h - height, 1), width=round(width, 1),
                        height=round(height, 1), label=f"{local:%H}:00", value=count,
                        fill=ACCENT, title=f"{local:%Y-%m-%d %H}:00: {count} sent"))
        if i % every == 0:
            shown = f"{local:%d %b %H}h" if i == 0 or local.hour == 0 else f"{local:%H}h"
            labels.append((round(CHART_LEFT + (i + 0.5) * slot, 1), shown))
    return bars, labels, top


# -- Contexts --------------------------------------------------------------------------------------

def signature(campaign: Campaign) -> str:
    """Changes whenever the panel would look different."""
    return (f"{campaign.status}:{campaign.targeted}:{campaign.sent}:{campaign.failed}:"
            f"{campaign.skipped}:{campaign.updated_at}")


async def _panel_context(services: Services, campaign: Campaign) -> dict[str, Any]:
    names = {n.id: n.name for n in await wa_sessions.list_for_tenant(services.store,
                                                                      campaign.tenant_id)}
    return {"c": campaign, "badges": BADGES, "seen": signature(campaign),
            "numbers": [(s, names.get(s, "deleted number")) for s in campaign.session_ids],
            "in_progress": campaign.targeted - campaign.done}


async def _report_context(services: Services, campaign: Campaign) -> dict[str, Any]:
    found = await stats.stats(services.store, campaign)
    tenant = await get_tenant(services.store, campaign.tenant_id)
    timezone = campaign.timezone or tenant.timezone
    funnel = funnel_bars(found)
    hours, labels, top = hour_bars(found, timezone)
    return {"c": campaign, "s": found, "funnel": funnel, "hours": hours,
            "hour_labels": labels, "hour_top": top, "timezone": timezone,
            "chart": {"w": CHART_W, "h": CHART_H, "left": CHART_LEFT, "top": CHART_TOP,
                      "bottom": CHART_H - CHART_BOTTOM},
            "funnel_h": 8 + len(funnel) * FUNNEL_ROW, "funnel_w": FUNNEL_W}


async def _recipients_context(services: Services, tenant_id: str, campaign: Campaign,
                              status: str | None, cursor: int | None) -> dict[str, Any]:
    if status is not None and status not in RECIPIENT_STATUSES:
        status = None
    found = await stats.recipients(services.store, tenant_id, campaign.id, status=status,
                                   after=cursor, limit=RECIPIENT_ROWS + 1)
    more = len(found) > RECIPIENT_ROWS
    items = found[:RECIPIENT_ROWS]
    names = {n.id: n.name for n in await wa_sessions.list_for_tenant(services.store,
                                                                      campaign.tenant_id)}
    query = f"&status={status}" if status else ""
    next_url = (f"/campaigns/{campaign.id}/recipients?cursor={items[-1].seq}{query}"
                if more and items else None)
    here = f"/campaigns/{campaign.id}/recipients" + (f"?status={status}" if status else "")
    return {"c": campaign, "recipients": items, "next_url": next_url, "status": status,
            "badges": RECIPIENT_BADGES, "statuses": RECIPIENT_STATUSES, "here": here,
            "number_names": names,
            # Until it ends, the first page follows the run (a page loaded further stays).
            "live": campaign.status not in ("completed", "cancelled", "failed")}


# -- Pages -----------------------------------------------------------------------------------------

@get("/campaigns")
async def campaigns_page(request: AnyRequest, services: ServicesDep) -> Template:
    tenant_id = tenant_id_of(request)
    return page(request, "campaigns/list.html", badges=BADGES,
                campaigns=await service.list_campaigns(services.store, tenant_id))


@get("/campaigns/rows")
async def campaign_rows(request: AnyRequest, services: ServicesDep) -> Template:
    return partial("campaigns/_rows.html", badges=BADGES, campaigns=await service.list_campaigns(
        services.store, tenant_id_of(request)))


@get("/campaigns/new")
async def new_campaign(request: AnyRequest, services: ServicesDep) -> Template:
    return await _form_page(request, services, None)


@post("/campaigns")
async def create_campaign(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    try:
        campaign = await service.create(
            services.store, principal_of(request), tenant_id_of(request),
            input_of(await request.form()), now=services.clock(), ip=client_ip(request))
    except WhatsdexError as exc:
        if not is_htmx(request):
            raise
        return form_error(exc)
    return go(request, f"/campaigns/{campaign.id}")


@post("/campaigns/audience-count", status_code=200)
async def audience_count(request: AnyRequest, services: ServicesDep) -> Template:
    try:
        found = await audiences.count(services.store, tenant_id_of(request),
                                      audience_of(await request.form()))
    except BadRequest as exc:
        return partial("campaigns/_audience_count.html", found=None, problem=exc.message)
    return partial("campaigns/_audience_count.html", found=found, problem="")


@get("/campaigns/{campaign_id:str}")
async def campaign_page(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                        ) -> Template:
    tenant_id = tenant_id_of(request)
    campaign = await service.get(services.store, tenant_id, campaign_id)
    context = await _panel_context(services, campaign)
    context.update(await _report_context(services, campaign))
    context.update(await _recipients_context(services, tenant_id, campaign, None, None))
    template = (await template_rows.get(services.store, tenant_id, campaign.template_id)
                if campaign.template_id else None)
    _, pacing, window = service.settings_of(campaign)
    return page(request, "campaigns/campaign.html", template=template, pacing=pacing,
                window_text=pacings.describe_window(window), **context)


@get("/campaigns/{campaign_id:str}/edit")
async def edit_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                        ) -> Response[Any]:
    campaign = await service.get(services.store, tenant_id_of(request), campaign_id)
    if campaign.status != "draft":
        return go(request, f"/campaigns/{campaign.id}")
    return await _form_page(request, services, campaign)


@post("/campaigns/{campaign_id:str}")
async def update_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> Response[Any]:
    data = input_of(await request.form())
    patch = service.CampaignPatch(
        name=data.name, template_id=data.template_id, session_ids=data.session_ids,
        audience=data.audience, schedule=data.schedule, window=data.window,
        pacing=data.pacing, typing_seconds=data.typing_seconds)
    try:
        await service.update(services.store, principal_of(request), tenant_id_of(request),
                             campaign_id, patch, now=services.clock(), ip=client_ip(request))
    except WhatsdexError as exc:
        if not is_htmx(request):
            raise
        return form_error(exc)
    return go(request, f"/campaigns/{campaign_id}")


@delete("/campaigns/{campaign_id:str}", status_code=200)
async def delete_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> Response[Any]:
    await service.delete(services.store, principal_of(request), tenant_id_of(request),
                         campaign_id, now=services.clock(), ip=client_ip(request))
    return go(request, "/campaigns")


async def _act(request: AnyRequest, services: Services, campaign_id: str, action: str
               ) -> Template:
    engine = engine_of(services)
    act = {"start": engine.start_campaign, "pause": engine.pause, "resume": engine.resume,
           "cancel": engine.cancel}[action]
    campaign = await act(principal_of(request), tenant_id_of(request), campaign_id,
                         client_ip(request))
    notices = {"start": "Campaign started" if campaign.status == "running"
               else "Campaign scheduled", "pause": "Campaign paused",
               "resume": "Campaign resumed", "cancel": "Campaign cancelled"}
    return partial("campaigns/_panel.html", notice=notices[action],
                   **await _panel_context(services, campaign))


@post("/campaigns/{campaign_id:str}/start", status_code=200)
async def start_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                         ) -> Template:
    return await _act(request, services, campaign_id, "start")


@post("/campaigns/{campaign_id:str}/pause", status_code=200)
async def pause_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                         ) -> Template:
    return await _act(request, services, campaign_id, "pause")


@post("/campaigns/{campaign_id:str}/resume", status_code=200)
async def resume_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> Template:
    return await _act(request, services, campaign_id, "resume")


@post("/campaigns/{campaign_id:str}/cancel", status_code=200)
async def cancel_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> Template:
    return await _act(request, services, campaign_id, "cancel")


@get("/campaigns/{campaign_id:str}/panel")
async def campaign_panel(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str],
                         seen: Seen = "") -> Response[Any]:
    campaign = await service.get(services.store, tenant_id_of(request), campaign_id)
    if is_htmx(request) and seen and seen == signature(campaign):
        return Response(b"", status_code=204)
    return partial("campaigns/_panel.html", notice="", **await _panel_context(services, campaign))


@get("/campaigns/{campaign_id:str}/report")
async def campaign_report(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> Template:
    campaign = await service.get(services.store, tenant_id_of(request), campaign_id)
    return partial("campaigns/_report.html", **await _report_context(services, campaign))


@get("/campaigns/{campaign_id:str}/recipients")
async def campaign_recipients(request: AnyRequest, services: ServicesDep,
                              campaign_id: FromPath[str], status: StatusQ = None,
                              cursor: CursorQ = None) -> Template:
    tenant_id = tenant_id_of(request)
    campaign = await service.get(services.store, tenant_id, campaign_id)
    context = await _recipients_context(services, tenant_id, campaign, status, cursor)
    name = "campaigns/_recipient_rows.html" if cursor is not None else "campaigns/_recipients.html"
    return partial(name, **context)


@get("/campaigns/{campaign_id:str}/recipients.csv")
async def campaign_csv(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                       ) -> Stream:
    tenant_id = tenant_id_of(request)
    return recipients_csv(services, tenant_id,
                          await service.get(services.store, tenant_id, campaign_id))


@get("/campaigns/events")
async def campaign_events(request: AnyRequest, services: ServicesDep) -> ServerSentEvent:
    """The tenant's campaign changes: each page re-fetches what it shows (event `campaigns`,
    data: the campaign's id)."""
    tenant_id = tenant_id_of(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")

    async def render(event: BusEvent) -> ServerSentEventMessage | None:
        if event.type in ("campaign.progress", "campaign.status"):
            return ServerSentEventMessage(event="campaigns", data=str(event.data.get("id", "")))
        return None

    async def still_allowed() -> bool:
        try:
            session = await logins.resolve(services.store, cookie, now=services.clock(),
                                           limits=services.session_limits)
        except WhatsdexError:  # the workspace was suspended
            return False
        return session is not None and session.principal.tenant_id == tenant_id

    return sse(event_stream(services.bus, tenant_id, render, still_allowed))


ROUTES: list[Any] = [
    Router(path="/", guards=[requires_member], include_in_schema=False, route_handlers=[
        campaigns_page, campaign_rows, new_campaign, create_campaign, audience_count,
        campaign_events, campaign_page, edit_campaign, update_campaign, delete_campaign,
        start_campaign, pause_campaign, resume_campaign, cancel_campaign, campaign_panel,
        campaign_report, campaign_recipients, campaign_csv,
    ]),
]
