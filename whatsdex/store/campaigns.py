"""Campaigns and their recipients (SQL only, tenant first).

A campaign row holds its settings as JSON text and its counters; `campaign_recipients` has one
row per contact of a run (`pending → sending → sent/failed`, or `skipped` with a reason). A
recipient becomes `sending` in the same write that queues its outbox message and stores that
message's id, so the message row is the one source of truth about what happened to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from whatsdex.store.database import Store

STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled", "failed")
ACTIVE = ("scheduled", "running", "paused")
RECIPIENT_STATUSES = ("pending", "sending", "sent", "failed", "skipped")
_JSON = ("session_ids", "audience", "send_window", "pacing", "message")
UPDATABLE = ("name", "template_id", "session_ids", "audience", "schedule_kind", "schedule_at",
             "schedule_cron", "timezone", "send_window", "pacing", "typing_seconds")


class Campaign(msgspec.Struct, kw_only=True):
    id: str
    tenant_id: str
    name: str
    template_id: str | None
    session_ids: list[str]
    audience: dict[str, Any]
    schedule_kind: str  # now | at | cron
    schedule_at: str | None  # UTC, for `at`
    schedule_cron: str
    timezone: str  # '' = the tenant's
    send_window: dict[str, Any]  # {} = any time
    pacing: dict[str, Any]
    typing_seconds: float
    message: dict[str, Any]  # the template as the current run sends it
    status: str
    status_reason: str
    targeted: int
    sent: int
    failed: int
    skipped: int
    excluded: int  # opted out when the last run took its audience: left out
    runs: int
    next_run_at: str | None
    created_by: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def percent(self) -> int:
        """Share of the recipients finished with, rounded down (100 only when all are)."""
        if self.targeted <= 0:
            return 100 if self.status == "completed" else 0
        return min(100, self.done * 100 // self.targeted)


FIELDS = Campaign.__struct_fields__
_COLS = ", ".join(FIELDS)


def _row(row: sqlite3.Row) -> Campaign:
    values = {name: row[name] for name in FIELDS}
    for name in _JSON:
        values[name] = json.loads(values[name] or ("[]" if name == "session_ids" else "{}"))
    return Campaign(**values)


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _values(campaign: Campaign) -> list[Any]:
    return [dump(getattr(campaign, n)) if n in _JSON else getattr(campaign, n) for n in FIELDS]


# -- Campaigns ---------------------------------------------------------------------------------

def insert(conn: sqlite3.Connection, campaign: Campaign) -> None:
    conn.execute(f"INSERT INTO campaigns ({_COLS}) VALUES ({', '.join('?' * len(FIELDS))})",
                 _values(campaign))


def update(conn: sqlite3.Connection, tenant_id: str, campaign_id: str, now: str,
           **fields: Any) -> int:
    unknown = set(fields) - set(UPDATABLE)
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    sets = "".join(f"{name} = ?, " for name in fields)
    values = [dump(v) if n in _JSON else v for n, v in fields.items()]
    return conn.execute(
        f"UPDATE campaigns SET {sets}updated_at = ? WHERE tenant_id = ? AND id = ?",
        [*values, now, tenant_id, campaign_id]).rowcount


def delete(conn: sqlite3.Connection, tenant_id: str, campaign_id: str) -> int:
    return conn.execute("DELETE FROM campaigns WHERE tenant_id = ? AND id = ?",
                        (tenant_id, campaign_id)).rowcount


def get_sync(conn: sqlite3.Connection, tenant_id: str, campaign_id: str) -> Campaign | None:
    row = conn.execute(f"SELECT {_COLS} FROM campaigns WHERE tenant_id = ? AND id = ?",
                       (tenant_id, campaign_id)).fetchone()
    return None if row is None else _row(row)


async def get(db: Store, tenant_id: str, campaign_id: str) -> Campaign | None:
    row = await db.fetchone(f"SELECT {_COLS} FROM campaigns WHERE tenant_id = ? AND id = ?",
                            (tenant_id, campaign_id))
    return None if row is None else _row(row)


async def get_any(db: Store, campaign_id: str) -> Campaign | None:
    """By id alone: for the runner and the scheduler, which act for every tenant."""
    row = await db.fetchone(f"SELECT {_COLS} FROM campaigns WHERE id = ?", (campaign_id,))
    return None if row is None else _row(row)


async def list_for_tenant(db: Store, tenant_id: str, status: str | None = None,
                          limit: int = 200) -> list[Campaign]:
    sql = f"SELECT {_COLS} FROM campaigns WHERE tenant_id = ?"
    params: list[Any] = [tenant_id]
    if status:
        sql += " AND status = ?"
        params.append(status)
    rows = await db.fetchall(f"{sql} ORDER BY created_at DESC, id DESC LIMIT ?",
                             (*params, limit))
    return [_row(row) for row in rows]


async def with_status(db: Store, statuses: Sequence[str]) -> list[Campaign]:
    """Every tenant's campaigns in these states (the scheduler's rebuild at start)."""
    rows = await db.fetchall(
        f"SELECT {_COLS} FROM campaigns WHERE status IN (SELECT value FROM json_each(?))",
        (dump(list(statuses)),))
    return [_row(row) for row in rows]


async def with_sending(db: Store) -> list[str]:
    """Campaigns with recipients whose messages may still be in flight."""
    rows = await db.fetchall(
        "SELECT DISTINCT campaign_id FROM campaign_recipients WHERE status = 'sending'")
    return [str(row[0]) for row in rows]


def status_of(conn: sqlite3.Connection, campaign_id: str) -> str | None:
    row = conn.execute("SELECT status FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
    return None if row is None else str(row[0])


def count_active(conn: sqlite3.Connection, tenant_id: str) -> int:
    return int(conn.execute(
        "SELECT count(*) FROM campaigns WHERE tenant_id = ? "
        "AND status IN ('scheduled', 'running', 'paused')", (tenant_id,)).fetchone()[0])


def set_status(conn: sqlite3.Connection, tenant_id: str, campaign_id: str, *, status: str,
               reason: str, now: str, expected: Sequence[str], started: bool = False,
               finished: bool = False, next_run_at: str | None = None,
               message: dict[str, Any] | None = None, run: bool = False) -> bool:
    """Move a campaign from one of `expected` to `status`; False when it was not in one."""
    sets = ["status = :status", "status_reason = :reason", "updated_at = :now",
            "next_run_at = :next"]
    if started:
        sets.append("started_at = coalesce(started_at, :now)")
    if finished:
        sets.append("finished_at = :now")
    if message is not None:
        sets.append("message = :message")
    if run:
        sets.append("runs = runs + 1")
    return bool(conn.execute(
        f"UPDATE campaigns SET {', '.join(sets)} WHERE tenant_id = :tenant AND id = :id "
        "AND status IN (SELECT value FROM json_each(:expected))",
        {"status": status, "reason": reason, "now": now, "next": next_run_at,
         "message": dump(message) if message is not None else None, "tenant": tenant_id,
         "id": campaign_id, "expected": dump(list(expected))}).rowcount)


def set_reason(conn: sqlite3.Connection, tenant_id: str, campaign_id: str, reason: str,
               now: str) -> None:
    conn.execute(
        "UPDATE campaigns SET status_reason = ?, updated_at = ? WHERE tenant_id = ? AND id = ? "
        "AND status_reason != ?", (reason, now, tenant_id, campaign_id, reason))


def add_counts(conn: sqlite3.Connection, campaign_id: str, *, targeted: int = 0, sent: int = 0,
               failed: int = 0, skipped: int = 0, now: str) -> None:
    if not (targeted or sent or failed or skipped):
        return
    conn.execute(
        "UPDATE campaigns SET targeted = targeted + ?, sent = sent + ?, failed = failed + ?, "
        "skipped = skipped + ?, updated_at = ? WHERE id = ?",
        (targeted, sent, failed, skipped, now, campaign_id))


def set_excluded(conn: sqlite3.Connection, campaign_id: str, excluded: int) -> None:
    conn.execute("UPDATE campaigns SET excluded = ? WHERE id = ?", (excluded, campaign_id))


# -- Audience ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AudienceFilter:
    tags_any: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    opt_statuses: tuple[str, ...] = ("unknown", "opted_in")
    custom: tuple[tuple[str, str], ...] = ()  # (key, value): custom.<key> equals value


# Opted out directly, or another row of the same person is (see contacts.optout.is_opted_out).
OPTED_OUT = "(c.opt_status = 'opted_out' OR " + " OR ".join(
    f"(c.{col} != '' AND EXISTS (SELECT 1 FROM contacts o WHERE o.tenant_id = c.tenant_id "
    f"AND o.{col} = c.{col} AND o.{col} != '' AND o.opt_status = 'opted_out' "
    "AND o.id != c.id))"
    for col in ("phone", "jid", "lid")) + ")"
"""Opted out directly, or another row of the same person is (as `contacts.optout.is_opted_out`
decides); one indexed lookup per identity column."""


def _audience_where(tenant_id: str, f: AudienceFilter) -> tuple[str, list[Any]]:
    """Which contacts match; opt status is applied by the callers (opted-out never match)."""
    clauses = ["c.tenant_id = ?"]
    params: list[Any] = [tenant_id]
    if f.tags_any:
        clauses.append("c.id IN (SELECT contact_id FROM contact_tags WHERE tenant_id = ? "
                       "AND tag IN (SELECT value FROM json_each(?)))")
        params += [tenant_id, dump(list(f.tags_any))]
    if f.tags_all:
        clauses.append("(SELECT count(*) FROM contact_tags t WHERE t.contact_id = c.id "
                       "AND t.tenant_id = ? AND t.tag IN (SELECT value FROM json_each(?))) = ?")
        params += [tenant_id, dump(list(f.tags_all)), len(set(f.tags_all))]
    for key, value in f.custom:
        clauses.append("CAST(json_extract(CASE WHEN json_valid(c.custom) THEN c.custom "
                       "ELSE '{}' END, ?) AS TEXT) = ?")
        params += [f"$.{key}", value]
    # Only the statuses asked for; opted-out contacts are counted separately and never sent to.
    wanted = [s for s in f.opt_statuses if s != "opted_out"]
    clauses.append("c.opt_status IN (SELECT value FROM json_each(?))")
    params.append(dump([*wanted, "opted_out"]))
    return " AND ".join(clauses), params


async def count_audience(db: Store, tenant_id: str, f: AudienceFilter) -> tuple[int, int]:
    """(contacts matching, of which opted out)."""
    where, params = _audience_where(tenant_id, f)
    row = await db.fetchone(
        f"SELECT count(*), coalesce(sum({OPTED_OUT}), 0) FROM contacts c WHERE {where}", params)
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True, slots=True)
class Candidate:
    contact_id: str
    phone: str
    lid: str
    opted_out: bool


def audience(conn: sqlite3.Connection, tenant_id: str, campaign_id: str, f: AudienceFilter
             ) -> list[Candidate]:
    """Matching contacts not yet recipients of this campaign, oldest first."""
    where, params = _audience_where(tenant_id, f)
    rows = conn.execute(
        f"SELECT c.id, c.phone, c.lid, {OPTED_OUT} AS opted_out FROM contacts c WHERE {where} "
        "AND NOT EXISTS (SELECT 1 FROM campaign_recipients r WHERE r.campaign_id = ? "
        "AND r.contact_id = c.id) ORDER BY c.created_at, c.id", (*params, campaign_id)).fetchall()
    return [Candidate(contact_id=r[0], phone=r[1], lid=r[2], opted_out=bool(r[3])) for r in rows]


# -- Recipients --------------------------------------------------------------------------------

class NewRecipient(msgspec.Struct, kw_only=True, array_like=True):
    contact_id: str
    seq: int
    session_id: str
    address: str
    status: str  # pending, or skipped (no address to send to)
    reason: str


def load_by_session(conn: sqlite3.Connection, campaign_id: str) -> dict[str, int]:
    rows = conn.execute("SELECT session_id, count(*) FROM campaign_recipients "
                        "WHERE campaign_id = ? GROUP BY session_id", (campaign_id,)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def next_seq(conn: sqlite3.Connection, campaign_id: str) -> int:
    row = conn.execute("SELECT max(seq) FROM campaign_recipients WHERE campaign_id = ?",
                       (campaign_id,)).fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def insert_recipients(conn: sqlite3.Connection, tenant_id: str, campaign_id: str,
                      recipients: Sequence[NewRecipient], now: str) -> None:
    conn.executemany(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, tenant_id, seq, session_id, "
        "address, status, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(campaign_id, r.contact_id, tenant_id, r.seq, r.session_id, r.address, r.status,
          r.reason, now) for r in recipients])


async def open_counts(db: Store, campaign_id: str) -> dict[tuple[str, str], int]:
    """(session_id, status) → recipients still pending or sending."""
    rows = await db.fetchall(
        "SELECT session_id, status, count(*) FROM campaign_recipients WHERE campaign_id = ? "
        "AND status IN ('pending', 'sending') GROUP BY session_id, status", (campaign_id,))
    return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}


async def in_flight(db: Store, campaign_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Per number, `sending` recipients whose messages are still queued or sending, and those
    whose message finished (sent, failed or gone) and that `reconcile` will move on."""
    rows = await db.fetchall(
        "SELECT r.session_id, sum(m.status IN ('queued', 'sending')), "
        "sum(m.id IS NULL OR m.status NOT IN ('queued', 'sending')) "
        "FROM campaign_recipients r LEFT JOIN messages m ON m.id = r.message_id "
        "WHERE r.campaign_id = ? AND r.status = 'sending' GROUP BY r.session_id",
        (campaign_id,))
    flying = {str(r[0]): int(r[1] or 0) for r in rows}
    return flying, {str(r[0]): int(r[2] or 0) for r in rows}


