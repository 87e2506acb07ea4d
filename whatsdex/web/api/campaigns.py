"""Campaigns in the JSON API (`/api/v1/campaigns`): drafts, starting, pausing, resuming and
cancelling, per-recipient results (JSON pages and CSV), and statistics.

A campaign is a draft until started; only drafts change or are deleted (finished campaigns
may be deleted too). Starting checks the plan's `max_active_campaigns` (scheduled, running
and paused ones count): 403 naming the limit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import Meta, Struct

from whatsdex.campaigns import audience as audiences
from whatsdex.campaigns import service, stats
from whatsdex.campaigns.audience import Audience
from whatsdex.campaigns.engine import CampaignEngine
from whatsdex.campaigns.pacing import Pacing, Window
from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Unavailable
from whatsdex.services import Services
from whatsdex.store.campaigns import RECIPIENT_STATUSES, REPLY_HOURS, Campaign, RecipientRow
from whatsdex.web.auth import client_ip, principal_of, requires_member, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
MAX_PAGE = 500

Status = Literal["draft", "scheduled", "running", "paused", "completed", "cancelled", "failed"]
RecipientStatus = Literal["pending", "sending", "sent", "failed", "skipped"]


def engine_of(services: Services) -> CampaignEngine:
    """The running campaign engine (`services.campaigns`)."""
    engine = getattr(services, "campaigns", None)
    if not isinstance(engine, CampaignEngine):
        raise Unavailable("Campaigns are not running on this server yet; try again shortly")
    return engine


# -- Bodies ----------------------------------------------------------------------------------------

class ScheduleOut(Struct, kw_only=True):
    kind: Literal["now", "at", "cron"]
    at: Annotated[str | None, Meta(description="UTC")]
    cron: str
    timezone: Annotated[str, Meta(description="'' = the workspace's time zone")]


class CampaignOut(Struct, kw_only=True):
    id: str
    name: str
    template_id: Annotated[str | None, Meta(description="null once the template is deleted")]
    session_ids: list[str]
    audience: Audience
    schedule: ScheduleOut
    window: Window | None
    pacing: Pacing
    typing_seconds: Annotated[float, Meta(description="Typing shown before each message (a "
                                                      "hint to the engine)")]
    status: Status
    status_reason: Annotated[str, Meta(description="Why it waits or failed")]
    targeted: Annotated[int, Meta(description="Recipients taken from the audience")]
    sent: int
    failed: int
    skipped: Annotated[int, Meta(description="Not sent to: opted out meanwhile, no WhatsApp "
                                             "number, or the campaign was cancelled")]
    excluded: Annotated[int, Meta(description="Audience contacts already opted out when the "
                                              "last run started: left out")]
    progress: Annotated[int, Meta(description="Percent of the recipients done with")]
    runs: int
    next_run_at: str | None
    created_by: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, c: Campaign) -> CampaignOut:
        _, pacing, window = service.settings_of(c)
        return cls(
            id=c.id, name=c.name, template_id=c.template_id, session_ids=c.session_ids,
            audience=audiences.from_stored(c.audience),
            schedule=ScheduleOut(kind=c.schedule_kind,  # type: ignore[arg-type]
                                 at=c.schedule_at, cron=c.schedule_cron, timezone=c.timezone),
            window=window, pacing=pacing, typing_seconds=c.typing_seconds,
            status=c.status,  # type: ignore[arg-type]
            status_reason=c.status_reason, targeted=c.targeted, sent=c.sent, failed=c.failed,
            skipped=c.skipped, excluded=c.excluded, progress=c.percent, runs=c.runs,
            next_run_at=c.next_run_at, created_by=c.created_by, created_at=c.created_at,
            updated_at=c.updated_at, started_at=c.started_at, finished_at=c.finished_at)


class AudienceCountOut(Struct, kw_only=True):
    matching: Annotated[int, Meta(description="Contacts the filters select")]
    opted_out: Annotated[int, Meta(description="Of which opted out: never messaged")]
    sendable: int


class RecipientOut(Struct, kw_only=True):
    contact_id: str
    address: Annotated[str, Meta(description="Phone digits (or a LID JID) sent to")]
    name: str
    session_id: Annotated[str, Meta(description="The number assigned to send it")]
    status: RecipientStatus
    reason: str
    message_id: Annotated[str | None, Meta(description="The outbox message (GET "
                                                       "/api/v1/messages/{id})")]
    message_status: str | None
    attempts: int
    queued_at: str | None
    done_at: str | None
    delivered_at: str | None
    read_at: str | None
    replied_at: str | None

    @classmethod
    def of(cls, row: RecipientRow) -> RecipientOut:
        return cls(contact_id=row.contact_id, address=row.address, name=row.name,
                   session_id=row.session_id, status=row.status,  # type: ignore[arg-type]
                   reason=row.reason, message_id=row.message_id,
                   message_status=row.message_status, attempts=row.attempts,
                   queued_at=row.queued_at, done_at=row.done_at, delivered_at=row.delivered_at,
                   read_at=row.read_at, replied_at=row.replied_at)


class RecipientPage(Struct, kw_only=True):
    items: list[RecipientOut]
    next_cursor: Annotated[int | None, Meta(description="Pass as `cursor` for the next page")]


class ReasonCount(Struct, kw_only=True):
    reason: str
    count: int


class HourCount(Struct, kw_only=True):
    hour: Annotated[str, Meta(description="Start of the hour, UTC")]
    sent: int


class StatsOut(Struct, kw_only=True):
    targeted: int
    pending: int
    sending: Annotated[int, Meta(description="Queued in the outbox, not yet sent")]
    sent: int
    delivered: int
    read: int
    replied: Annotated[int, Meta(description=f"Answered within {REPLY_HOURS} h "
                                             "of the send")]
    failed: int
    failed_reasons: list[ReasonCount]
    skipped: int
    skipped_reasons: list[ReasonCount]
    opted_out: Annotated[int, Meta(description="Skipped: opted out while the campaign ran")]
    excluded: Annotated[int, Meta(description="Left out: opted out before the run started")]
    sent_per_hour: list[HourCount]

    @classmethod
    def of(cls, s: stats.Stats) -> StatsOut:
        return cls(
            targeted=s.targeted, pending=s.pending, sending=s.sending, sent=s.handed,
            delivered=s.delivered, read=s.read, replied=s.replied, failed=s.failed,
            failed_reasons=[ReasonCount(reason=r, count=n) for r, n in s.failed_reasons],
            skipped=s.skipped,
            skipped_reasons=[ReasonCount(reason=r, count=n) for r, n in s.skipped_reasons],
            opted_out=s.opted_out, excluded=s.excluded,
            sent_per_hour=[HourCount(hour=iso(h), sent=n) for h, n in s.hourly])


class ErrorOut(Struct, kw_only=True):
    status: int
    message: str
    detail: Any = None


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    described = {
        400: "A field is not valid (named in `detail.field`)",
        403: "The plan's `max_active_campaigns` is reached (`detail.limit`)",
        404: "No such campaign (or template, or number) in this workspace",
        409: "Not possible in the campaign's state (`detail.status`)",
    }
    return {code: ResponseSpec(data_container=ErrorOut, description=described[code],
                               generate_examples=False) for code in codes}


StatusQ = Annotated[Status | None, QueryParameter(description="Only campaigns in this state")]
RecipientStatusQ = Annotated[RecipientStatus | None,
                             QueryParameter(description="Only recipients in this state")]
CursorQ = Annotated[int | None, QueryParameter(ge=0, description="`next_cursor` of the "
                                                                  "previous page")]
LimitQ = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description=f"1-{MAX_PAGE}")]


def recipients_csv(services: Services, tenant_id: str, campaign: Campaign) -> Stream:
    day = datetime.fromtimestamp(services.clock(), UTC).strftime("%Y%m%d")
    return Stream(stats.csv_chunks(services.store, tenant_id, campaign.id),
                  media_type="text/csv",
                  headers={"Content-Disposition":
                           f'attachment; filename="campaign-{campaign.id}-{day}.csv"',
                           "Cache-Control": "no-store"})


async def recipient_page(services: Services, tenant_id: str, campaign_id: str,
                         status: str | None, cursor: int | None, limit: int) -> RecipientPage:
    if status is not None and status not in RECIPIENT_STATUSES:
        raise BadRequest(f"`status` must be one of {', '.join(RECIPIENT_STATUSES)}",
                         {"field": "status"})
    await service.get(services.store, tenant_id, campaign_id)
    found = await stats.recipients(services.store, tenant_id, campaign_id, status=status,
                                   after=cursor, limit=limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return RecipientPage(items=[RecipientOut.of(row) for row in items],
                         next_cursor=items[-1].seq if more and items else None)


# -- Handlers --------------------------------------------------------------------------------------

@post("/", summary="Create a campaign (a draft)", responses=_responses(400, 404),
      description="A template sent to an audience (`tags_any`/`tags_all`, consent, custom "
                  "fields equal to a value; opted-out contacts never) from one or more numbers. "
                  "`pacing` spaces the messages of each number (random gap in seconds, daily cap "
                  "with warm-up), `window` limits sending to days and hours, `schedule` says "
                  "when it starts once started: `now`, `at` a moment or `cron`.")
async def create_campaign(request: AnyRequest, services: ServicesDep,
                          data: JSONBody[service.CampaignInput]) -> CampaignOut:
    campaign = await service.create(services.store, principal_of(request), tenant_id_of(request),
                                    data, now=services.clock(), ip=client_ip(request))
    return CampaignOut.of(campaign)


@get("/", summary="List campaigns", description="Newest first.")
async def list_campaigns(request: AnyRequest, services: ServicesDep, status: StatusQ = None
                         ) -> list[CampaignOut]:
    found = await service.list_campaigns(services.store, tenant_id_of(request), status)
    return [CampaignOut.of(c) for c in found]


@post("/audience-count", status_code=200, summary="Count an audience",
      description="How many contacts an audience selects now, and how many of them opted out "
                  "(they are never messaged).")
async def count_audience(request: AnyRequest, services: ServicesDep, data: JSONBody[Audience]
                         ) -> AudienceCountOut:
    found = await audiences.count(services.store, tenant_id_of(request), data)
    return AudienceCountOut(matching=found.matching, opted_out=found.opted_out,
                            sendable=found.sendable)


@get("/{campaign_id:str}", summary="A campaign", responses=_responses(404))
async def read_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                        ) -> CampaignOut:
    return CampaignOut.of(await service.get(services.store, tenant_id_of(request), campaign_id))


@patch("/{campaign_id:str}", summary="Change a draft", responses=_responses(400, 404, 409),
       description="Only the fields sent change; `\"window\": null` removes the send window.")
async def update_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str],
                          data: JSONBody[service.CampaignPatch]) -> CampaignOut:
    campaign = await service.update(services.store, principal_of(request), tenant_id_of(request),
                                    campaign_id, data, now=services.clock(),
                                    ip=client_ip(request))
    return CampaignOut.of(campaign)


@delete("/{campaign_id:str}", summary="Delete a campaign", responses=_responses(404, 409),
        description="A draft, or a finished campaign (completed, cancelled, failed) with its "
                    "results; the messages it sent stay in their chats.")
async def delete_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> None:
    await service.delete(services.store, principal_of(request), tenant_id_of(request),
                         campaign_id, now=services.clock(), ip=client_ip(request))


@post("/{campaign_id:str}/start", status_code=200, summary="Start a draft",
      responses=_responses(403, 404, 409),
      description="`now` campaigns (and `at` ones whose moment has passed) run at once; the "
                  "others are scheduled. The audience is taken when the run starts.")
async def start_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                         ) -> CampaignOut:
    return CampaignOut.of(await engine_of(services).start_campaign(
        principal_of(request), tenant_id_of(request), campaign_id, client_ip(request)))


@post("/{campaign_id:str}/pause", status_code=200, summary="Pause a running campaign",
      responses=_responses(404, 409),
      description="Nobody else is queued; messages already in the outbox still go out.")
async def pause_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                         ) -> CampaignOut:
    return CampaignOut.of(await engine_of(services).pause(
        principal_of(request), tenant_id_of(request), campaign_id, client_ip(request)))


@post("/{campaign_id:str}/resume", status_code=200, summary="Resume a paused campaign",
      responses=_responses(404, 409))
async def resume_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> CampaignOut:
    return CampaignOut.of(await engine_of(services).resume(
        principal_of(request), tenant_id_of(request), campaign_id, client_ip(request)))


@post("/{campaign_id:str}/cancel", status_code=200, summary="Cancel a campaign",
      responses=_responses(404, 409),
      description="Scheduled, running or paused: recipients not yet queued are skipped; "
                  "messages already in the outbox still go out.")
async def cancel_campaign(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                          ) -> CampaignOut:
    return CampaignOut.of(await engine_of(services).cancel(
        principal_of(request), tenant_id_of(request), campaign_id, client_ip(request)))


@get("/{campaign_id:str}/recipients", summary="Recipients and their results",
     responses=_responses(400, 404), description="In the order they were taken; by `status`.")
async def list_recipients(request: AnyRequest, services: ServicesDep,
                          campaign_id: FromPath[str], status: RecipientStatusQ = None,
                          cursor: CursorQ = None, limit: LimitQ = 100) -> RecipientPage:
    return await recipient_page(services, tenant_id_of(request), campaign_id, status, cursor,
                                limit)


@get("/{campaign_id:str}/recipients.csv", summary="Recipients and their results as CSV",
     responses={200: ResponseSpec(data_container=str, media_type="text/csv",
                                  description="CSV (UTF-8 with BOM)", generate_examples=False),
                404: _responses(404)[404]})
async def recipients_csv_export(request: AnyRequest, services: ServicesDep,
                                campaign_id: FromPath[str]) -> Stream:
    tenant_id = tenant_id_of(request)
    return recipients_csv(services, tenant_id,
                          await service.get(services.store, tenant_id, campaign_id))


@get("/{campaign_id:str}/stats", summary="Statistics", responses=_responses(404),
     description="Sent, delivered and read from the messages' statuses; replies within "
                 f"{REPLY_HOURS} h of each send; failures and skips by reason; "
                 "messages sent per hour.")
async def campaign_stats(request: AnyRequest, services: ServicesDep, campaign_id: FromPath[str]
                         ) -> StatsOut:
    campaign = await service.get(services.store, tenant_id_of(request), campaign_id)
    return StatsOut.of(await stats.stats(services.store, campaign))


ROUTES: list[Any] = [
    Router(
        path="/api/v1/campaigns",
        route_handlers=[create_campaign, list_campaigns, count_audience, read_campaign,
                        update_campaign, delete_campaign, start_campaign, pause_campaign,
                        resume_campaign, cancel_campaign, list_recipients,
                        recipients_csv_export, campaign_stats],
        guards=[requires_member],
        security=[{"apiKey": []}],
        tags=["Campaigns"],
    )
]
