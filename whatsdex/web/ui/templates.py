"""Message templates in the dashboard: the list, and an editor whose preview follows the typing.

The body textarea posts the whole form to `/templates/preview` 300 ms after the last keystroke;
the answer is the preview (or the problems, with their positions) rendered for the chosen
contact or for sample fields. A hidden seed keeps the spintax choices still while typing;
"Another variant" asks for a new one. Saving checks the body again and shows the same problems
next to the form.
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from msgspec import UNSET

from whatsdex.errors import BadRequest, Conflict, WhatsdexError
from whatsdex.services import Services
from whatsdex.store import templates as rows
from whatsdex.store.templates import MessageTemplate
from whatsdex.templates import service, syntax
from whatsdex.templates.syntax import TemplateInvalid
from whatsdex.web.auth import client_ip, principal_of, requires_member, tenant_id_of
from whatsdex.web.ui.workspace import go, is_htmx, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)

PICKER_CONTACTS = 100
SAMPLE = {"sample_name": "Ana Lima", "sample_phone": "15551234567",
          "sample_custom": "company=Acme Bakery"}
KIND_LABELS = (("", "As its file type suggests"), ("image", "Image"), ("video", "Video"),
               ("audio", "Audio"), ("document", "Document"))


def new_seed() -> str:
    return secrets.token_hex(4)


def sample_fields(form: FormMultiDict) -> dict[str, Any]:
    """The editor's sample contact: a name, a phone and `key=value` lines of custom fields."""
    fields: dict[str, Any] = {"name": text(form, "sample_name"),
                              "phone": text(form, "sample_phone")}
    digits = "".join(ch for ch in fields["phone"] if ch.isdigit())
    fields["phone"] = f"+{digits}" if digits else ""
    for line in text(form, "sample_custom").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[syntax.CUSTOM_PREFIX + key.strip()] = value.strip()
    return fields


def chips(custom_keys: list[str]) -> list[tuple[str, str]]:
    """(label, text inserted at the cursor) for the variable buttons above the body."""
    found = [(name, f"{{{{{name}}}}}") for name in syntax.BUILTIN_VARIABLES]
    found += [(f"custom.{key}", f"{{{{custom.{key}}}}}") for key in custom_keys
              if syntax.CUSTOM_KEY.match(key)]
    found.append(("a choice", "{Hi|Hello}"))
    return found


def form_values(form: FormMultiDict | None, row: MessageTemplate | None) -> dict[str, str]:
    """What the editor's inputs show: what was just submitted, else the saved template."""
    if form is not None:
        keys = ("name", "category", "body", "media_id", "media_kind", "filename")
        values = {key: text(form, key) for key in keys}
        values["body"] = service.normalize(values["body"])
        return values
    if row is None:
        return {"name": "", "category": "", "body": "Hi {{first_name|there}}, ",
                "media_id": "", "media_kind": "", "filename": ""}
    return {"name": row.name, "category": row.category, "body": row.body,
            "media_id": row.media_id or "", "media_kind": row.media_kind if row.media_id else "",
            "filename": row.filename}


async def _preview_context(services: Services, tenant_id: str, body: str, form: FormMultiDict
                           | None) -> dict[str, Any]:
    contact_id = text(form, "contact_id") if form is not None else ""
    seed = text(form, "seed") if form is not None else ""
    if not seed or (form is not None and text(form, "shuffle")):
        seed = new_seed()
    fields = None if contact_id else sample_fields(form if form is not None
                                                   else FormMultiDict(SAMPLE))
    result = await service.preview(services.store, tenant_id, body, contact_id=contact_id or None,
                                   fields=fields, seed=seed)
    return {"preview": result, "seed": seed, "max_length": syntax.MAX_LENGTH}


async def _media_choices(services: Services, tenant_id: str, row: MessageTemplate | None
                         ) -> list[rows.MediaRef]:
    """Recent files, and always the one attached (saving the form must not drop it)."""
    found = await rows.list_media(services.store, tenant_id)
    if row is not None and row.media_id and all(m.id != row.media_id for m in found):
        attached = await rows.media(services.store, tenant_id, row.media_id)
        if attached is not None:
            found.insert(0, attached)
    return found


def _attachment_fields(form: FormMultiDict) -> tuple[str | None, str]:
    """The chosen file and how to send it; the kind means nothing without a file."""
    media_id = text(form, "media_id") or None
    return media_id, text(form, "media_kind") if media_id else ""


