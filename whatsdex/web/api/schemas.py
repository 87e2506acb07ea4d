"""Request and response bodies of the JSON API: msgspec structs, never store rows as they are.

Request structs carry `msgspec.Meta` constraints, so Litestar rejects bad input with a 400 that
names the field and the OpenAPI docs show the rules. Response structs are built field by field
from records: a hash or another secret can only reach a client if it is added here on purpose.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from whatsdex.clock import iso
from whatsdex.identity.limits import LABELS
from whatsdex.store.plans import LIMITS
from whatsdex.store.records import ApiKey, AuditEntry, LinkToken, Plan, Tenant, User

Name = Annotated[str, Meta(min_length=1, max_length=100, description="1-100 characters")]
PlanId = Annotated[
    str,
    Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$",
         description="1-40 lowercase letters, digits, '-' or '_'", examples=["premium"]),
]
Limit = Annotated[int, Meta(ge=0, le=1_000_000_000, description="0 forbids the resource")]
Email = Annotated[str, Meta(min_length=3, max_length=254, examples=["client@example.com"])]
TenantRole = Literal["owner", "member"]

MAX_PAGE = 200


# -- Requests ----------------------------------------------------------------------------------

class TenantCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    plan: PlanId = "free"


class TenantUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields present change."""

    name: Name | None = None
    plan: PlanId | None = None
    status: Literal["active", "suspended"] | None = None


class PlanLimits(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    max_numbers: Limit
    max_messages_per_day: Limit
    max_contacts: Limit
    max_active_campaigns: Limit
    max_webhooks: Limit


class PlanCreate(PlanLimits, kw_only=True, forbid_unknown_fields=True):
    id: PlanId


class ApiKeyCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name = "API key"
    role: Annotated[TenantRole, Meta(description="owner manages the workspace, member uses it")] = (
        "owner"
    )


class InvitationCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    email: Email
    role: TenantRole = "member"


# -- Responses ---------------------------------------------------------------------------------

class TenantOut(Struct, kw_only=True):
    id: str
    name: str
    plan: str
    status: str
    timezone: str
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(id=tenant.id, name=tenant.name, plan=tenant.plan_id, status=tenant.status,
                   timezone=tenant.timezone, created_at=tenant.created_at,
                   updated_at=tenant.updated_at)


class PlanOut(Struct, kw_only=True):
    id: str
    name: str
    max_numbers: int
    max_messages_per_day: int
    max_contacts: int
    max_active_campaigns: int
    max_webhooks: int
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, plan: Plan) -> PlanOut:
        return cls(**{name: getattr(plan, name) for name in cls.__struct_fields__})


class ApiKeyOut(Struct, kw_only=True):
    id: str
    name: str
    role: str
    prefix: str
    tenant_id: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, key: ApiKey) -> ApiKeyOut:
        return cls(id=key.id, name=key.name, role=key.role, prefix=key.prefix,
                   tenant_id=key.tenant_id, created_at=key.created_at,
                   last_used_at=key.last_used_at, revoked_at=key.revoked_at)


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    """The only time the key itself is returned: store it now."""

    key: str

    @classmethod
    def issued(cls, key: ApiKey, secret: str) -> ApiKeyCreated:
        return cls(key=secret, **msgspec.structs.asdict(ApiKeyOut.of(key)))


class InvitationOut(Struct, kw_only=True):
    id: str
    email: str
    role: str
    status: Literal["pending", "accepted", "revoked", "expired"]
    created_at: str
    expires_at: str

    @classmethod
    def of(cls, link: LinkToken, now: float) -> InvitationOut:
        status: Literal["pending", "accepted", "revoked", "expired"] = "pending"
        if link.used_at is not None:
            status = "accepted"
        elif link.revoked_at is not None:
            status = "revoked"
        elif link.expires_at <= iso(now):
            status = "expired"
        return cls(id=link.id, email=link.subject, role=link.role or "member", status=status,
                   created_at=link.created_at, expires_at=link.expires_at)


class InvitationCreated(Struct, kw_only=True):
    """`url` is shown once: send it to the invitee, who picks a password there."""

    id: str
    email: str
    role: str
    url: str
    expires_at: str


class UserOut(Struct, kw_only=True):
    id: str
    email: str
    name: str
    role: str
    created_at: str
    last_login_at: str | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(id=user.id, email=user.email, name=user.name, role=user.role,
                   created_at=user.created_at, last_login_at=user.last_login_at)


class AuditEntryOut(Struct, kw_only=True):
    id: int
    at: str
    tenant_id: str | None
    actor_type: str
    actor_id: str | None
    actor_label: str
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]
    ip: str

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        fields = msgspec.structs.asdict(entry)
        fields["detail"] = msgspec.json.decode(entry.detail or "{}")
        return cls(**fields)


class AuditPage(Struct, kw_only=True):
    """Newest first. Pass `next_before` as `before` for the next page; null: no more entries."""

    items: list[AuditEntryOut]
    next_before: int | None


class LimitUsage(Struct, kw_only=True):
    limit: str
    label: str
    allowed: int
    used: Annotated[int | None, Meta(description="null until WhatsDeX counts this resource")] = None


class PlanUsage(Struct, kw_only=True):
    plan: PlanOut
    limits: list[LimitUsage]
    users: int
    active_api_keys: int
    pending_invitations: int


class Identity(Struct, kw_only=True):
    kind: str
    id: str | None
    name: str
    role: str


class Me(Struct, kw_only=True):
    identity: Identity
    tenant: TenantOut
    plan: PlanOut


def limit_rows(plan: Plan, used: dict[str, int]) -> list[LimitUsage]:
    return [
        LimitUsage(limit=limit, label=LABELS[limit], allowed=int(getattr(plan, limit)),
                   used=used.get(limit))
        for limit in LIMITS
    ]
