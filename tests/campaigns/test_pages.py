"""The campaign pages: list, form with a live audience count, a campaign's page with live
progress (SSE events and polls answering 204 while nothing changed), funnel and hourly chart
as SVG without style attributes, recipients, CSV, and the actions with their confirmations."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from web_sessions.conftest import SseStream

from campaigns.conftest import CampaignEnv, build_campaign_env
from whatsdex.web.auth import SESSION_COOKIE

ParseHtml = Callable[[str], Any]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CampaignEnv]:
    yield from build_campaign_env(tmp_path_factory.mktemp("campaign-pages") / "data")


def post_form(env: CampaignEnv, who: str, path: str, fields: dict[str, Any]) -> httpx.Response:
    """A form as htmx posts it (multi-valued fields as lists)."""
    env.client.cookies.clear()
    return env.client.post(path, data=fields, headers={
        "Cookie": f"__Host-csrftoken={env.csrf}; {SESSION_COOKIE}={env.cookies[who]}",
        "X-CSRFToken": env.csrf, "HX-Request": "true"}, follow_redirects=False)


def assert_csp_safe(doc: Any, where: str) -> None:
    """No inline style, script or handlers (the CSP would block them); hx-delete asks first;
    labels point at fields that exist; forms carry the CSRF token."""
    for el in doc.iter():
        assert "style" not in el.attrs, f"{where}: style attribute on <{el.tag}>"
        assert not [a for a in el.attrs if a.startswith(("on", "hx-on"))], f"{where}: handler"
        assert not (el.tag == "script" and "src" not in el.attrs), f"{where}: inline script"
        if "hx-delete" in el.attrs:
            assert el.attrs.get("hx-confirm"), f"{where}: deletes without asking"
    assert not doc.find_all("style"), f"{where}: <style>"
    ids = {el.attrs["id"] for el in doc.iter() if "id" in el.attrs}
    for label in doc.find_all("label"):
        if "for" in label.attrs:
            assert label.attrs["for"] in ids, f"{where}: label for {label.attrs['for']}"
    for form in doc.find_all("form"):
        if form.attrs.get("action") != "/logout":
            assert form.find_all("input", name="_csrf_token"), f"{where}: form without CSRF"


FORM = {"name": "Autumn sale", "session_ids": [], "tags_any": ["customers"],
        "opt_status": ["unknown", "opted_in"], "custom": "", "schedule_kind": "now",
        "schedule_at": "", "schedule_cron": "", "timezone": "", "window_days": ["0", "1"],
        "window_start": "09:00", "window_end": "18:00", "min_gap": "0", "max_gap": "0",
        "daily_cap": "0", "warmup_start": "0", "warmup_increase": "0", "typing_seconds": "0"}


def test_pages_are_csp_safe(env: CampaignEnv, parse_html: ParseHtml) -> None:
    created = env.campaign(name="Looked at")
    for path in ("/campaigns", "/campaigns/new", f"/campaigns/{created['id']}",
                 f"/campaigns/{created['id']}/edit"):
        for who in ("owner", "member"):
            page = env.page(who, "GET", path)
            assert page.status_code == 200, (path, page.text[:300])
            assert_csp_safe(parse_html(page.text), path)
    assert env.page("other", "GET", f"/campaigns/{created['id']}").status_code == 404
    anonymous = env.page(None, "GET", "/campaigns")
    assert anonymous.status_code == 303 and "/login" in anonymous.headers["location"]


def test_the_form_counts_the_audience_and_creates_a_draft(env: CampaignEnv,
                                                          parse_html: ParseHtml) -> None:
    env.contacts(6, prefix="1999", tags=("autumn",))
    env.contacts(2, prefix="1998", tags=("autumn",), opt_status="opted_out")
    form = parse_html(env.page("owner", "GET", "/campaigns/new").text)
    options = {o.attrs["value"] for o in form.find("select", id="tags-any").find_all("option")}
    assert "autumn" in options
    assert form.find("input", name="session_ids").attrs["value"] == env.number
    count = form.find("div", id="audience-count")
    assert count.attrs["hx-post"] == "/campaigns/audience-count"

    counted = post_form(env, "member", "/campaigns/audience-count",
                        {"tags_any": ["autumn"], "opt_status": ["unknown", "opted_in"]})
    assert counted.status_code == 200
    text = parse_html(counted.text).find("p", id="audience-sendable").text
    assert text.startswith("6 contacts would receive it") and "2 more" in text

    bad = post_form(env, "owner", "/campaigns", {**FORM, "template_id": env.template_id,
                                                 "session_ids": [env.number], "max_gap": "x"})
    assert bad.status_code == 400 and bad.headers["hx-retarget"] == "#form-result"
    assert "pacing.max_gap" in bad.text

    made = post_form(env, "owner", "/campaigns", {
        **FORM, "template_id": env.template_id, "session_ids": [env.number],
        "tags_any": ["autumn"], "window_on": "1", "min_gap": "0", "max_gap": "0"})
    assert made.status_code == 200, made.text
    campaign_id = made.headers["hx-redirect"].rsplit("/", 1)[-1]
    created = env.get(campaign_id)
    assert created["status"] == "draft" and created["audience"]["tags_any"] == ["autumn"]
    assert created["window"] == {"days": [0, 1], "start": "09:00", "end": "18:00"}

    edited = post_form(env, "owner", f"/campaigns/{campaign_id}", {
        **FORM, "name": "Autumn sale 2", "template_id": env.template_id,
        "session_ids": [env.number], "tags_any": ["autumn"]})
    assert edited.status_code == 200
    assert edited.headers["hx-redirect"] == f"/campaigns/{campaign_id}"
    assert env.get(campaign_id)["name"] == "Autumn sale 2"
    assert env.get(campaign_id)["window"] is None


def test_a_campaign_page_follows_its_run_live(env: CampaignEnv, parse_html: ParseHtml) -> None:
    env.contacts(8, prefix="1997", tags=("live",))
    created = env.campaign(name="Live one", audience={"tags_any": ["live"]})
    cid = created["id"]
    page = parse_html(env.page("member", "GET", f"/campaigns/{cid}").text)
    assert page.find("div", id="campaign-live").attrs["sse-connect"] == "/campaigns/events"
    panel = page.find("div", id="campaign-panel")
    assert "sse:campaigns" in panel.attrs["hx-trigger"]
    start = page.find("button", id="start-campaign")
    assert start.attrs["hx-post"] == f"/campaigns/{cid}/start" and start.attrs["hx-confirm"]
    assert page.find("progress", id="campaign-progress").attrs["value"] == "0"

    stream = SseStream(env.client).open("/campaigns/events", {
        "Accept": "text/event-stream", "Cookie": f"{SESSION_COOKIE}={env.cookies['member']}"})
    try:
        assert stream.status == 200
        assert stream.event(5) == {"comment": "connected", "retry": "3000"}
        started = post_form(env, "member", f"/campaigns/{cid}/start", {})
        assert started.status_code == 200
        after = parse_html(started.text)
        assert after.find("span", id="campaign-status").attrs["data-status"] in (
            "running", "completed")
        seen = stream.events_until(lambda e: e.get("event") == "campaigns" and e["data"] == cid)
        assert seen[-1]["data"] == cid
    finally:
        stream.close()
    env.wait_campaign(cid, "completed")

    live = env.page("member", "GET", f"/campaigns/{cid}/panel", htmx=True)
    panel = parse_html(live.text).find("div", id="campaign-panel")
    assert panel.find("progress", id="campaign-progress").attrs["value"] == "100"
    assert panel.find("dd", id="count-sent").text == "8"
    assert "every" not in panel.attrs["hx-trigger"], "a finished campaign stops polling"
    seen_param = re.search(r"seen=([^\"&]+)", panel.attrs["hx-get"])
    assert seen_param is not None
    unchanged = env.page("member", "GET", f"/campaigns/{cid}/panel?seen={seen_param.group(1)}",
                         htmx=True)
    assert unchanged.status_code == 204

    report = parse_html(env.page("member", "GET", f"/campaigns/{cid}/report", htmx=True).text)
    steps = {g.attrs["data-step"]: int(g.attrs["data-value"])
             for g in report.find("svg", id="funnel").find_all("g")}
    assert steps["targeted"] == steps["sent"] == 8
    hours = report.find("svg", id="hourly-chart").find_all("rect")
    assert sum(int(r.attrs["data-value"]) for r in hours) == 8
    assert_csp_safe(report, "report")

    rows = parse_html(env.page("member", "GET", f"/campaigns/{cid}/recipients?status=sent",
                               htmx=True).text).find("table", id="recipients")
    assert len(rows.find_all("tr", )) == 1 + 8
    exported = env.page("member", "GET", f"/campaigns/{cid}/recipients.csv")
    assert exported.status_code == 200
    table = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    assert len(table) == 8 and {r["status"] for r in table} == {"sent"}

    listed = parse_html(env.page("member", "GET", "/campaigns/rows", htmx=True).text)
    row = listed.find("tr", id=f"campaign-{cid}")
    assert row.find("progress").attrs["value"] == "100"

    gone = env.page("owner", "DELETE", f"/campaigns/{cid}")
    assert gone.status_code == 200 and gone.headers["hx-redirect"] == "/campaigns"


def test_pause_resume_and_cancel_buttons_confirm_first(env: CampaignEnv,
                                                       parse_html: ParseHtml) -> None:
    env.contacts(3, prefix="1996", tags=("slow",))
    created = env.campaign(name="Slow one", audience={"tags_any": ["slow"]},
                           pacing={"min_gap": 3600, "max_gap": 3600})
    cid = created["id"]
    started = parse_html(post_form(env, "owner", f"/campaigns/{cid}/start", {}).text)
    pause = started.find("button", id="pause-campaign")
    assert pause.attrs["hx-confirm"] and started.find("button", id="cancel-campaign")
    paused = parse_html(post_form(env, "owner", f"/campaigns/{cid}/pause", {}).text)
    assert paused.find("span", id="campaign-status").attrs["data-status"] == "paused"
    assert paused.find("button", id="resume-campaign").attrs["hx-confirm"]
    resumed = parse_html(post_form(env, "owner", f"/campaigns/{cid}/resume", {}).text)
    assert resumed.find("span", id="campaign-status").attrs["data-status"] == "running"
    cancelled = post_form(env, "owner", f"/campaigns/{cid}/cancel", {})
    done = parse_html(cancelled.text)
    assert done.find("span", id="campaign-status").attrs["data-status"] == "cancelled"
    assert done.find("button", id="delete-campaign")
    again = post_form(env, "owner", f"/campaigns/{cid}/pause", {})
    assert again.status_code == 409 and again.headers["hx-retarget"] == "#toasts"


def test_the_edit_form_shows_a_moment_in_the_campaigns_time_zone(
        env: CampaignEnv, parse_html: ParseHtml) -> None:
    created = env.campaign(name="Berlin morning", schedule={
        "kind": "at", "at": "2030-01-01T09:00", "timezone": "Europe/Berlin"})
    assert created["schedule"]["at"] == "2030-01-01T08:00:00.000Z"
    form = parse_html(env.page("owner", "GET", f"/campaigns/{created['id']}/edit").text)
    assert form.find("input", id="schedule-at").attrs["value"] == "2030-01-01T09:00"
    assert form.find("input", id="timezone").attrs["value"] == "Europe/Berlin"
    assert form.find("input", name="schedule_kind", value="at").attrs.get("checked") == ""
    # Saved again unchanged, it is still the same moment.
    fields = {**FORM, "name": "Berlin morning", "template_id": env.template_id,
              "session_ids": [env.number], "schedule_kind": "at",
              "schedule_at": "2030-01-01T09:00", "timezone": "Europe/Berlin"}
    assert post_form(env, "owner", f"/campaigns/{created['id']}", fields).status_code == 200
    assert env.get(created["id"])["schedule"]["at"] == "2030-01-01T08:00:00.000Z"
