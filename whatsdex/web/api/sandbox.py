"""Sandbox controls (`/api/v1/sandbox`): scan a QR with a simulated phone, receive messages,
inject faults. Registered only when the server runs `--engine sandbox`; otherwise they do not
exist (404), so a real deployment has nothing to misuse.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.settings import Settings
from whatsdex.web.api.session_schemas import (
    FaultRequest,
    InboundRequest,
    ReceiptsRequest,
    SandboxResult,
    ScanRequest,
)
from whatsdex.web.api.sessions import audit_number, error_responses, supervisor_of
from whatsdex.web.auth import client_ip, principal_of, requires_owner, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)


async def control(services: Services, actor: Principal, tenant_id: str, session_id: str,
                  action: str, ip: str = "", **command: Any) -> SandboxResult:
    """Run one sandbox action on a running number; audited like any other change."""
    result = await supervisor_of(services).sandbox(tenant_id, session_id, action=action,
                                                   **command)
    await audit_number(services, actor, tenant_id, f"sandbox.{action}", session_id, ip)
    return SandboxResult(action=action, result=result)


@post("/{session_id:str}/scan", status_code=200, summary="Scan the QR code with a simulated phone",
      description="The number, while it offers QR codes, is linked to this phone number at once.",
      responses=error_responses(404, 409))
async def scan(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
               data: JSONBody[ScanRequest]) -> SandboxResult:
    return await control(services, principal_of(request), tenant_id_of(request), session_id,
                         "scan", client_ip(request), phone=data.phone)


@post("/{session_id:str}/inbound", status_code=200, summary="Receive a message from a contact",
      description="A connected number receives `text` from `from` (`count` times); answers once "
                  "every message is stored.", responses=error_responses(404, 409))
async def inbound(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                  data: JSONBody[InboundRequest]) -> SandboxResult:
    return await control(services, principal_of(request), tenant_id_of(request), session_id,
                         "inbound", client_ip(request), sender=data.sender, text=data.text,
                         count=data.count)


@post("/{session_id:str}/faults", status_code=200, summary="Inject a fault",
      description="What goes wrong in real life, on demand: see `kind`.",
      responses=error_responses(404, 409))
async def fault(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                data: JSONBody[FaultRequest]) -> SandboxResult:
    return await control(services, principal_of(request), tenant_id_of(request), session_id,
                         data.kind, client_ip(request), count=data.count)


@post("/{session_id:str}/receipts", status_code=200, summary="How fast contacts answer",
      description="Seconds until the number's contacts send delivered and read receipts.",
      responses=error_responses(404, 409))
async def receipts(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                   data: JSONBody[ReceiptsRequest]) -> SandboxResult:
    return await control(services, principal_of(request), tenant_id_of(request), session_id,
                         "receipts", client_ip(request), delivered_after=data.delivered_after,
                         read_after=data.read_after)


def routes_for(settings: Settings) -> list[Any]:
    """The sandbox routes when the sandbox engine runs, else none at all."""
    if settings.engine != "sandbox":
        return []
    return [Router(path="/api/v1/sandbox/sessions", route_handlers=[scan, inbound, fault, receipts],
                   guards=[requires_owner], security=[{"apiKey": []}], tags=["Sandbox"])]