def reconcile(conn: sqlite3.Connection, campaign_id: str, now: str) -> tuple[int, int]:
    """`sending` recipients take their message's outcome; (newly sent, newly failed)."""
    moved = conn.execute(
        "UPDATE campaign_recipients AS r SET "
        "status = CASE WHEN m.status = 'failed' THEN 'failed' ELSE 'sent' END, "
        "reason = CASE WHEN m.status = 'failed' THEN m.status_reason ELSE '' END, "
        "done_at = coalesce(CASE WHEN m.status = 'failed' THEN m.failed_at ELSE m.sent_at END, "
        ":now), updated_at = :now "
        "FROM messages m WHERE r.campaign_id = :campaign AND r.status = 'sending' "
        "AND m.id = r.message_id AND m.status NOT IN ('queued', 'sending') RETURNING status",
        {"campaign": campaign_id, "now": now}).fetchall()
    sent = sum(1 for row in moved if row[0] == "sent")
    failed = len(moved) - sent
    # A message deleted with its number: the send cannot be traced any further.
    failed += conn.execute(
        "UPDATE campaign_recipients SET status = 'failed', reason = ?, done_at = ?, "
        "updated_at = ? WHERE campaign_id = ? AND status = 'sending' AND NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.id = campaign_recipients.message_id)",
        ("its message was deleted (with its number)", now, now, campaign_id)).rowcount
    return sent, failed


