"""What a campaign achieved, read from its recipients and their messages.

Sent, delivered and read come from the messages' own statuses (receipts move them), so the
numbers are the outbox's, not a copy that could drift. A reply is an inbound message in the
recipient's chat within `REPLY_HOURS` after the campaign message was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from whatsdex.campaigns import service
from whatsdex.contacts.export import csv_line, safe_cell
from whatsdex.store import Store
from whatsdex.store import campaigns as rows
from whatsdex.store.campaigns import Campaign, RecipientRow

CSV_PAGE = 1000
CSV_COLUMNS = ("contact_id", "address", "name", "session_id", "status", "reason", "message_id",
               "message_status", "attempts", "queued_at", "done_at", "delivered_at", "read_at",
               "replied_at", "text_sha256")
MAX_HOURS = 168  # the chart shows the last week of sending at most


@dataclass(frozen=True, slots=True)
class Step:
    label: str
    value: int
    share: float  # of the targeted recipients, 0..1


@dataclass(frozen=True, slots=True)
class Stats:
    targeted: int
    pending: int
    sending: int  # queued in the outbox, not handed to WhatsApp yet
    sent: int
    failed: int
    skipped: int
    opted_out: int  # skipped because they opted out while the campaign ran
    excluded: int  # opted out already when the run took its audience: left out of it
    handed: int  # messages WhatsApp took (sent, delivered, read or played)
    delivered: int
    read: int
    replied: int
    failed_reasons: list[tuple[str, int]]
    skipped_reasons: list[tuple[str, int]]
    hourly: list[tuple[float, int]]  # (start of the UTC hour, messages sent in it)

    @property
    def funnel(self) -> list[Step]:
        base = max(1, self.targeted)
        steps = (("Targeted", self.targeted), ("Sent", self.handed),
                 ("Delivered", self.delivered), ("Read", self.read),
                 ("Replied", self.replied))
        return [Step(label, value, value / base) for label, value in steps]


def _hour(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()


def _hours(found: list[tuple[str, int]]) -> list[tuple[float, int]]:
    """Every hour from the first send to the last (empty ones as 0), the latest week."""
    if not found:
        return []
    counts = {_hour(hour): n for hour, n in found}
    last = max(counts)
    first = max(min(counts), last - (MAX_HOURS - 1) * 3600)
    hours: list[tuple[float, int]] = []
    moment = first
    while moment <= last:
        hours.append((moment, counts.get(moment, 0)))
        moment += 3600
    return hours


async def stats(db: Store, campaign: Campaign) -> Stats:
    counts = await rows.status_counts(db, campaign.id)
    skipped_reasons = await rows.reasons(db, campaign.id, "skipped")
    handed, delivered, read, replied = await rows.engagement(db, campaign.id)
    return Stats(
        targeted=sum(counts.values()), pending=counts.get("pending", 0),
        sending=counts.get("sending", 0), sent=counts.get("sent", 0),
        failed=counts.get("failed", 0), skipped=counts.get("skipped", 0),
        opted_out=sum(n for reason, n in skipped_reasons if reason == service.OPTED_OUT),
        excluded=campaign.excluded, handed=handed, delivered=delivered, read=read,
        replied=replied, failed_reasons=await rows.reasons(db, campaign.id, "failed"),
        skipped_reasons=skipped_reasons,
        hourly=_hours(await rows.sends_per_hour(db, campaign.id)))


async def recipients(db: Store, tenant_id: str, campaign_id: str, *, status: str | None,
                     after: int | None, limit: int) -> list[RecipientRow]:
    return await rows.recipients_page(db, tenant_id, campaign_id, status=status, after=after,
                                      limit=limit)


def _cells(row: RecipientRow) -> list[str]:
    values = (row.contact_id, row.address, row.name, row.session_id, row.status, row.reason,
              row.message_id, row.message_status, row.attempts, row.queued_at, row.done_at,
              row.delivered_at, row.read_at, row.replied_at, row.text_hash)
    return [safe_cell(value) for value in values]


async def csv_chunks(db: Store, tenant_id: str, campaign_id: str) -> AsyncIterator[bytes]:
    """Every recipient's result, a page of rows per chunk (the file is never held whole)."""
    yield ("\ufeff" + csv_line(list(CSV_COLUMNS))).encode()
    after: int | None = None
    while True:
        page = await rows.recipients_page(db, tenant_id, campaign_id, status=None, after=after,
                                          limit=CSV_PAGE)
        if not page:
            return
        yield "".join(csv_line(_cells(row)) for row in page).encode()
        if len(page) < CSV_PAGE:
            return
        after = page[-1].seq
