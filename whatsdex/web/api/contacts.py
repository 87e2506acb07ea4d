"""Contacts in the JSON API (`/api/v1/contacts`): CRUD, opt-in/out, CSV import and export.

Phones are answered in E.164 (`+4930123456`). A phone without `+` needs `default_country`
(an ISO code): there is no implicit country. Imports run in the background: the upload answers
202 with the job, whose progress and error report are at `/contacts/imports/{job_id}`.
The dashboard pages call the same operations (`ui/contacts.py`).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import UTC, datetime
from typing import IO, Annotated, Any, BinaryIO, Literal

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from msgspec import UNSET, Meta, Struct, UnsetType

from whatsdex.contacts import export, importer, phones, service
from whatsdex.contacts.importer import Preview
from whatsdex.contacts.mapping import ImportOptions, checker_for, clean_options
from whatsdex.contacts.tables import Table, open_table
from whatsdex.errors import BadRequest, PayloadTooLarge, Unavailable
from whatsdex.identity.principal import Principal
from whatsdex.services import Services
from whatsdex.store import contact_lists
from whatsdex.store.contact_lists import Contact, Filter, ImportJob
from whatsdex.web.api.session_schemas import ErrorOut
from whatsdex.web.auth import client_ip, principal_of, requires_member, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)
MAX_PAGE = 200
_COPY_BLOCK = 1 << 20
# The multipart envelope around the file (boundaries, the other fields) needs a little room.
MAX_BODY = importer.MAX_FILE_BYTES + (1 << 20)

OptStatus = Literal["unknown", "opted_in", "opted_out"]
PhoneIn = Annotated[str, Meta(min_length=1, max_length=40, examples=["+49 30 1234567"],
                              description="International (`+…` or `00…`), or national with "
                                          "`default_country`")]
Country = Annotated[str, Meta(min_length=2, max_length=2, examples=["DE"],
                              description="ISO 3166 country code for national numbers")]
Name = Annotated[str, Meta(max_length=service.NAME_MAX)]
Tags = Annotated[list[Annotated[str, Meta(max_length=200)]],
                 Meta(max_length=200, examples=[["vip", "berlin"]],
                      description=f"Trimmed and lowercased; at most {service.TAGS_MAX} tags of "
                                  f"{service.TAG_MAX} characters, without ',' or ';'")]
Custom = Annotated[dict[str, Any], Meta(
    examples=[{"company": "Acme", "orders": 3, "vip": True}],
    description=f"Keys `^[a-z][a-z0-9_]{{0,39}}$`; values strings (≤ {service.CUSTOM_VALUE_MAX} "
                f"characters), numbers or booleans; at most {service.CUSTOM_KEYS_MAX} keys")]


# -- Bodies --------------------------------------------------------------------------------------

class ContactCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    phone: PhoneIn
    default_country: Country | None = None
    name: Name = ""
    tags: Tags = []
    custom: Custom = {}
    opt_status: Annotated[OptStatus, Meta(description="Consent given elsewhere, recorded "
                                                      "with source `api`")] = "unknown"


class ContactUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields sent change; `tags` and `custom` replace the whole list / object.

    Consent changes only through `/opt-out` and `/opt-in`."""

    phone: PhoneIn | UnsetType = UNSET
    default_country: Country | None = None
    name: Name | UnsetType = UNSET
    tags: Tags | UnsetType = UNSET
    custom: Custom | UnsetType = UNSET


class ContactOut(Struct, kw_only=True):
    id: str
    phone: Annotated[str, Meta(description="E.164 with '+'; '' when WhatsApp only gave a LID")]
    name: str
    push_name: Annotated[str, Meta(description="The name the person set in WhatsApp")]
    jid: str
    lid: str
    tags: list[str]
    custom: dict[str, Any]
    opt_status: OptStatus
    opt_changed_at: str | None
    opt_source: Annotated[str, Meta(description="api, import, keyword, inbox or ui")]
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, c: Contact) -> ContactOut:
        return cls(id=c.id, phone=phones.e164(c.phone), name=c.name, push_name=c.push_name,
                   jid=c.jid, lid=c.lid, tags=c.tags, custom=c.custom,
                   opt_status=c.opt_status,  # type: ignore[arg-type]
                   opt_changed_at=c.opt_changed_at, opt_source=c.opt_source,
                   created_at=c.created_at, updated_at=c.updated_at)


class ContactPage(Struct, kw_only=True):
    items: list[ContactOut]
    next_cursor: Annotated[str | None, Meta(description="Pass as `cursor` for the next page")]


class TagCount(Struct, kw_only=True):
    tag: str
    contacts: int