def has_open(conn: sqlite3.Connection, campaign_id: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM campaign_recipients WHERE campaign_id = ? "
        "AND status IN ('pending', 'sending'))", (campaign_id,)).fetchone()
    return bool(row[0])


class Due(msgspec.Struct, kw_only=True):
    """A pending recipient with what its message needs; `contact` False when it was deleted."""

    contact_id: str
    address: str
    contact: bool
    name: str
    push_name: str
    phone: str
    custom: str
    opted_out: bool


def next_pending(conn: sqlite3.Connection, tenant_id: str, campaign_id: str, session_id: str,
                 limit: int) -> list[Due]:
    """The number's next recipients in snapshot order, with their contact's current state."""
    rows = conn.execute(
        "SELECT r.contact_id, r.address, c.id IS NOT NULL, coalesce(c.name, ''), "
        f"coalesce(c.push_name, ''), coalesce(c.phone, ''), coalesce(c.custom, '{{}}'), "
        f"c.id IS NOT NULL AND {OPTED_OUT} "
        "FROM campaign_recipients r LEFT JOIN contacts c "
        "ON c.id = r.contact_id AND c.tenant_id = ? "
        "WHERE r.campaign_id = ? AND r.session_id = ? AND r.status = 'pending' "
        "ORDER BY r.seq LIMIT ?", (tenant_id, campaign_id, session_id, limit)).fetchall()
    return [Due(contact_id=r[0], address=r[1], contact=bool(r[2]), name=r[3], push_name=r[4],
                phone=r[5], custom=r[6], opted_out=bool(r[7])) for r in rows]