async def _editor(request: AnyRequest, services: Services, row: MessageTemplate | None, *,
                  form: FormMultiDict | None = None, status_code: int = 200,
                  error: WhatsdexError | None = None) -> Template:
    tenant_id = tenant_id_of(request)
    values = form_values(form, row)
    context = await _preview_context(services, tenant_id, values["body"], form)
    custom_keys = await rows.custom_keys(services.store, tenant_id)
    page_context = {
        "tpl": row,
        "values": values,
        "action": f"/templates/{row.id}" if row else "/templates",
        "contacts": await rows.list_contacts(services.store, tenant_id, PICKER_CONTACTS),
        "media": await _media_choices(services, tenant_id, row),
        "kinds": KIND_LABELS,
        "chips": chips(custom_keys),
        "sample": {key: text(form, key) for key in SAMPLE} if form is not None else SAMPLE,
        "contact_id": text(form, "contact_id") if form is not None else "",
        "error": error,
        **context,
    }
    template = page(request, "message_templates/editor.html", **page_context)
    template.status_code = status_code
    return template


# -- Pages -----------------------------------------------------------------------------------------

@get("/templates")
async def templates_page(request: AnyRequest, services: ServicesDep) -> Template:
    found = await service.list_templates(services.store, tenant_id_of(request))
    summaries = []
    for row in found:
        parsed = syntax.parse(row.body)
        summaries.append({"t": row, "variables": sorted(syntax.variables(parsed)),
                          "variants": syntax.variants(parsed)})
    return page(request, "message_templates/list.html", templates=summaries)


@get("/templates/new")
async def new_template(request: AnyRequest, services: ServicesDep) -> Template:
    return await _editor(request, services, None)


@get("/templates/{template_id:str}")
async def edit_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str]
                        ) -> Template:
    row = await service.get_template(services.store, tenant_id_of(request), template_id)
    return await _editor(request, services, row)


# -- Saving ----------------------------------------------------------------------------------------

def _save_failed(request: AnyRequest, exc: WhatsdexError) -> Template:
    """An HTMX save that failed: the problems (or the message) next to the Save button."""
    problems = exc.problems if isinstance(exc, TemplateInvalid) else ()
    return Template(template_name="message_templates/_save_result.html",
                    context={"error": exc, "problems": problems}, status_code=exc.status_code,
                    headers={"HX-Retarget": "#save-result", "HX-Reswap": "innerHTML"})


@post("/templates")
async def create_template(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    form = await request.form()
    media_id, media_kind = _attachment_fields(form)
    try:
        row = await service.create_template(
            services.store, principal_of(request), tenant_id_of(request),
            name=text(form, "name"), body=text(form, "body"), category=text(form, "category"),
            media_id=media_id, media_kind=media_kind,
            filename=(text(form, "filename") or None) if media_id else None,
            now=services.clock(), ip=client_ip(request))
    except (BadRequest, Conflict) as exc:
        if is_htmx(request):
            return _save_failed(request, exc)
        return await _editor(request, services, None, form=form, status_code=exc.status_code,
                             error=exc)
    return go(request, f"/templates/{row.id}?saved=1")


@post("/templates/{template_id:str}")
async def save_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str]
                        ) -> Response[Any]:
    tenant_id = tenant_id_of(request)
    form = await request.form()
    media_id, media_kind = _attachment_fields(form)
    try:
        row = await service.update_template(
            services.store, principal_of(request), tenant_id, template_id,
            now=services.clock(), ip=client_ip(request), name=text(form, "name"),
            body=text(form, "body"), category=text(form, "category"), media_id=media_id,
            media_kind=media_kind,
            filename=(text(form, "filename") or UNSET) if media_id else UNSET)
    except (BadRequest, Conflict) as exc:
        if is_htmx(request):
            return _save_failed(request, exc)
        before = await service.get_template(services.store, tenant_id, template_id)
        return await _editor(request, services, before, form=form, status_code=exc.status_code,
                             error=exc)
    if is_htmx(request):
        return partial("message_templates/_save_result.html", saved=row, error=None,
                       problems=())
    return go(request, f"/templates/{row.id}?saved=1")


@delete("/templates/{template_id:str}", status_code=200)
async def delete_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str]
                          ) -> Response[Any]:
    await service.delete_template(services.store, principal_of(request), tenant_id_of(request),
                                  template_id, now=services.clock(), ip=client_ip(request))
    return go(request, "/templates")


# -- The live preview ------------------------------------------------------------------------------

@post("/templates/preview", status_code=200)
async def preview(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    body = service.normalize(text(form, "body"))
    context = await _preview_context(services, tenant_id_of(request), body, form)
    return partial("message_templates/_preview.html", oob_seed=True, **context)


ROUTES: list[Any] = [
    Router(path="/", guards=[requires_member], include_in_schema=False, route_handlers=[
        templates_page, new_template, edit_template, create_template, save_template,
        delete_template, preview,
    ]),
]