class ImportForm(Struct, kw_only=True):
    file: UploadFile
    mapping: Annotated[str, Meta(description='JSON object `{"column": "field"}`; fields: '
                                             "phone, name, tags, opt_status, custom.<key>, "
                                             "ignore. Unnamed columns are guessed from their "
                                             "header.")] = ""
    default_country: Annotated[str, Meta(description="ISO code for national numbers")] = ""
    dry_run: Annotated[bool, Meta(description="Check and preview only: nothing is written")] = (
        False)
    tags: Annotated[str, Meta(description="Tags added to every imported contact, separated "
                                          "by ',' or ';'")] = ""
    opt_status: Annotated[str, Meta(description="opted_in or opted_out for rows that do not "
                                                "say (source `import`); an import never opts "
                                                "an opted-out contact back in")] = ""


class ImportStarted(Struct, kw_only=True):
    job_id: str
    status: str
    total: int
    url: Annotated[str, Meta(description="Poll this for progress and the error report")]


class ImportOut(Struct, kw_only=True):
    id: str
    status: Annotated[str, Meta(description="queued, running, done or failed")]
    status_reason: str
    filename: str
    total: Annotated[int, Meta(description="Data rows in the file")]
    processed: int
    imported: Annotated[int, Meta(description="New contacts")]
    updated: Annotated[int, Meta(description="Existing contacts changed")]
    unchanged: int
    skipped: Annotated[int, Meta(description="Rows not written; each has a reason in `errors`")]
    kept_opted_out: Annotated[int, Meta(description="Rows that asked to opt in a contact who "
                                                    "had opted out: left opted out")]
    errors: Annotated[list[dict[str, Any]], Meta(description=f"`{{line, reason, value}}`, the "
                                                             f"first {importer.ERRORS_KEPT:,}")]
    errors_truncated: bool
    created_by: str
    created_at: str
    updated_at: str
    finished_at: str | None

    @classmethod
    def of(cls, job: ImportJob) -> ImportOut:
        return cls(id=job.id, status=job.status, status_reason=job.status_reason,
                   filename=job.filename, total=job.total, processed=job.processed,
                   imported=job.imported, updated=job.updated, unchanged=job.unchanged,
                   skipped=job.skipped, kept_opted_out=job.kept_opted_out, errors=job.errors,
                   errors_truncated=job.skipped > len(job.errors), created_by=job.created_by,
                   created_at=job.created_at, updated_at=job.updated_at,
                   finished_at=job.finished_at)


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    described = {
        400: "A field is not valid (named in `detail.field`), e.g. the phone number",
        403: "The plan's contact limit (named in `message`), or the key's role",
        404: "No such contact (or import) in this workspace",
        409: "Another contact has this phone (`detail.contact_id`), or an import is running",
        413: f"The file is larger than {importer.MAX_FILE_BYTES // 1_048_576} MB",
    }
    return {code: ResponseSpec(data_container=ErrorOut, description=described[code],
                               generate_examples=False) for code in codes}


# -- Operations shared with the dashboard ----------------------------------------------------------

def _spool(source: IO[bytes]) -> BinaryIO:
    """Copy an upload to a private temporary file (Litestar closes its own after the request)."""
    target = tempfile.TemporaryFile()  # noqa: SIM115 - handed over to the import job
    size = 0
    try:
        source.seek(0)
        while block := source.read(_COPY_BLOCK):
            size += len(block)
            if size > importer.MAX_FILE_BYTES:
                raise PayloadTooLarge(
                    f"The file is larger than {importer.MAX_FILE_BYTES // 1_048_576} MB: split "
                    "it into smaller files", {"field": "file"})
            target.write(block)
    except BaseException:
        target.close()
        raise
    return target


async def receive_table(upload: UploadFile) -> Table:
    """The upload as a checked table on disk (encoding, delimiter, header, row count)."""
    spooled = await asyncio.to_thread(_spool, upload.file)
    try:
        return await asyncio.to_thread(open_table, spooled, upload.filename or "")
    except BaseException:
        spooled.close()
        raise


def parse_mapping(text: str) -> dict[str, str]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise BadRequest('mapping must be a JSON object such as {"Mobile": "phone"}',
                         {"field": "mapping"}) from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest('mapping must be a JSON object such as {"Mobile": "phone"}',
                         {"field": "mapping"})
    return value