def mark_queued(conn: sqlite3.Connection, campaign_id: str,
                queued: Sequence[tuple[str, str, str]], now: str) -> None:
    """(contact_id, message_id, text hash): the recipient is `sending` with its message."""
    conn.executemany(
        "UPDATE campaign_recipients SET status = 'sending', message_id = ?, text_hash = ?, "
        "attempts = attempts + 1, queued_at = ?, updated_at = ? "
        "WHERE campaign_id = ? AND contact_id = ? AND status = 'pending'",
        [(message_id, text_hash, now, now, campaign_id, contact_id)
         for contact_id, message_id, text_hash in queued])


def mark_skipped(conn: sqlite3.Connection, campaign_id: str,
                 skipped: Sequence[tuple[str, str]], now: str) -> None:
    """(contact_id, reason)."""
    conn.executemany(
        "UPDATE campaign_recipients SET status = 'skipped', reason = ?, done_at = ?, "
        "updated_at = ? WHERE campaign_id = ? AND contact_id = ? AND status = 'pending'",
        [(reason, now, now, campaign_id, contact_id) for contact_id, reason in skipped])


def skip_pending(conn: sqlite3.Connection, campaign_id: str, reason: str, now: str) -> int:
    return conn.execute(
        "UPDATE campaign_recipients SET status = 'skipped', reason = ?, done_at = ?, "
        "updated_at = ? WHERE campaign_id = ? AND status = 'pending'",
        (reason, now, now, campaign_id)).rowcount


