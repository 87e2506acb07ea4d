"""Contacts as a tenant manages them: validation, CRUD, tags, custom fields, opt-in and opt-out.

Every write checks what it must inside the writer transaction (duplicate phone, plan limit), so
two requests racing for the same phone cannot both win. Consent changes (opt-in/out) carry when
and where they came from (`api`, `import`, `keyword`, `inbox`, `ui`) and are audited.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from whatsdex.clock import iso
from whatsdex.contacts import phones
from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import audit, limits
from whatsdex.identity.principal import Principal
from whatsdex.store import Store
from whatsdex.store import contact_lists as rows
from whatsdex.store.contact_lists import Contact, Filter
from whatsdex.store.ids import new_id

OPT_STATUSES = rows.OPT_STATUSES
OPT_SOURCES = ("api", "import", "keyword", "inbox", "ui")
PHONE_SERVER = "s.whatsapp.net"

NAME_MAX = 200
TAG_MAX = 40
TAGS_MAX = 50
CUSTOM_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
CUSTOM_KEYS_MAX = 50
CUSTOM_VALUE_MAX = 1000
CUSTOM_BYTES_MAX = 16_384
_INT_LIMIT = 2**53  # beyond this a JSON number is not exact in every client
_TAG_FORBIDDEN = re.compile(r"[,;\x00-\x1f\x7f]")


# -- Validation (shared by the API, the UI and the importer) -----------------------------------

def clean_name(name: str, field: str = "name") -> str:
    cleaned = " ".join(str(name).split())
    if len(cleaned) > NAME_MAX:
        raise BadRequest(f"The name must have at most {NAME_MAX} characters", {"field": field})
    return cleaned


def clean_tag(tag: str, field: str = "tags") -> str:
    """Trimmed, inner spaces collapsed, lowercased; '' when nothing is left."""
    cleaned = " ".join(str(tag).split()).lower()
    if _TAG_FORBIDDEN.search(cleaned):
        raise BadRequest(f"Tag {cleaned!r} contains ',' or ';' (they separate tags in files)",
                         {"field": field})
    if len(cleaned) > TAG_MAX:
        raise BadRequest(f"Tags have at most {TAG_MAX} characters: {cleaned[:TAG_MAX]!r}…",
                         {"field": field})
    return cleaned


def clean_tags(tags: Iterable[str], field: str = "tags") -> list[str]:
    """Normalised, empty ones dropped, duplicates removed (first position kept)."""
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise BadRequest("Tags are strings", {"field": field})
        cleaned = clean_tag(tag, field)
        if cleaned and cleaned not in out:
            out.append(cleaned)
    if len(out) > TAGS_MAX:
        raise BadRequest(f"A contact has at most {TAGS_MAX} tags", {"field": field})
    return out


def split_tags(text: str) -> list[str]:
    """`vip; Berlin, 2024` → the raw tags a file cell or a form field holds."""
    return [part for part in re.split(r"[;,]", text) if part.strip()]


def clean_custom_value(key: str, value: Any) -> str | int | float | bool:
    field = f"custom.{key}"
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _INT_LIMIT:
            raise BadRequest(f"{field}: the number is too large", {"field": field})
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"{field}: the number must be finite", {"field": field})
        return value
    if isinstance(value, str):
        if len(value) > CUSTOM_VALUE_MAX:
            raise BadRequest(f"{field} is longer than {CUSTOM_VALUE_MAX} characters",
                             {"field": field})
        return value
    raise BadRequest(f"{field} must be a string, a number or true/false", {"field": field})


def check_custom_key(key: str) -> str:
    if not isinstance(key, str) or not CUSTOM_KEY.match(key):
        raise BadRequest(f"Custom field name {key!r} must be 1-40 lowercase letters, digits or "
                         "'_', starting with a letter", {"field": f"custom.{key}"})
    return key


def clean_custom(custom: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(custom, Mapping):
        raise BadRequest("custom must be an object of fields", {"field": "custom"})
    out = {check_custom_key(k): clean_custom_value(k, v) for k, v in custom.items()}
    check_custom_size(out)
    return out


def check_custom_size(custom: Mapping[str, Any]) -> None:
    if len(custom) > CUSTOM_KEYS_MAX:
        raise BadRequest(f"A contact has at most {CUSTOM_KEYS_MAX} custom fields",
                         {"field": "custom"})
    # Cheap bound first (imports check every row): 4 bytes per character, quotes and commas.
    rough = sum(len(k) + len(str(v)) + 6 for k, v in custom.items())
    if rough * 4 > CUSTOM_BYTES_MAX and \
            len(json.dumps(custom, ensure_ascii=False).encode()) > CUSTOM_BYTES_MAX:
        raise BadRequest(f"Custom fields take at most {CUSTOM_BYTES_MAX // 1024} KB per contact",
                         {"field": "custom"})


def check_opt_status(status: str, field: str = "opt_status") -> str:
    if status not in OPT_STATUSES:
        raise BadRequest(f"{field} must be one of {', '.join(OPT_STATUSES)}", {"field": field})
    return status


def phone_jid(phone: str) -> str:
    return f"{phone}@{PHONE_SERVER}"


# -- Cursors -----------------------------------------------------------------------------------

def encode_cursor(contact: Contact) -> str:
    raw = f"{contact.created_at}|{contact.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    created_at, sep, contact_id = raw.partition("|")
    if not sep or not created_at or not contact_id:
        raise BadRequest("Invalid cursor: pass `next_cursor` from the previous page",
                         {"field": "cursor"})
    return created_at, contact_id


def make_filter(tag: str | None = None, opt_status: str | None = None,
                search: str | None = None) -> Filter:
    clean = clean_tag(tag, "tag") if tag else None
    status = check_opt_status(opt_status) if opt_status else None
    return Filter(tag=clean or None, opt_status=status, search=(search or "").strip() or None)


# -- Reads -------------------------------------------------------------------------------------

async def get(db: Store, tenant_id: str, contact_id: str) -> Contact:
    contact = await rows.get(db, tenant_id, contact_id)
    if contact is None:
        raise NotFound("Contact not found")
    return contact


async def list_page(db: Store, tenant_id: str, f: Filter, *, cursor: str | None, limit: int
                    ) -> tuple[list[Contact], str | None]:
    """One page, newest first, and the cursor of the next one (None at the end)."""
    found = await rows.page(db, tenant_id, f, after=decode_cursor(cursor), limit=limit + 1)
    items = found[:limit]
    return items, encode_cursor(items[-1]) if len(found) > limit else None


# -- Writes ------------------------------------------------------------------------------------

def _taken(conn: sqlite3.Connection, tenant_id: str, phone: str, except_id: str = "") -> None:
    existing = rows.by_phone(conn, tenant_id, phone)
    if existing is not None and existing.id != except_id:
        raise Conflict(f"A contact with phone +{phone} already exists ({existing.id})",
                       {"field": "phone", "contact_id": existing.id})


def _audit_detail(contact: Contact) -> dict[str, Any]:
    return {"phone": phones.e164(contact.phone), "name": contact.name}


async def create(db: Store, actor: Principal, tenant_id: str, *, phone: str,
                 default_country: str | None = None, name: str = "",
                 tags: Iterable[str] = (), custom: Mapping[str, Any] | None = None,
                 opt_status: str = "unknown", source: str = "api", now: float, ip: str = ""
                 ) -> Contact:
    digits = phones.normalize(phone, phones.country(default_country))
    stamp = iso(now)
    opted = check_opt_status(opt_status) != "unknown"
    contact = Contact(
        id=new_id("con"), tenant_id=tenant_id, phone=digits, jid=phone_jid(digits), lid="",
        name=clean_name(name), push_name="", tags=clean_tags(tags),
        custom=clean_custom(custom or {}), opt_status=opt_status,
        opt_changed_at=stamp if opted else None, opt_source=source if opted else "",
        created_at=stamp, updated_at=stamp)

    def write(conn: sqlite3.Connection) -> Contact:
        _taken(conn, tenant_id, digits)
        limits.enforce(conn, tenant_id, "max_contacts", rows.count(conn, tenant_id))
        rows.insert(conn, contact)
        audit.record(conn, actor, "contact.created", at=stamp, tenant_id=tenant_id,
                     object_type="contact", object_id=contact.id,
                     detail=_audit_detail(contact), ip=ip)
        return contact

    return await db.write(write)


async def update(db: Store, actor: Principal, tenant_id: str, contact_id: str, *,
                 phone: str | None = None, default_country: str | None = None,
                 name: str | None = None, tags: Iterable[str] | None = None,
                 custom: Mapping[str, Any] | None = None, now: float, ip: str = ""
                 ) -> Contact:
    """Only what is given changes; `tags` and `custom` replace the whole list / object."""
    digits = phones.normalize(phone, phones.country(default_country)) if phone is not None \
        else None
    new_name = clean_name(name) if name is not None else None
    new_tags = clean_tags(tags) if tags is not None else None
    new_custom = clean_custom(custom) if custom is not None else None
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Contact:
        contact = rows.get_sync(conn, tenant_id, contact_id)
        if contact is None:
            raise NotFound("Contact not found")
        changed: list[str] = []
        if digits is not None and digits != contact.phone:
            _taken(conn, tenant_id, digits, except_id=contact.id)
            # Another number is another WhatsApp account: its ids no longer apply.
            contact.phone, contact.jid, contact.lid = digits, phone_jid(digits), ""
            changed.append("phone")
        if new_name is not None and new_name != contact.name:
            contact.name = new_name
            changed.append("name")
        if new_tags is not None and new_tags != contact.tags:
            contact.tags = new_tags
            changed.append("tags")
        if new_custom is not None and new_custom != contact.custom:
            contact.custom = new_custom
            changed.append("custom")
        if changed:
            contact.updated_at = stamp
            rows.update_many(conn, [contact])
            audit.record(conn, actor, "contact.updated", at=stamp, tenant_id=tenant_id,
                         object_type="contact", object_id=contact.id,
                         detail={**_audit_detail(contact), "changed": changed}, ip=ip)
        return contact

    return await db.write(write)


async def delete(db: Store, actor: Principal, tenant_id: str, contact_id: str, *, now: float,
                 ip: str = "") -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        contact = rows.get_sync(conn, tenant_id, contact_id)
        if contact is None:
            raise NotFound("Contact not found")
        rows.delete(conn, tenant_id, contact_id)
        audit.record(conn, actor, "contact.deleted", at=stamp, tenant_id=tenant_id,
                     object_type="contact", object_id=contact_id,
                     detail=_audit_detail(contact), ip=ip)

    await db.write(write)


def change_opt(conn: sqlite3.Connection, actor: Principal, tenant_id: str, contact: Contact,
               status: str, *, source: str, at: str, ip: str = "") -> bool:
    """Opt every row of this person in or out; False when they already were (nothing written).

    Inside a write. One person may have two rows (a LID-only one from an inbound message and
    a phone one from an import): consent follows the person, so all of them change.
    """
    if source not in OPT_SOURCES:
        raise ValueError(f"unknown opt source {source!r}")
    if contact.opt_status == status:
        return False
    ids = rows.same_person(conn, tenant_id, contact)
    rows.set_opt(conn, tenant_id, ids, status, source=source, at=at)
    action = "contact.opted_out" if status == "opted_out" else "contact.opted_in"
    audit.record(conn, actor, action, at=at, tenant_id=tenant_id, object_type="contact",
                 object_id=contact.id,
                 detail={**_audit_detail(contact), "source": source, "rows": len(ids)}, ip=ip)
    return True


async def set_opt(db: Store, actor: Principal, tenant_id: str, contact_id: str, status: str, *,
                  source: str, now: float, ip: str = "") -> Contact:
    """Opt in or out (status `opted_in` / `opted_out`), recording when and from where."""
    if status not in ("opted_in", "opted_out"):
        raise BadRequest("Opt in or out", {"field": "opt_status"})
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> Contact:
        contact = rows.get_sync(conn, tenant_id, contact_id)
        if contact is None:
            raise NotFound("Contact not found")
        change_opt(conn, actor, tenant_id, contact, status, source=source, at=stamp, ip=ip)
        updated = rows.get_sync(conn, tenant_id, contact_id)
        assert updated is not None
        return updated

    return await db.write(write)