async def start_import(services: Services, actor: Principal, tenant_id: str, table: Table,
                       options: ImportOptions, ip: str) -> ImportJob:
    """Record the job and run it in the background; the table is the job's from here on."""
    try:
        checker_for(table, options)  # a bad mapping is a 400 now, not a failed job
        job = await importer.create_job(services.store, actor, tenant_id, table, options,
                                        now=services.clock(), ip=ip)
    except BaseException:
        table.close()
        raise
    try:
        services.tasks.start(
            importer.run_job(services.store, job, table, options, clock=services.clock),
            name=f"contact import {job.id}")
    except RuntimeError:  # shutting down
        table.close()
        await importer.fail_job(services.store, job, "the server was stopping", services.clock)
        raise Unavailable("WhatsDeX is stopping: import the file again in a moment") from None
    return job


def export_stream(services: Services, tenant_id: str, f: Filter) -> Stream:
    """The CSV download (a read: like every GET it writes no audit row)."""
    day = datetime.fromtimestamp(services.clock(), UTC).strftime("%Y%m%d")
    return Stream(export.csv_chunks(services.store, tenant_id, f),
                  media_type="text/csv",
                  headers={"Content-Disposition": f'attachment; filename="contacts-{day}.csv"',
                           "Cache-Control": "no-store"})


def errors_csv(job: ImportJob) -> Response[bytes]:
    lines = [export.csv_line(["line", "value", "reason"])]
    lines += [export.csv_line([str(e.get("line", "")), export.safe_cell(e.get("value", "")),
                               export.safe_cell(e.get("reason", ""))]) for e in job.errors]
    return Response(("\ufeff" + "".join(lines)).encode(), media_type="text/csv",
                    headers={"Content-Disposition":
                             f'attachment; filename="import-{job.id}-errors.csv"'})


# -- Query parameters ------------------------------------------------------------------------------

TagQ = Annotated[str | None, QueryParameter(description="Only contacts with this tag",
                                            max_length=200)]
OptQ = Annotated[OptStatus | None, QueryParameter(description="Only this consent status")]
SearchQ = Annotated[str | None, QueryParameter(description="In the name, WhatsApp name or "
                                                           "phone digits", max_length=200)]
CursorQ = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page",
                                               max_length=200)]
LimitQ = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description=f"1-{MAX_PAGE}")]


# -- Handlers --------------------------------------------------------------------------------------

@get("/", summary="List contacts",
     description="Newest first. Filters combine: `tag`, `opt_status`, `search`.")
async def list_contacts(request: AnyRequest, services: ServicesDep, tag: TagQ = None,
                        opt_status: OptQ = None, search: SearchQ = None, cursor: CursorQ = None,
                        limit: LimitQ = 50) -> ContactPage:
    f = service.make_filter(tag, opt_status, search)
    items, next_cursor = await service.list_page(services.store, tenant_id_of(request), f,
                                                 cursor=cursor, limit=limit)
    return ContactPage(items=[ContactOut.of(c) for c in items], next_cursor=next_cursor)


@post("/", summary="Create a contact", responses=_responses(400, 403, 409),
      description="409 names the existing contact with this phone; 403 when the plan's "
                  "`max_contacts` is reached.")
async def create_contact(request: AnyRequest, services: ServicesDep,
                         data: JSONBody[ContactCreate]) -> ContactOut:
    contact = await service.create(
        services.store, principal_of(request), tenant_id_of(request), phone=data.phone,
        default_country=data.default_country, name=data.name, tags=data.tags,
        custom=data.custom, opt_status=data.opt_status, source="api", now=services.clock(),
        ip=client_ip(request))
    return ContactOut.of(contact)


@get("/tags", summary="Tags in use", description="Each tag with how many contacts have it.")
async def list_tags(request: AnyRequest, services: ServicesDep) -> list[TagCount]:
    counts = await contact_lists.tag_counts(services.store, tenant_id_of(request))
    return [TagCount(tag=tag, contacts=n) for tag, n in counts]


@get("/export", summary="Export contacts as CSV",
     description="Every field, one `custom.<key>` column per custom field; the same filters "
                 "as the list. The file imports back as it is.",
     responses={200: ResponseSpec(data_container=str, media_type="text/csv",
                                  description="CSV (UTF-8 with BOM)", generate_examples=False)})
async def export_contacts(request: AnyRequest, services: ServicesDep, tag: TagQ = None,
                          opt_status: OptQ = None, search: SearchQ = None) -> Stream:
    return export_stream(services, tenant_id_of(request),
                         service.make_filter(tag, opt_status, search))


@post("/import", status_code=202, request_max_body_size=MAX_BODY,
      summary="Import contacts from a CSV file",
      description="Multipart upload (`file` plus options). With `dry_run` the whole file is "
                  "checked and previewed (200, nothing written). Otherwise 202 with the job: it "
                  "runs in the background; poll `url`. Phones already in the workspace update "
                  "their contact (name, tags, custom fields) and are never duplicated.",
      responses={200: ResponseSpec(data_container=Preview, description="The dry run's preview",
                                   generate_examples=False), **_responses(400, 409, 413)})