def reassign(conn: sqlite3.Connection, campaign_id: str, gone: str, to: Sequence[str],
             now: str) -> int:
    """A deleted number's pending recipients, dealt round robin to the campaign's others."""
    rows = conn.execute(
        "SELECT contact_id FROM campaign_recipients WHERE campaign_id = ? AND session_id = ? "
        "AND status = 'pending' ORDER BY seq", (campaign_id, gone)).fetchall()
    conn.executemany(
        "UPDATE campaign_recipients SET session_id = ?, updated_at = ? "
        "WHERE campaign_id = ? AND contact_id = ?",
        [(to[i % len(to)], now, campaign_id, row[0]) for i, row in enumerate(rows)])
    return len(rows)


# -- Pacing facts --------------------------------------------------------------------------------

async def last_of_number(db: Store, campaign_id: str, session_id: str
                         ) -> tuple[str | None, str | None]:
    """(queued_at, done_at) of the campaign's latest recipient on this number."""
    row = await db.fetchone(
        "SELECT queued_at, done_at FROM campaign_recipients WHERE session_id = ? "
        "AND queued_at IS NOT NULL AND campaign_id = ? ORDER BY queued_at DESC LIMIT 1",
        (session_id, campaign_id))
    return (None, None) if row is None else (row[0], row[1])


async def queued_since(db: Store, session_id: str, since: str) -> int:
    """Campaign messages (of any campaign) this number queued since a moment."""
    return int(await db.fetchval(
        "SELECT count(*) FROM campaign_recipients WHERE session_id = ? AND queued_at >= ?",
        (session_id, since)))


async def first_queued(db: Store, session_id: str) -> str | None:
    """When this number queued its first campaign message ever (its warm-up starts then)."""
    value = await db.fetchval(
        "SELECT min(queued_at) FROM campaign_recipients WHERE session_id = ? "
        "AND queued_at IS NOT NULL", (session_id,))
    return None if value is None else str(value)


# -- Results -------------------------------------------------------------------------------------

class RecipientRow(msgspec.Struct, kw_only=True):
    seq: int
    contact_id: str
    address: str
    name: str
    session_id: str
    status: str
    reason: str
    message_id: str | None
    message_status: str | None
    attempts: int
    queued_at: str | None
    done_at: str | None
    delivered_at: str | None
    read_at: str | None
    replied_at: str | None
    text_hash: str


