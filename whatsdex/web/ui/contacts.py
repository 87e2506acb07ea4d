"""Contacts in the dashboard: the list (search, tag and consent filters, pages), a contact's
form with its opt-in/out switch, CSV import (preview with a field per column, then a live
progress bar and the error report) and export.

Pages work as plain forms and links; htmx only swaps parts (the preview, the consent card, the
progress, which polls every second until the import is over).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template

from whatsdex.contacts import importer, phones, service
from whatsdex.contacts.mapping import ImportOptions, clean_options
from whatsdex.errors import BadRequest, WhatsdexError
from whatsdex.services import Services
from whatsdex.store import contact_lists
from whatsdex.store.contact_lists import Contact
from whatsdex.web.api import contacts as ops
from whatsdex.web.auth import client_ip, principal_of, requires_member, tenant_id_of
from whatsdex.web.ui.workspace import go, page, partial, text

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
PAGE_SIZE = 50
ERRORS_SHOWN = 200
FIELD_CHOICES = (("", "ignore"), ("phone", "phone"), ("name", "name"), ("tags", "tags"),
                 ("opt_status", "opt-in status"))
Q = Annotated[str | None, QueryParameter(max_length=200)]


# -- Helpers -----------------------------------------------------------------------------------

def _custom_text(custom: dict[str, Any]) -> str:
    return "\n".join(f"{key}: {service_display(value)}" for key, value in custom.items())


def service_display(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_custom(text_value: str, before: dict[str, Any]) -> dict[str, Any]:
    """`key: value` lines. A value shown unchanged keeps its type (a number stays a number)."""
    custom: dict[str, Any] = {}
    for number, raw in enumerate(text_value.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"Custom fields, line {number}: write `name: value`",
                             {"field": "custom"})
        key, value = key.strip(), value.strip()
        previous = before.get(key)
        custom[key] = previous if previous is not None and service_display(previous) == value \
            else value
    return custom


def _form_context(contact: Contact | None, form: FormMultiDict | None = None,
                  error: str = "") -> dict[str, Any]:
    values = {
        "phone": phones.e164(contact.phone) if contact else "",
        "default_country": "",
        "name": contact.name if contact else "",
        "tags": ", ".join(contact.tags) if contact else "",
        "custom": _custom_text(contact.custom) if contact else "",
    }
    if form is not None:
        values.update({name: text(form, name) for name in values})
    return {"c": contact, "values": values, "error": error}


def _opt_card(contact: Contact, notice: str = "") -> Template:
    return partial("contacts/_opt.html", c=contact, notice=notice)


# -- The list ----------------------------------------------------------------------------------

@get("/contacts")
async def contacts_page(request: AnyRequest, services: ServicesDep, search: Q = None,
                        tag: Q = None, opt_status: Q = None, cursor: Q = None) -> Template:
    tenant_id = tenant_id_of(request)
    f = service.make_filter(tag or None, opt_status or None, search)
    items, next_cursor = await service.list_page(services.store, tenant_id, f, cursor=cursor,
                                                 limit=PAGE_SIZE)
    query = {k: v for k, v in (("search", f.search), ("tag", f.tag),
                               ("opt_status", f.opt_status)) if v}
    return page(
        request, "contacts/list.html", contacts=items, filters=query, next_cursor=next_cursor,
        first_page=cursor is not None,
        matching=await contact_lists.count_matching(services.store, tenant_id, f),
        total=await contact_lists.count_async(services.store, tenant_id),
        tags=await contact_lists.tag_counts(services.store, tenant_id),
        display=phones.display)


@get("/contacts/export")
async def export_csv(request: AnyRequest, services: ServicesDep, search: Q = None,
                     tag: Q = None, opt_status: Q = None) -> Stream:
    return ops.export_stream(services, tenant_id_of(request),
                             service.make_filter(tag or None, opt_status or None, search))


# -- One contact -------------------------------------------------------------------------------

@get("/contacts/new")
async def new_contact(request: AnyRequest) -> Template:
    return page(request, "contacts/contact.html", **_form_context(None))


@post("/contacts")
async def create_contact(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    form = await request.form()
    try:
        contact = await service.create(
            services.store, principal_of(request), tenant_id_of(request),
            phone=text(form, "phone"), default_country=text(form, "default_country") or None,
            name=text(form, "name"), tags=service.split_tags(text(form, "tags")),
            custom=parse_custom(text(form, "custom"), {}), source="ui",
            now=services.clock(), ip=client_ip(request))
    except WhatsdexError as exc:
        return _form_error(request, None, form, exc)
    return go(request, f"/contacts/{contact.id}")


def _form_error(request: AnyRequest, contact: Contact | None, form: FormMultiDict,
                exc: WhatsdexError) -> Template:
    """The form again with what the user typed and the reason next to it."""
    template = page(request, "contacts/contact.html", **_form_context(contact, form, exc.message))
    template.status_code = exc.status_code
    if request.headers.get("hx-request") == "true":
        template.headers = {"HX-Retarget": "body", "HX-Reswap": "outerHTML"}
    return template


@get("/contacts/{contact_id:str}")
async def contact_page(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                       ) -> Template:
    contact = await service.get(services.store, tenant_id_of(request), contact_id)
    return page(request, "contacts/contact.html", **_form_context(contact))


@post("/contacts/{contact_id:str}")
async def update_contact(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                         ) -> Response[Any]:
    tenant_id = tenant_id_of(request)
    contact = await service.get(services.store, tenant_id, contact_id)
    form = await request.form()
    try:
        await service.update(
            services.store, principal_of(request), tenant_id, contact_id,
            phone=text(form, "phone"), default_country=text(form, "default_country") or None,
            name=text(form, "name"), tags=service.split_tags(text(form, "tags")),
            custom=parse_custom(text(form, "custom"), contact.custom), now=services.clock(),
            ip=client_ip(request))
    except WhatsdexError as exc:
        return _form_error(request, contact, form, exc)
    return go(request, f"/contacts/{contact_id}")


@delete("/contacts/{contact_id:str}", status_code=200)
async def delete_contact(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                         ) -> Response[Any]:
    await service.delete(services.store, principal_of(request), tenant_id_of(request),
                         contact_id, now=services.clock(), ip=client_ip(request))
    return go(request, "/contacts")


@post("/contacts/{contact_id:str}/opt-out", status_code=200)
async def opt_out(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                  ) -> Template:
    contact = await service.set_opt(services.store, principal_of(request), tenant_id_of(request),
                                    contact_id, "opted_out", source="ui", now=services.clock(),
                                    ip=client_ip(request))
    return _opt_card(contact, "Opted out: campaigns will not message this contact")


@post("/contacts/{contact_id:str}/opt-in", status_code=200)
async def opt_in(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                 ) -> Template:
    contact = await service.set_opt(services.store, principal_of(request), tenant_id_of(request),
                                    contact_id, "opted_in", source="ui", now=services.clock(),
                                    ip=client_ip(request))
    return _opt_card(contact, "Opted in")


# -- Import ------------------------------------------------------------------------------------

@get("/contacts/import")
async def import_page(request: AnyRequest, services: ServicesDep) -> Template:
    jobs = await importer.list_jobs(services.store, tenant_id_of(request),
                                    now=services.clock(), limit=10)
    return page(request, "contacts/import.html", jobs=jobs,
                max_mb=importer.MAX_FILE_BYTES // 1_048_576)


def _upload(form: FormMultiDict) -> UploadFile:
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise BadRequest("Choose a CSV file to import", {"field": "file"})
    return upload


def _options(form: FormMultiDict) -> ImportOptions:
    """The import options; `column_<i>` / `field_<i>` pairs are the preview's per-column choice."""
    mapping: dict[str, str] = {}
    for key in form:
        if key.startswith("column_"):
            index = key[len("column_"):]
            field = text(form, f"field_{index}")
            if field == "custom":
                field = "custom." + text(form, f"custom_{index}").strip()
            mapping[text(form, key)] = field
    return clean_options(
        mapping=mapping, default_country=text(form, "default_country") or None,
        tags=service.split_tags(text(form, "tags")), opt_status=text(form, "opt_status") or None)