async def import_contacts(
    request: AnyRequest, services: ServicesDep,
    data: Annotated[ImportForm, Body(media_type=RequestEncodingType.MULTI_PART)],
) -> Response[Any]:
    tenant_id = tenant_id_of(request)
    options = clean_options(
        mapping=parse_mapping(data.mapping), default_country=data.default_country or None,
        tags=service.split_tags(data.tags), opt_status=data.opt_status or None)
    table = await receive_table(data.file)
    if data.dry_run:
        try:
            preview = await importer.preview(services.store, tenant_id, table, options)
        finally:
            table.close()
        return Response(preview, status_code=200)
    job = await start_import(services, principal_of(request), tenant_id, table, options,
                             client_ip(request))
    return Response(ImportStarted(job_id=job.id, status=job.status, total=job.total,
                                  url=f"/api/v1/contacts/imports/{job.id}"), status_code=202)


@get("/imports", summary="Recent imports", description="The last 20, newest first.")
async def list_imports(request: AnyRequest, services: ServicesDep) -> list[ImportOut]:
    jobs = await importer.list_jobs(services.store, tenant_id_of(request),
                                    now=services.clock())
    return [ImportOut.of(job) for job in jobs]


@get("/imports/{job_id:str}", summary="An import's progress and error report",
     responses=_responses(404))
async def get_import(request: AnyRequest, services: ServicesDep, job_id: FromPath[str]
                     ) -> ImportOut:
    job = await importer.get_job(services.store, tenant_id_of(request), job_id,
                                 now=services.clock())
    return ImportOut.of(job)


@get("/imports/{job_id:str}/errors.csv", summary="An import's error report as CSV",
     responses=_responses(404))
async def get_import_errors(request: AnyRequest, services: ServicesDep, job_id: FromPath[str]
                            ) -> Response[bytes]:
    job = await importer.get_job(services.store, tenant_id_of(request), job_id,
                                 now=services.clock())
    return errors_csv(job)


@get("/{contact_id:str}", summary="Get a contact", responses=_responses(404))
async def get_contact(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                      ) -> ContactOut:
    return ContactOut.of(await service.get(services.store, tenant_id_of(request), contact_id))


@patch("/{contact_id:str}", summary="Change a contact", responses=_responses(400, 404, 409),
       description="Only the fields sent change; `tags` and `custom` replace the whole value.")
async def update_contact(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str],
                         data: JSONBody[ContactUpdate]) -> ContactOut:
    def given(value: Any) -> Any:
        return None if value is UNSET else value

    contact = await service.update(
        services.store, principal_of(request), tenant_id_of(request), contact_id,
        phone=given(data.phone), default_country=data.default_country, name=given(data.name),
        tags=given(data.tags), custom=given(data.custom), now=services.clock(),
        ip=client_ip(request))
    return ContactOut.of(contact)


@delete("/{contact_id:str}", summary="Delete a contact", responses=_responses(404))
async def delete_contact(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                         ) -> None:
    await service.delete(services.store, principal_of(request), tenant_id_of(request),
                         contact_id, now=services.clock(), ip=client_ip(request))


@post("/{contact_id:str}/opt-out", status_code=200, summary="Opt a contact out",
      description="Campaigns never message an opted-out contact. Recorded with the time and "
                  "source `api`; the person can opt back in by sending START.",
      responses=_responses(404))
async def opt_out(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                  ) -> ContactOut:
    return ContactOut.of(await service.set_opt(
        services.store, principal_of(request), tenant_id_of(request), contact_id, "opted_out",
        source="api", now=services.clock(), ip=client_ip(request)))


@post("/{contact_id:str}/opt-in", status_code=200, summary="Opt a contact in",
      description="Record consent obtained elsewhere (source `api`), with the time.",
      responses=_responses(404))
async def opt_in(request: AnyRequest, services: ServicesDep, contact_id: FromPath[str]
                 ) -> ContactOut:
    return ContactOut.of(await service.set_opt(
        services.store, principal_of(request), tenant_id_of(request), contact_id, "opted_in",
        source="api", now=services.clock(), ip=client_ip(request)))


ROUTES: list[Any] = [
    Router(
        path="/api/v1/contacts",
        route_handlers=[list_contacts, create_contact, list_tags, export_contacts,
                        import_contacts, list_imports, get_import, get_import_errors,
                        get_contact, update_contact, delete_contact, opt_out, opt_in],
        guards=[requires_member],
        security=[{"apiKey": []}],
        tags=["Contacts"],
    )
]