REPLY_HOURS = 72
_REPLY = (
    "(SELECT min(i.created_at) FROM messages i WHERE i.chat_id = m.chat_id "
    "AND i.direction = 'in' AND i.created_at > m.sent_at "
    f"AND i.created_at <= strftime('%Y-%m-%dT%H:%M:%fZ', m.sent_at, '+{REPLY_HOURS} hours'))"
)


async def recipients_page(db: Store, tenant_id: str, campaign_id: str, *,
                          status: str | None, after: int | None, limit: int
                          ) -> list[RecipientRow]:
    """In snapshot order from after `after` (a seq)."""
    clauses = ["r.campaign_id = ?", "r.tenant_id = ?"]
    params: list[Any] = [campaign_id, tenant_id]
    if status:
        clauses.append("r.status = ?")
        params.append(status)
    if after is not None:
        clauses.append("r.seq > ?")
        params.append(after)
    rows = await db.fetchall(
        "SELECT r.seq, r.contact_id, r.address, "
        "coalesce(nullif(c.name, ''), c.push_name, '') AS name, r.session_id, r.status, "
        "r.reason, r.message_id, m.status AS message_status, r.attempts, r.queued_at, "
        "r.done_at, coalesce(m.delivered_at, CASE WHEN m.status IN ('delivered', 'read', "
        "'played') THEN m.sent_at END) AS delivered_at, m.read_at, "
        f"CASE WHEN m.sent_at IS NOT NULL THEN {_REPLY} END AS replied_at, r.text_hash "
        "FROM campaign_recipients r LEFT JOIN contacts c ON c.id = r.contact_id "
        "LEFT JOIN messages m ON m.id = r.message_id "
        f"WHERE {' AND '.join(clauses)} ORDER BY r.seq LIMIT ?", (*params, limit))
    return [RecipientRow(**{name: row[name] for name in RecipientRow.__struct_fields__})
            for row in rows]


async def status_counts(db: Store, campaign_id: str) -> dict[str, int]:
    rows = await db.fetchall(
        "SELECT status, count(*) FROM campaign_recipients WHERE campaign_id = ? "
        "GROUP BY status", (campaign_id,))
    return {str(r[0]): int(r[1]) for r in rows}


async def reasons(db: Store, campaign_id: str, status: str) -> list[tuple[str, int]]:
    rows = await db.fetchall(
        "SELECT reason, count(*) AS n FROM campaign_recipients WHERE campaign_id = ? "
        "AND status = ? GROUP BY reason ORDER BY n DESC, reason", (campaign_id, status))
    return [(str(r[0]), int(r[1])) for r in rows]


async def engagement(db: Store, campaign_id: str) -> tuple[int, int, int, int]:
    """(handed to WhatsApp, delivered, read, replied within REPLY_HOURS) from the messages."""
    row = await db.fetchone(
        "SELECT count(*), "
        "coalesce(sum(m.delivered_at IS NOT NULL OR m.status IN ('delivered', 'read', "
        "'played')), 0), "
        "coalesce(sum(m.read_at IS NOT NULL OR m.status IN ('read', 'played')), 0), "
        f"coalesce(sum({_REPLY} IS NOT NULL), 0) "
        "FROM campaign_recipients r CROSS JOIN messages m ON m.id = r.message_id "
        "WHERE r.campaign_id = ? AND r.status IN ('sending', 'sent') "
        "AND m.status IN ('sent', 'delivered', 'read', 'played')", (campaign_id,))
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


async def sends_per_hour(db: Store, campaign_id: str) -> list[tuple[str, int]]:
    """(YYYY-MM-DDTHH in UTC, messages handed to WhatsApp in that hour)."""
    rows = await db.fetchall(
        "SELECT substr(m.sent_at, 1, 13) AS hour, count(*) FROM campaign_recipients r "
        "CROSS JOIN messages m ON m.id = r.message_id WHERE r.campaign_id = ? "
        "AND r.status IN ('sending', 'sent') AND m.sent_at IS NOT NULL "
        "GROUP BY hour ORDER BY hour", (campaign_id,))
    return [(str(r[0]), int(r[1])) for r in rows]
