"""Who a campaign goes to: contacts chosen by tags, consent and custom fields.

Opted-out contacts never are: they are left out when a run takes its audience, and every
recipient is checked again right before its message is queued (someone may send STOP while a
campaign runs). A contact without a number WhatsApp can be reached at is kept as `skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from whatsdex.contacts.service import CUSTOM_VALUE_MAX, check_custom_key, clean_tag
from whatsdex.errors import BadRequest, WhatsdexError
from whatsdex.messaging.recipients import LID_SERVER, phone_digits
from whatsdex.store import Store
from whatsdex.store import campaigns as rows
from whatsdex.store.campaigns import AudienceFilter, Candidate

OptStatus = Literal["unknown", "opted_in"]
MAX_TAGS = 50
MAX_CUSTOM = 20


class Audience(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Contacts with any of `tags_any`, all of `tags_all`, a consent in `opt_status`, and each
    custom field of `custom` equal to its value. Empty lists and maps do not narrow."""

    tags_any: list[str] = msgspec.field(default_factory=list)
    tags_all: list[str] = msgspec.field(default_factory=list)
    opt_status: list[OptStatus] = msgspec.field(default_factory=lambda: ["unknown", "opted_in"])
    custom: dict[str, str] = msgspec.field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AudienceCount:
    matching: int  # contacts the filters select, opted-out ones included
    opted_out: int  # of which opted out: never messaged

    @property
    def sendable(self) -> int:
        return self.matching - self.opted_out


def _tags(tags: list[str], field: str) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise BadRequest(f"`{field}`: at most {MAX_TAGS} tags", {"field": field})
    cleaned: list[str] = []
    for tag in tags:
        value = clean_tag(tag, field)
        if value and value not in cleaned:
            cleaned.append(value)
    return cleaned


def clean(audience: Audience) -> Audience:
    """Validated and normalised; 400 naming the field otherwise."""
    custom: dict[str, str] = {}
    if len(audience.custom) > MAX_CUSTOM:
        raise BadRequest(f"`audience.custom`: at most {MAX_CUSTOM} fields",
                         {"field": "audience.custom"})
    for key, value in audience.custom.items():
        try:
            name = check_custom_key(key.strip())
        except WhatsdexError as exc:
            raise BadRequest(f"`audience.custom`: {exc.message}",
                             {"field": "audience.custom"}) from None
        if len(value) > CUSTOM_VALUE_MAX:
            raise BadRequest(f"`audience.custom.{name}` may have at most {CUSTOM_VALUE_MAX} "
                             "characters", {"field": "audience.custom"})
        custom[name] = value.strip()
    statuses = sorted(set(audience.opt_status))
    if not statuses or any(s not in ("unknown", "opted_in") for s in statuses):
        raise BadRequest("`audience.opt_status`: choose `unknown`, `opted_in` or both "
                         "(opted-out contacts are never messaged)",
                         {"field": "audience.opt_status"})
    return Audience(tags_any=_tags(audience.tags_any, "audience.tags_any"),
                    tags_all=_tags(audience.tags_all, "audience.tags_all"),
                    opt_status=statuses, custom=custom)


def from_stored(value: dict[str, object]) -> Audience:
    return msgspec.convert(value, Audience)


def as_filter(audience: Audience) -> AudienceFilter:
    return AudienceFilter(tags_any=tuple(audience.tags_any), tags_all=tuple(audience.tags_all),
                          opt_statuses=tuple(audience.opt_status),
                          custom=tuple(sorted(audience.custom.items())))


async def count(db: Store, tenant_id: str, audience: Audience) -> AudienceCount:
    matching, opted_out = await rows.count_audience(db, tenant_id, as_filter(clean(audience)))
    return AudienceCount(matching=matching, opted_out=opted_out)


def address_of(candidate: Candidate) -> str | None:
    """Where the contact's message goes: its phone digits, else its LID JID; None when it has
    neither that WhatsApp would take."""
    if candidate.phone:
        try:
            return phone_digits(candidate.phone)
        except BadRequest:
            pass
    lid = candidate.lid.split("@", 1)[0]
    if lid.isascii() and lid.isdigit() and 1 <= len(lid) <= 20:
        return f"{lid}@{LID_SERVER}"
    return None


def send_to(address: str) -> str:
    """The `to` of a SendRequest for a stored address."""
    return address if "@" in address else f"+{address}"
