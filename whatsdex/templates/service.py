"""Saving, checking and previewing a tenant's message templates.

A body is checked when it is saved, so nothing invalid is ever stored: a campaign can parse a
saved body and render it without a failure path. Every change is audited in its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from msgspec import UNSET, UnsetType

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Conflict, NotFound
from whatsdex.identity import audit
from whatsdex.identity.principal import Principal
from whatsdex.identity.tenants import clean_name
from whatsdex.store import Store
from whatsdex.store import templates as rows
from whatsdex.store.ids import new_id
from whatsdex.store.templates import ContactRef, MessageTemplate
from whatsdex.templates import syntax
from whatsdex.templates.syntax import Problem, Template, TemplateInvalid

KINDS = ("image", "video", "audio", "document")
MAX_CATEGORY = 50
MAX_FILENAME = 200


def normalize(body: str) -> str:
    """Browsers send CRLF from a textarea; positions and lengths count one `\\n` per line."""
    return body.replace("\r\n", "\n").replace("\r", "\n")


def check(body: str) -> Template:
    return syntax.parse(normalize(body))


def validate(body: str) -> Template:
    """The parsed body, or 400 listing every problem with its position."""
    template = check(body)
    if template.problems:
        raise TemplateInvalid(template.problems)
    return template


def _require_content(body: str, media_id: str | None) -> None:
    if not body.strip() and media_id is None:
        raise TemplateInvalid([Problem(0, 1, 1, "empty_body",
                                       "Write the message, or attach a file to send")])


def clean_category(category: str) -> str:
    cleaned = " ".join(category.split())
    if len(cleaned) > MAX_CATEGORY:
        raise BadRequest(f"The category must have at most {MAX_CATEGORY} characters",
                         {"field": "category"})
    return cleaned


def clean_filename(filename: str) -> str:
    # Only the last path part: a name like `..\\x` or `a/b` is shown to recipients as a file.
    base = PureWindowsPath(PurePosixPath(filename.strip()).name).name.strip()
    if len(base) > MAX_FILENAME:
        raise BadRequest(f"The filename must have at most {MAX_FILENAME} characters",
                         {"field": "filename"})
    return base


def kind_for(mimetype: str) -> str:
    """How WhatsApp shows a file of this type by default."""
    major = mimetype.split("/", 1)[0].lower()
    return major if major in ("image", "video", "audio") else "document"


def _attachment(conn: sqlite3.Connection, tenant_id: str, media_id: str | None, kind: str,
                filename: str | None) -> tuple[str | None, str, str]:
    """(media_id, kind, filename) to store, checked against the tenant's media."""
    if media_id is None:
        if kind or filename:
            raise BadRequest("media_kind and filename need a media_id", {"field": "media_id"})
        return None, "", ""
    media = rows.media_sync(conn, tenant_id, media_id)
    if media is None:
        raise BadRequest("No such media in this workspace: upload the file first",
                         {"field": "media_id"})
    if media.origin == "inbound":
        raise BadRequest("Received media are a cache that may be cleared: upload the file to "
                         "attach it", {"field": "media_id"})
    if kind and kind not in KINDS:
        raise BadRequest(f"media_kind must be one of {', '.join(KINDS)}",
                         {"field": "media_kind"})
    natural = kind_for(media.mimetype)
    kind = kind or natural
    if kind != "document" and kind != natural:
        raise BadRequest(f"A {media.mimetype} file can be sent as a {natural} or a document, "
                         f"not as {kind}", {"field": "media_kind"})
    name = clean_filename(filename if filename is not None else media.filename)
    return media_id, kind, name


def _audit(conn: sqlite3.Connection, actor: Principal, action: str, stamp: str, tenant_id: str,
           template_id: str, detail: dict[str, Any], ip: str) -> None:
    audit.record(conn, actor, action, at=stamp, tenant_id=tenant_id, object_type="template",
                 object_id=template_id, detail=detail, ip=ip)


async def get_template(db: Store, tenant_id: str, template_id: str) -> MessageTemplate:
    found = await rows.get(db, tenant_id, template_id)
    if found is None:
        raise NotFound("Template not found")
    return found


async def list_templates(db: Store, tenant_id: str, category: str | None = None
                         ) -> list[MessageTemplate]:
    return await rows.list_for_tenant(db, tenant_id, category)


async def create_template(
    db: Store, actor: Principal, tenant_id: str, *, name: str, body: str, category: str = "",
    media_id: str | None = None, media_kind: str = "", filename: str | None = None,
    now: float, ip: str = "",
) -> MessageTemplate:
    name = clean_name(name)
    category = clean_category(category)
    body = normalize(body)
    validate(body)
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> MessageTemplate:
        if rows.name_taken(conn, tenant_id, name):
            raise Conflict(f"A template named {name!r} already exists", {"field": "name"})
        media, kind, file = _attachment(conn, tenant_id, media_id, media_kind, filename)
        _require_content(body, media)
        template = MessageTemplate(id=new_id("tpl"), tenant_id=tenant_id, name=name,
                                   category=category, body=body, media_id=media,
                                   media_kind=kind, filename=file, created_at=stamp,
                                   updated_at=stamp)
        rows.insert(conn, template)
        _audit(conn, actor, "template.created", stamp, tenant_id, template.id,
               {"name": name, **({"media_id": media} if media else {})}, ip)
        return template

    return await db.write(write)