@post("/contacts/import/preview", status_code=200,
      request_max_body_size=ops.MAX_BODY)
async def import_preview(request: AnyRequest, services: ServicesDep) -> Template:
    form = await request.form()
    options = _options(form)
    table = await ops.receive_table(_upload(form))
    try:
        preview = await importer.preview(services.store, tenant_id_of(request), table, options)
    finally:
        table.close()
    return partial("contacts/_preview.html", p=preview, choices=FIELD_CHOICES)


@post("/contacts/import", request_max_body_size=ops.MAX_BODY)
async def import_start(request: AnyRequest, services: ServicesDep) -> Response[Any]:
    form = await request.form()
    options = _options(form)
    table = await ops.receive_table(_upload(form))
    job = await ops.start_import(services, principal_of(request), tenant_id_of(request), table,
                                 options, client_ip(request))
    return go(request, f"/contacts/imports/{job.id}")


async def _job_context(request: AnyRequest, services: Services, job_id: str) -> dict[str, Any]:
    job = await importer.get_job(services.store, tenant_id_of(request), job_id,
                                 now=services.clock())
    percent = 100 if job.total == 0 else min(100, job.processed * 100 // job.total)
    return {"job": job, "percent": percent, "finished": job.status in ("done", "failed"),
            "errors": job.errors[:ERRORS_SHOWN]}


@get("/contacts/imports/{job_id:str}")
async def import_job_page(request: AnyRequest, services: ServicesDep, job_id: FromPath[str]
                          ) -> Template:
    return page(request, "contacts/import_job.html",
                **await _job_context(request, services, job_id))


@get("/contacts/imports/{job_id:str}/progress")
async def import_job_progress(request: AnyRequest, services: ServicesDep,
                              job_id: FromPath[str]) -> Template:
    return partial("contacts/_progress.html", **await _job_context(request, services, job_id))


@get("/contacts/imports/{job_id:str}/errors.csv")
async def import_job_errors(request: AnyRequest, services: ServicesDep, job_id: FromPath[str]
                            ) -> Response[bytes]:
    job = await importer.get_job(services.store, tenant_id_of(request), job_id,
                                 now=services.clock())
    return ops.errors_csv(job)


ROUTES: list[Any] = [
    Router(path="/", guards=[requires_member], include_in_schema=False, route_handlers=[
        contacts_page, export_csv, new_contact, create_contact, import_page, import_preview,
        import_start, import_job_page, import_job_progress, import_job_errors, contact_page,
        update_contact, delete_contact, opt_out, opt_in,
    ]),
]
