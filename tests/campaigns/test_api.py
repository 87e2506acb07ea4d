"""The campaigns API end to end on the real app (sandbox engine): drafts, a run to completion,
results and statistics against the sandbox network's own record, tenancy, roles, the plan
limit and the webhook events."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from messaging.conftest import add_webhook

from campaigns.conftest import CampaignEnv, build_campaign_env
from whatsdex.sessions import sandbox_network


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CampaignEnv]:
    yield from build_campaign_env(tmp_path_factory.mktemp("campaigns-api") / "data")


def _phones(env: CampaignEnv, contact_ids: list[str]) -> set[str]:
    rows = env.fetch("SELECT phone FROM contacts WHERE id IN (SELECT value FROM json_each(?))",
                     json.dumps(contact_ids))
    return {row[0] for row in rows}


def _delivered_to(env: CampaignEnv, message_ids: set[str]) -> list[str]:
    return [d["to_jid"].split("@")[0] for d in env.deliveries() if d["outbox_id"] in message_ids]


def test_a_campaign_runs_once_per_recipient_and_reports_it(env: CampaignEnv) -> None:
    targets = env.contacts(30, prefix="1666")
    opted_out = env.contacts(5, prefix="1667", opt_status="opted_out")
    others = env.contacts(4, prefix="1668", tags=("suppliers",))
    webhook = env.run(add_webhook, env.store, env.a.id, '["campaign.*"]')

    counted = env.api("member", "POST", "/api/v1/campaigns/audience-count",
                      json={"tags_any": ["customers"], "tags_all": []})
    assert counted.status_code == 200, counted.text
    assert counted.json()["opted_out"] == 5
    assert counted.json()["sendable"] == counted.json()["matching"] - 5

    # Only this test's contacts: the audience narrows by a custom field too.
    created = env.campaign(audience={"tags_any": ["customers"]}, name="Launch")
    assert created["status"] == "draft" and created["targeted"] == 0
    started = env.act(created["id"], "start", who="member")
    assert started["status"] in ("running", "completed")
    done = env.wait_campaign(created["id"], "completed")
    everyone = env.fetch("SELECT count(*) FROM contacts WHERE tenant_id = ? AND opt_status != "
                         "'opted_out' AND tags LIKE '%customers%'", env.a.id)[0][0]
    assert done["targeted"] == everyone
    assert done["sent"] == everyone and done["failed"] == 0 and done["skipped"] == 0
    assert done["excluded"] == 5 and done["progress"] == 100

    messages = {row[0] for row in env.fetch(
        "SELECT message_id FROM campaign_recipients WHERE campaign_id = ?", created["id"])}
    received = _delivered_to(env, messages)
    assert len(received) == len(set(received)) == everyone, "one message per recipient"
    assert _phones(env, targets) <= set(received)
    assert not _phones(env, opted_out) & set(received), "opted-out contacts never messaged"
    assert not _phones(env, others) & set(received), "outside the audience"
    counts = sandbox_network.count_by_outbox(env.services.settings.data_dir
                                             / "sandbox-network.db")
    assert all(counts[m] == 1 for m in messages)

    # Receipts arrive from the sandbox contacts: delivered and read follow.
    deadline = time.monotonic() + 15
    while True:
        stats = env.api("member", "GET", f"/api/v1/campaigns/{created['id']}/stats").json()
        if stats["read"] == everyone or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stats["targeted"] == stats["sent"] == stats["delivered"] == stats["read"] == everyone
    assert stats["failed"] == stats["skipped"] == stats["pending"] == stats["sending"] == 0
    assert stats["excluded"] == 5 and stats["replied"] == 0
    assert sum(h["sent"] for h in stats["sent_per_hour"]) == everyone

    # A reply from one recipient counts.
    phone = sorted(_phones(env, targets))[0]
    replied = env.api("owner", "POST", f"/api/v1/sandbox/sessions/{env.number}/inbound",
                      json={"from": f"+{phone}", "text": "Interested!", "count": 1})
    assert replied.status_code == 200, replied.text
    deadline = time.monotonic() + 10
    while env.api("owner", "GET", f"/api/v1/campaigns/{created['id']}/stats"
                  ).json()["replied"] != 1:
        assert time.monotonic() < deadline, "the reply was not counted"
        time.sleep(0.1)

    # Results, page by page, and as CSV.
    seen: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        query = "limit=7" + (f"&cursor={cursor}" if cursor is not None else "")
        page = env.api("member", "GET",
                       f"/api/v1/campaigns/{created['id']}/recipients?{query}").json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == everyone and len({r["contact_id"] for r in seen}) == everyone
    assert {r["status"] for r in seen} == {"sent"}
    assert sum(1 for r in seen if r["replied_at"]) == 1
    filtered = env.api("member", "GET",
                       f"/api/v1/campaigns/{created['id']}/recipients?status=failed").json()
    assert filtered == {"items": [], "next_cursor": None}
    exported = env.api("member", "GET", f"/api/v1/campaigns/{created['id']}/recipients.csv")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert len(table) == everyone
    assert {row["message_id"] for row in table} == messages
    assert {row["address"] for row in table} >= _phones(env, targets)

    # The webhook outbox has the run's events, written with the changes.
    events = [json.loads(row[0]) for row in env.fetch(
        "SELECT payload FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id", webhook)]
    types = [e["type"] for e in events if e["data"]["id"] == created["id"]]
    assert types == ["campaign.started", "campaign.completed"]
    assert events[-1]["data"]["sent"] == everyone
    # Who started it is audited.
    assert "campaign.started" in env.audit_actions(created["id"])


def test_drafts_change_until_started_and_finished_ones_can_go(env: CampaignEnv) -> None:
    created = env.campaign(name="Draft")
    changed = env.api("member", "PATCH", f"/api/v1/campaigns/{created['id']}",
                      json={"name": "Draft 2", "pacing": {"min_gap": 5, "max_gap": 9,
                                                          "daily_cap": 100},
                            "window": {"days": [0, 1, 2], "start": "08:00", "end": "17:30"}})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["name"] == "Draft 2" and body["pacing"]["max_gap"] == 9
    assert body["window"] == {"days": [0, 1, 2], "start": "08:00", "end": "17:30"}
    no_window = env.api("member", "PATCH", f"/api/v1/campaigns/{created['id']}",
                        json={"window": None}).json()
    assert no_window["window"] is None and no_window["pacing"]["daily_cap"] == 100

    scheduled = env.campaign(name="Later", schedule={"kind": "at",
                                                     "at": "2099-01-01T09:00:00Z"})
    assert env.act(scheduled["id"], "start")["status"] == "scheduled"
    refused = env.api("owner", "PATCH", f"/api/v1/campaigns/{scheduled['id']}",
                      json={"name": "x"})
    assert refused.status_code == 409 and refused.json()["detail"]["status"] == "scheduled"
    assert env.api("owner", "DELETE", f"/api/v1/campaigns/{scheduled['id']}").status_code == 409
    assert env.act(scheduled["id"], "cancel")["status"] == "cancelled"
    assert env.api("owner", "DELETE", f"/api/v1/campaigns/{scheduled['id']}").status_code == 204
    assert env.api("owner", "DELETE", f"/api/v1/campaigns/{created['id']}").status_code == 204
    assert env.api("owner", "GET", f"/api/v1/campaigns/{created['id']}").status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"name": ""}, "name"),
    ({"session_ids": []}, "session_ids"),
    ({"pacing": {"min_gap": 10, "max_gap": 5}}, "pacing.max_gap"),
    ({"pacing": {"warmup_increase": 5}}, "pacing.warmup_start"),
    ({"window": {"days": [9], "start": "09:00", "end": "18:00"}}, "window.days"),
    ({"window": {"days": [1], "start": "9am", "end": "18:00"}}, "window.start"),
    ({"schedule": {"kind": "at"}}, "schedule.at"),
    ({"schedule": {"kind": "cron", "cron": "every day"}}, "schedule.cron"),
    ({"schedule": {"kind": "cron", "cron": "0 9 * * 1", "timezone": "Mars/Base"}},
     "schedule.timezone"),
    ({"audience": {"custom": {"Bad Key": "x"}}}, "audience.custom"),
    ({"typing_seconds": 500}, "typing_seconds"),
])
def test_invalid_campaigns_are_refused_naming_the_field(env: CampaignEnv, body: dict[str, Any],
                                                        field: str) -> None:
    defaults = {"name": "Bad", "template_id": env.template_id, "session_ids": [env.number]}
    answer = env.api("owner", "POST", "/api/v1/campaigns", json={**defaults, **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"]["field"] == field


def test_another_tenants_campaigns_are_not_found(env: CampaignEnv) -> None:
    created = env.campaign(name="Private")
    cid = created["id"]
    for method, path in (("GET", f"/api/v1/campaigns/{cid}"),
                         ("PATCH", f"/api/v1/campaigns/{cid}"),
                         ("DELETE", f"/api/v1/campaigns/{cid}"),
                         ("POST", f"/api/v1/campaigns/{cid}/start"),
                         ("POST", f"/api/v1/campaigns/{cid}/pause"),
                         ("POST", f"/api/v1/campaigns/{cid}/cancel"),
                         ("GET", f"/api/v1/campaigns/{cid}/recipients"),
                         ("GET", f"/api/v1/campaigns/{cid}/recipients.csv"),
                         ("GET", f"/api/v1/campaigns/{cid}/stats")):
        answer = env.api("other", method, path, json={"name": "x"} if method == "PATCH" else None)
        assert answer.status_code == 404, (method, path, answer.text)
    assert all(c["id"] != cid for c in env.api("other", "GET", "/api/v1/campaigns").json())
    # Tenant B cannot send A's template or from A's number either.
    stolen = env.api("other", "POST", "/api/v1/campaigns", json={
        "name": "Stolen", "template_id": env.template_id, "session_ids": [env.other_number]})
    assert stolen.status_code == 404 and stolen.json()["detail"]["field"] == "template_id"
    assert env.api(None, "GET", "/api/v1/campaigns").status_code == 401
    assert env.api("operator", "GET", "/api/v1/campaigns").status_code == 403
    assert env.api("member", "GET", f"/api/v1/campaigns/{cid}").status_code == 200
    assert env.api("owner", "DELETE", f"/api/v1/campaigns/{cid}").status_code == 204


def test_the_plan_limits_active_campaigns(env: CampaignEnv) -> None:
    later = {"kind": "at", "at": "2099-06-01T09:00:00Z"}
    first, second, third = (env.campaign(name=f"Limit {i}", schedule=later) for i in range(3))
    assert env.act(first["id"], "start")["status"] == "scheduled"
    assert env.act(second["id"], "start")["status"] == "scheduled"
    refused = env.api("owner", "POST", f"/api/v1/campaigns/{third['id']}/start")
    assert refused.status_code == 403, refused.text
    assert refused.json()["detail"]["limit"] == "max_active_campaigns"
    assert "active campaigns" in refused.json()["message"]
    assert env.get(third["id"])["status"] == "draft"
    env.act(first["id"], "cancel")
    assert env.act(third["id"], "start")["status"] == "scheduled"
    for campaign in (second, third):
        env.act(campaign["id"], "cancel")