async def update_template(
    db: Store, actor: Principal, tenant_id: str, template_id: str, *, now: float, ip: str = "",
    name: str | UnsetType = UNSET, body: str | UnsetType = UNSET,
    category: str | UnsetType = UNSET, media_id: str | UnsetType | None = UNSET,
    media_kind: str | UnsetType = UNSET, filename: str | UnsetType = UNSET,
) -> MessageTemplate:
    """Change only what is given; `media_id=None` detaches the attachment."""
    fields: dict[str, Any] = {}
    if not isinstance(name, UnsetType):
        fields["name"] = clean_name(name)
    if not isinstance(category, UnsetType):
        fields["category"] = clean_category(category)
    if not isinstance(body, UnsetType):
        fields["body"] = normalize(body)
        validate(fields["body"])
    media_given = not all(isinstance(v, UnsetType) for v in (media_id, media_kind, filename))
    if not fields and not media_given:
        raise BadRequest("Nothing to change")
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> MessageTemplate:
        before = rows.get_sync(conn, tenant_id, template_id)
        if before is None:
            raise NotFound("Template not found")
        if "name" in fields and rows.name_taken(conn, tenant_id, fields["name"], template_id):
            raise Conflict(f"A template named {fields['name']!r} already exists",
                           {"field": "name"})
        if media_given:
            fields.update(_changed_attachment(conn, tenant_id, before, media_id, media_kind,
                                              filename))
        _require_content(fields.get("body", before.body), fields.get("media_id", before.media_id))
        changed = sorted(k for k, v in fields.items() if getattr(before, k) != v)
        rows.update(conn, tenant_id, template_id, stamp, **fields)
        _audit(conn, actor, "template.updated", stamp, tenant_id, template_id,
               {"name": fields.get("name", before.name), "changed": changed}, ip)
        after = rows.get_sync(conn, tenant_id, template_id)
        assert after is not None
        return after

    return await db.write(write)


def _changed_attachment(conn: sqlite3.Connection, tenant_id: str, before: MessageTemplate,
                        media_id: str | UnsetType | None, media_kind: str | UnsetType,
                        filename: str | UnsetType) -> dict[str, Any]:
    """The attachment columns after an update: a new file starts from its own kind and name;
    the same file keeps whatever the update does not change."""
    same_file = isinstance(media_id, UnsetType) or media_id == before.media_id
    target = before.media_id if isinstance(media_id, UnsetType) else media_id
    if isinstance(media_kind, UnsetType):
        media_kind = before.media_kind if same_file else ""
    file: str | None
    if isinstance(filename, UnsetType):
        file = before.filename if same_file and target is not None else None
    else:
        file = filename
    if target is None and not isinstance(media_id, UnsetType):
        media_kind, file = "", None  # detaching drops the kind and the name with the file
    media, kind, name = _attachment(conn, tenant_id, target, media_kind, file)
    return {"media_id": media, "media_kind": kind, "filename": name}


async def delete_template(db: Store, actor: Principal, tenant_id: str, template_id: str, *,
                          now: float, ip: str = "") -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        before = rows.get_sync(conn, tenant_id, template_id)
        if before is None:
            raise NotFound("Template not found")
        rows.delete(conn, tenant_id, template_id)
        _audit(conn, actor, "template.deleted", stamp, tenant_id, template_id,
               {"name": before.name}, ip)

    await db.write(write)


# -- Preview ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Preview:
    """A body rendered for one contact (or sample fields); `problems` when it cannot be."""

    text: str
    variables: list[str]
    missing: list[str]
    variants: int
    length: int
    problems: tuple[Problem, ...]
    seed: str | None


def fields_of(contact: ContactRef) -> dict[str, Any]:
    return syntax.contact_fields(contact.name, contact.phone, contact.custom, contact.push_name)


def overlay(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` on top of `base`; a nested `custom` object becomes `custom.<key>` entries, and a
    new name brings its first name unless one is given."""
    merged = dict(base)
    for key, raw in extra.items():
        if key == "custom" and isinstance(raw, Mapping):
            for sub, value in raw.items():
                merged[syntax.CUSTOM_PREFIX + str(sub)] = value
        else:
            merged[str(key)] = raw
    if "name" in extra and "first_name" not in extra:
        merged.pop("first_name", None)  # derived from the new name by syntax.value
    return merged


async def contact_for_preview(db: Store, tenant_id: str, contact_id: str) -> ContactRef:
    found = await rows.contact(db, tenant_id, contact_id)
    if found is None:
        raise NotFound("Contact not found")
    return found


async def preview(db: Store, tenant_id: str, body: str, *, contact_id: str | None = None,
                  fields: Mapping[str, Any] | None = None, seed: str | None = None) -> Preview:
    """Render `body` for a contact of this tenant (another tenant's id is not found) and/or the
    given fields, which override the contact's."""
    template = check(body)
    values: dict[str, Any] = {}
    if contact_id:
        values = fields_of(await contact_for_preview(db, tenant_id, contact_id))
    if fields:
        values = overlay(values, fields)
    names = sorted(syntax.variables(template))
    if template.problems:
        return Preview(text="", variables=names, missing=[], variants=0, length=0,
                       problems=template.problems, seed=seed)
    text = syntax.render(template, values, seed=seed)
    return Preview(text=text, variables=names, missing=syntax.missing(template, values),
                   variants=syntax.variants(template), length=len(text), problems=(),
                   seed=seed)
