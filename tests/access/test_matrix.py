"""Who may call what: every `/api/v1` route and every operator / settings page, for every identity.

The route tables below are checked against the app's own route table, so a route added without
a scenario here fails `test_every_route_has_a_scenario`.

Rules, for identities named in conftest:
  anonymous, revoked                    401 (a page load: 303 to the login page, and back)
  operator on a tenant route            403 (the operator has no tenant)
  a tenant identity on an operator one  403
  member where an owner is needed       403
  other on an object of tenant A        404, and nothing of tenant A in the answer
  the right identity                    the route's 2xx (other on a collection: its own data)
A 2xx change writes at least one audit row; any refusal and any read write none. A few routes
change things that are not audit events by design (`audited=False`): they write none either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest
from httpx import Response

from whatsdex.identity import links
from whatsdex.identity.principal import CLI

from .conftest import HOOK_URL, RECIPIENT, WHO, Call, World

Build = Callable[[World], Call]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    guard: str  # operator | owner | member
    ok: int
    build: Build = field(default=lambda w: Call())
    # False where a success is by design not an audit event: messages sent and chats read are
    # traffic (the history records them, and an audit row per message would bury the changes
    # people need to find); an upload stores bytes and changes nothing until it is used;
    # previews and audience counts are reads sent as POST: they write nothing.
    audited: bool = True
    refers: bool = False  # the body names objects of tenant A: `other` must get 404 for them

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def names_an_object(self) -> bool:
        return "{" in self.path or self.refers


def plan_form(name: str = "Trial", **limits: int) -> dict[str, str]:
    values = {"max_numbers": 1, "max_messages_per_day": 10, "max_contacts": 10,
              "max_active_campaigns": 1, "max_webhooks": 1, **limits}
    return {"name": name, **{k: str(v) for k, v in values.items()}}


def plan_json(**extra: object) -> dict[str, object]:
    return {"name": "Trial", "max_numbers": 1, "max_messages_per_day": 10, "max_contacts": 10,
            "max_active_campaigns": 1, "max_webhooks": 1, **extra}


def fresh_tenant(w: World) -> Call:
    return Call(path={"tenant_id": w.fresh_tenant().id})


def fresh_tenant_key(w: World) -> Call:
    tenant = w.fresh_tenant()
    return Call(path={"tenant_id": tenant.id, "key_id": w.fresh_key(tenant.id).id})


def deleted_tenant(w: World) -> Call:
    tenant = w.fresh_tenant()
    return Call(path={"tenant_id": tenant.id}, query={"confirm": tenant.name})


def email(w: World) -> str:
    return f"{w.unique('new').replace(' ', '')}@example.com"


def num(status: str = "pairing", **extra: object) -> Build:
    def build(w: World) -> Call:
        return Call(path={"session_id": w.fresh_number(status)}, **extra)  # type: ignore[arg-type]

    return build


def num_link(w: World) -> Call:
    session_id = w.fresh_number()
    link, _ = w.run(links.create_client_link, w.db, CLI, w.a.id, session_id, now=w.clock())
    return Call(path={"session_id": session_id, "link_id": link.id})


def contact(w: World) -> Call:
    return Call(path={"contact_id": w.fresh_contact().id})


def template(w: World) -> Call:
    return Call(path={"template_id": w.fresh_template().id})


def webhook(w: World) -> Call:
    return Call(path={"webhook_id": w.fresh_webhook().id})


def delivery(w: World) -> Call:
    webhook_id, delivery_id = w.fresh_delivery()
    return Call(path={"webhook_id": webhook_id, "delivery_id": str(delivery_id)})


def import_job(w: World) -> Call:
    return Call(path={"job_id": w.import_job().id})


def csv_upload(w: World) -> Call:
    w.imports_finished()
    people = f"phone,name\n{w.phone()},Ana Lima\n".encode()
    return Call(files={"file": ("people.csv", people, "text/csv")})


def message(w: World) -> Call:
    return Call(path={"message_id": w.message().id})


def chat(w: World) -> Call:
    return Call(path={"chat_id": w.message().chat_id})


def campaign(status: str = "draft") -> Build:
    def build(w: World) -> Call:
        return Call(path={"campaign_id": w.fresh_campaign(status).id})

    return build


def kept_campaign(w: World) -> Call:
    """A running campaign with its one recipient, for the scenarios that only read it."""
    return Call(path={"campaign_id": w.kept("campaign", lambda: w.fresh_campaign("running")).id})


SESSIONS = "/api/v1/sessions/{session_id}"
CAMPAIGNS = "/api/v1/campaigns/{campaign_id}"
SANDBOX = "/api/v1/sandbox/sessions/{session_id}"
API = [
    Route("GET", "/api/v1/sessions", "member", 200),
    Route("POST", "/api/v1/sessions", "owner", 201,
          lambda w: Call(json={"name": w.unique("Number")})),
    Route("GET", SESSIONS, "member", 200, num()),
    Route("DELETE", SESSIONS, "owner", 204, num()),
    Route("GET", SESSIONS + "/history", "member", 200, num()),
    Route("GET", SESSIONS + "/qr", "member", 200, num()),
    Route("POST", SESSIONS + "/pairing-code", "owner", 200, num(json={"phone": "+15551234567"})),
    Route("POST", SESSIONS + "/start", "owner", 202, num("stopped")),
    Route("POST", SESSIONS + "/stop", "owner", 200, num()),
    Route("POST", SESSIONS + "/logout", "owner", 200, num("connected")),
    Route("POST", SESSIONS + "/client-links", "owner", 201, num(json={"ttl_hours": 1})),
    Route("GET", SESSIONS + "/client-links", "owner", 200, num()),
    Route("DELETE", SESSIONS + "/client-links/{link_id}", "owner", 204, num_link),
    Route("POST", SANDBOX + "/scan", "owner", 200, num(json={"phone": "+15551234567"})),
    Route("POST", SANDBOX + "/inbound", "owner", 200,
          num("connected", json={"from": "15557654321", "text": "hi"})),
    Route("POST", SANDBOX + "/faults", "owner", 200,
          num("connected", json={"kind": "fail_sends", "count": 1})),
    Route("POST", SANDBOX + "/receipts", "owner", 200, num(json={"read_after": 1})),
    Route("GET", "/api/v1/admin/tenants", "operator", 200),
    Route("POST", "/api/v1/admin/tenants", "operator", 201,
          lambda w: Call(json={"name": w.unique("Tenant")})),
    Route("GET", "/api/v1/admin/tenants/{tenant_id}", "operator", 200, fresh_tenant),
    Route("PATCH", "/api/v1/admin/tenants/{tenant_id}", "operator", 200,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id}, json={"plan": "premium"})),
    Route("DELETE", "/api/v1/admin/tenants/{tenant_id}", "operator", 204, deleted_tenant),
    Route("POST", "/api/v1/admin/tenants/{tenant_id}/suspend", "operator", 200, fresh_tenant),
    Route("POST", "/api/v1/admin/tenants/{tenant_id}/resume", "operator", 200, fresh_tenant),
    Route("GET", "/api/v1/admin/tenants/{tenant_id}/api-keys", "operator", 200, fresh_tenant),
    Route("POST", "/api/v1/admin/tenants/{tenant_id}/api-keys", "operator", 201,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id}, json={"name": "CRM"})),
    Route("DELETE", "/api/v1/admin/tenants/{tenant_id}/api-keys/{key_id}", "operator", 204,
          fresh_tenant_key),
    Route("POST", "/api/v1/admin/tenants/{tenant_id}/invitations", "operator", 201,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id},
                         json={"email": email(w), "role": "owner"})),
    Route("GET", "/api/v1/admin/plans", "operator", 200),
    Route("POST", "/api/v1/admin/plans", "operator", 201,
          lambda w: Call(json=plan_json(id=f"p{w.unique('').strip()}"))),
    Route("PUT", "/api/v1/admin/plans/{plan_id}", "operator", 200,
          lambda w: Call(path={"plan_id": w.fresh_plan().id}, json=plan_json(max_numbers=3))),
    Route("DELETE", "/api/v1/admin/plans/{plan_id}", "operator", 204,
          lambda w: Call(path={"plan_id": w.fresh_plan().id})),
    Route("GET", "/api/v1/admin/audit", "operator", 200),
    Route("GET", "/api/v1/me", "member", 200),
    Route("GET", "/api/v1/plan", "member", 200),
    Route("GET", "/api/v1/api-keys", "owner", 200),
    Route("POST", "/api/v1/api-keys", "owner", 201,
          lambda w: Call(json={"name": "CRM", "role": "member"})),
    Route("DELETE", "/api/v1/api-keys/{key_id}", "owner", 204,
          lambda w: Call(path={"key_id": w.fresh_key(w.a.id).id})),
    Route("GET", "/api/v1/invitations", "owner", 200),
    Route("POST", "/api/v1/invitations", "owner", 201,
          lambda w: Call(json={"email": email(w), "role": "member"})),
    Route("DELETE", "/api/v1/invitations/{invitation_id}", "owner", 204,
          lambda w: Call(path={"invitation_id": w.fresh_invite(w.a.id).id})),
    Route("GET", "/api/v1/audit", "owner", 200),
    Route("GET", "/api/v1/contacts", "member", 200),
    Route("POST", "/api/v1/contacts", "member", 201, lambda w: Call(json={"phone": w.phone()})),
    Route("GET", "/api/v1/contacts/tags", "member", 200),
    Route("GET", "/api/v1/contacts/export", "member", 200),
    Route("POST", "/api/v1/contacts/import", "member", 202, csv_upload),
    Route("GET", "/api/v1/contacts/imports", "member", 200),
    Route("GET", "/api/v1/contacts/imports/{job_id}", "member", 200, import_job),
    Route("GET", "/api/v1/contacts/imports/{job_id}/errors.csv", "member", 200, import_job),
    Route("GET", "/api/v1/contacts/{contact_id}", "member", 200, contact),
    Route("PATCH", "/api/v1/contacts/{contact_id}", "member", 200,
          lambda w: Call(path=contact(w).path, json={"name": "Ana Souza", "tags": ["vip"]})),
    Route("DELETE", "/api/v1/contacts/{contact_id}", "member", 204, contact),
    Route("POST", "/api/v1/contacts/{contact_id}/opt-out", "member", 200, contact),
    Route("POST", "/api/v1/contacts/{contact_id}/opt-in", "member", 200, contact),
    Route("GET", "/api/v1/templates", "member", 200),
    Route("POST", "/api/v1/templates", "member", 201,
          lambda w: Call(json={"name": w.unique("Welcome"), "body": "Hi {{name|there}}!"})),
    Route("POST", "/api/v1/templates/preview", "member", 200,
          lambda w: Call(json={"body": "Hi {{name}}!", "fields": {"name": "Ana"}}),
          audited=False),
    Route("GET", "/api/v1/templates/{template_id}", "member", 200, template),
    Route("PATCH", "/api/v1/templates/{template_id}", "member", 200,
          lambda w: Call(path=template(w).path, json={"category": "marketing"})),
    Route("DELETE", "/api/v1/templates/{template_id}", "member", 204, template),
    Route("POST", "/api/v1/templates/{template_id}/preview", "member", 200,
          lambda w: Call(path=template(w).path, json={"fields": {"first_name": "Ana"}}),
          audited=False),
    Route("POST", SESSIONS + "/messages", "member", 202,
          lambda w: Call(path={"session_id": w.number()},
                         json={"to": RECIPIENT, "type": "text", "text": "Hello"}),
          audited=False),
    Route("POST", "/api/v1/media", "member", 201,
          lambda w: Call(files={"file": ("menu.txt", b"Bread 2.50\n", "text/plain")}),
          audited=False),
    Route("GET", "/api/v1/media/{media_id}", "member", 200,
          lambda w: Call(path={"media_id": w.media().id})),
    Route("GET", "/api/v1/messages", "member", 200),
    Route("GET", "/api/v1/messages/{message_id}", "member", 200, message),
    Route("GET", "/api/v1/messages/{message_id}/media", "member", 200,
          lambda w: Call(path={"message_id": w.media_message().id})),
    Route("GET", "/api/v1/chats", "member", 200),
    Route("GET", "/api/v1/chats/{chat_id}", "member", 200, chat),
    Route("POST", "/api/v1/chats/{chat_id}/read", "member", 200, chat, audited=False),
    Route("GET", "/api/v1/webhooks", "owner", 200),
    Route("POST", "/api/v1/webhooks", "owner", 201,
          lambda w: Call(json={"url": HOOK_URL, "events": ["webhook.test"]})),
    Route("GET", "/api/v1/webhooks/{webhook_id}", "owner", 200, webhook),
    Route("PATCH", "/api/v1/webhooks/{webhook_id}", "owner", 200,
          lambda w: Call(path=webhook(w).path, json={"description": "CRM"})),
    Route("DELETE", "/api/v1/webhooks/{webhook_id}", "owner", 204, webhook),
    Route("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret", "owner", 200, webhook),
    Route("POST", "/api/v1/webhooks/{webhook_id}/test", "owner", 202, webhook),
    Route("POST", "/api/v1/webhooks/{webhook_id}/replay", "owner", 202,
          lambda w: Call(path=delivery(w).path, json={"since": "2020-01-01T00:00:00Z"})),
    Route("GET", "/api/v1/webhooks/{webhook_id}/deliveries", "owner", 200, webhook),
    Route("GET", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", "owner", 200,
          delivery),
    Route("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay", "owner", 202,
          delivery),
    Route("GET", "/api/v1/campaigns", "member", 200),
    Route("POST", "/api/v1/campaigns", "member", 201, lambda w: Call(json=w.campaign_input()),
          refers=True),
    Route("POST", "/api/v1/campaigns/audience-count", "member", 200,
          lambda w: Call(json={"tags_any": ["vip"]}), audited=False),
    Route("GET", CAMPAIGNS, "member", 200, kept_campaign),
    Route("PATCH", CAMPAIGNS, "member", 200,
          lambda w: Call(path=campaign()(w).path, json={"name": w.unique("Renamed")})),
    Route("DELETE", CAMPAIGNS, "member", 204, campaign()),
    Route("POST", CAMPAIGNS + "/start", "member", 200, campaign()),
    Route("POST", CAMPAIGNS + "/pause", "member", 200, campaign("running")),
    Route("POST", CAMPAIGNS + "/resume", "member", 200, campaign("paused")),
    Route("POST", CAMPAIGNS + "/cancel", "member", 200, campaign("scheduled")),
    Route("GET", CAMPAIGNS + "/recipients", "member", 200, kept_campaign),
    Route("GET", CAMPAIGNS + "/recipients.csv", "member", 200, kept_campaign),
    Route("GET", CAMPAIGNS + "/stats", "member", 200, kept_campaign),
]

PAGES = [
    Route("GET", "/admin/tenants", "operator", 200),
    Route("POST", "/admin/tenants", "operator", 200,
          lambda w: Call(form={"name": w.unique("Tenant"), "plan": "free"})),
    Route("GET", "/admin/tenants/{tenant_id}", "operator", 200, fresh_tenant),
    Route("PATCH", "/admin/tenants/{tenant_id}", "operator", 200,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id},
                         form={"name": w.unique("Renamed"), "plan": "premium"})),
    Route("DELETE", "/admin/tenants/{tenant_id}", "operator", 200, deleted_tenant),
    Route("POST", "/admin/tenants/{tenant_id}/suspend", "operator", 200, fresh_tenant),
    Route("POST", "/admin/tenants/{tenant_id}/resume", "operator", 200, fresh_tenant),
    Route("POST", "/admin/tenants/{tenant_id}/invitations", "operator", 200,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id},
                         form={"email": email(w), "role": "owner"})),
    Route("POST", "/admin/tenants/{tenant_id}/api-keys", "operator", 200,
          lambda w: Call(path={"tenant_id": w.fresh_tenant().id},
                         form={"name": "CRM", "role": "owner"})),
    Route("DELETE", "/admin/tenants/{tenant_id}/api-keys/{key_id}", "operator", 200,
          fresh_tenant_key),
    Route("GET", "/admin/plans", "operator", 200),
    Route("POST", "/admin/plans", "operator", 200,
          lambda w: Call(form={"id": f"p{w.unique('').strip()}", **plan_form()})),
    Route("PUT", "/admin/plans/{plan_id}", "operator", 200,
          lambda w: Call(path={"plan_id": w.fresh_plan().id}, form=plan_form(max_numbers=4))),
    Route("DELETE", "/admin/plans/{plan_id}", "operator", 200,
          lambda w: Call(path={"plan_id": w.fresh_plan().id})),
    Route("GET", "/admin/audit", "operator", 200),
    Route("GET", "/admin/api-keys", "operator", 200),
    Route("POST", "/admin/api-keys", "operator", 200, lambda w: Call(form={"name": "deploy"})),
    Route("DELETE", "/admin/api-keys/{key_id}", "operator", 200,
          lambda w: Call(path={"key_id": w.fresh_key(None).id})),
    Route("GET", "/settings/users", "owner", 200),
    Route("POST", "/settings/invitations", "owner", 200,
          lambda w: Call(form={"email": email(w), "role": "member"})),
    Route("DELETE", "/settings/invitations/{invitation_id}", "owner", 200,
          lambda w: Call(path={"invitation_id": w.fresh_invite(w.a.id).id})),
    Route("PATCH", "/settings/users/{user_id}", "owner", 200,
          lambda w: Call(path={"user_id": w.fresh_member(w.a.id).id}, form={"role": "owner"})),
    Route("DELETE", "/settings/users/{user_id}", "owner", 200,
          lambda w: Call(path={"user_id": w.fresh_member(w.a.id).id})),
    Route("GET", "/settings/api-keys", "owner", 200),
    Route("POST", "/settings/api-keys", "owner", 200,
          lambda w: Call(form={"name": "CRM", "role": "member"})),
    Route("DELETE", "/settings/api-keys/{key_id}", "owner", 200,
          lambda w: Call(path={"key_id": w.fresh_key(w.a.id).id})),
    Route("GET", "/settings/audit", "owner", 200),
    Route("GET", "/settings/plan", "member", 200),
]


def expected(route: Route, who: str) -> int:
    if who in ("anonymous", "revoked"):
        return 401
    if route.guard == "operator":
        return route.ok if who == "operator" else 403
    if who == "operator" or (who == "member" and route.guard == "owner"):
        return 403
    if who == "other" and route.names_an_object:
        return 404
    return route.ok


def test_every_route_has_a_scenario(world: World) -> None:
    """Routes come from the app: a new one without a row in these tables fails here."""
    served = set()
    for route in world.client.app.routes:
        if not route.path_format.startswith(("/api/v1", "/admin", "/settings")):
            continue
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                served.add(f"{method} {route.path_format}")
    served -= {"GET /api/v1/events"}  # endless stream: tested in tests/web_sessions
    listed = {r.id for r in API} | {r.id for r in PAGES}
    missing, gone = sorted(served - listed), sorted(listed - served)
    assert not missing, f"routes without access scenarios (add rows to API or PAGES): {missing}"
    assert not gone, f"scenarios for routes that no longer exist: {gone}"


def _check(world: World, route: Route, who: str, send: Callable[[Call], Response]) -> None:
    call = route.build(world)
    started = world.clock() + 1  # the request happens on the next tick
    response = send(call)
    want = expected(route, who)
    path = route.path.format(**call.path)
    if want == 401 and not path.startswith("/api/"):
        # A signed-out browser is sent to the login page, which brings it back afterwards.
        here = response.request.url.raw_path.decode()  # path and query, as sent
        login = f"/login?next={quote(here, safe='/')}"
        if route.method == "GET":
            want = 303
            assert response.headers["location"] == login
        else:
            assert response.headers["hx-redirect"] == login
    assert response.status_code == want, response.text
    body = response.text
    if who == "other":
        # Nothing of tenant A: not its name, id, people or the object asked about. (A serial
        # number such as a delivery id may appear in any answer, "404" included; the webhook id
        # beside it is checked.)
        leaks = [world.a.name, world.a.id, world.users["owner"].email,
                 *(value for value in call.path.values() if not value.isdigit())]
        assert not [leak for leak in leaks if leak in body], body
    written = world.audit_since(started)
    if want < 300 and route.method != "GET" and route.audited:
        assert written, f"{route.id} changed something without an audit row"
    else:
        assert not written, f"{route.id} as {who} wrote {written}"


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("route", API, ids=lambda r: r.id)
def test_api_access(world: World, route: Route, who: str) -> None:
    def send(call: Call) -> Response:
        path = route.path.format(**call.path)
        return world.api(who, route.method, path, json=call.json, query=call.query,
                         files=call.files)

    _check(world, route, who, send)


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("route", PAGES, ids=lambda r: r.id)
def test_page_access(world: World, route: Route, who: str) -> None:
    def send(call: Call) -> Response:
        path = route.path.format(**call.path)
        return world.page(who, route.method, path, form=call.form, query=call.query)

    _check(world, route, who, send)


def test_no_webhook_was_delivered(world: World) -> None:
    """Scenarios queue deliveries to a public address: the dispatcher is stopped, so none goes."""
    dispatcher = world.services.webhooks
    assert dispatcher is not None and not dispatcher.running
    _, delivery_id = world.fresh_delivery()
    dispatcher.wake()
    time.sleep(0.2)  # a running dispatcher would have picked it up by now
    assert dispatcher.attempts == 0
    assert world.fetchval("SELECT attempts FROM webhook_deliveries WHERE id = ?",
                          (delivery_id,)) == 0
    assert not world.fetchval("SELECT count(*) FROM webhook_deliveries WHERE attempts > 0")
