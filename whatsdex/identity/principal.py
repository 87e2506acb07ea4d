"""The authenticated identity every request and command acts as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["operator", "owner", "member"]
Kind = Literal["user", "api_key", "link", "cli", "system"]

ROLE_RANK: dict[str, int] = {"member": 1, "owner": 2, "operator": 3}


@dataclass(frozen=True, slots=True)
class Principal:
    """`tenant_id` is None only for the operator; for a link, `scope` names the one object."""

    kind: Kind
    id: str | None
    label: str
    role: Role
    tenant_id: str | None
    scope: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def audit_actor_type(self) -> str:
        return {"user": "user", "api_key": "api_key", "cli": "cli"}.get(self.kind, "system")


CLI = Principal(kind="cli", id=None, label="command line", role="operator", tenant_id=None)
SYSTEM = Principal(kind="system", id=None, label="WhatsDeX", role="operator", tenant_id=None)
