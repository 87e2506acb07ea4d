"""Message templates in the JSON API (`/api/v1/templates`): save, list, change, delete, and
preview a body (saved or not) for one contact.

Bodies are checked when saved: a 400 lists every problem with its position. The template
language is described in `whatsdex/templates/syntax.py` and in the `TemplateCreate` schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from whatsdex.services import Services
from whatsdex.store.templates import MessageTemplate
from whatsdex.templates import service, syntax
from whatsdex.templates.syntax import TemplateInvalid
from whatsdex.web.auth import client_ip, principal_of, requires_member, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)

LANGUAGE = (
    "Variables: `{{name}}`, `{{first_name}}`, `{{phone}}`, `{{custom.<key>}}`; a default after "
    "`|` is used when the value is missing: `{{first_name|there}}`. Spintax: `{Hi|Hello|Hey}` "
    "picks one option (options may nest). A backslash makes `{`, `}`, `|` or `\\` literal. At "
    f"most {syntax.MAX_LENGTH:,} characters."
)
# Room above WhatsApp's limit so an over-long body is answered with its position, not a bare
# schema error.
Body = Annotated[str, Meta(max_length=4 * syntax.MAX_LENGTH, description=LANGUAGE,
                           examples=["Hi {{first_name|there}}, {thanks|thank you} for your "
                                     "order at {{custom.company}}!"])]
Name = Annotated[str, Meta(min_length=1, max_length=100, description="Unique in the workspace "
                                                                     "(ignoring case)")]
Category = Annotated[str, Meta(max_length=service.MAX_CATEGORY,
                               description="A label to group templates, e.g. `marketing`")]
Kind = Literal["image", "video", "audio", "document"]
MediaId = Annotated[str, Meta(min_length=1, max_length=64,
                              description="An uploaded media id of this workspace")]
KindField = Annotated[Kind, Meta(description="How the file is sent; defaults from its type "
                                             "(any file may go as a document)")]
Filename = Annotated[str, Meta(max_length=service.MAX_FILENAME,
                              description="The name recipients see (documents); defaults to "
                                          "the uploaded file's")]
Seed = Annotated[str, Meta(min_length=1, max_length=200,
                           description="Same seed, same choices (campaigns seed with the "
                                       "recipient); random without one")]


# -- Bodies ----------------------------------------------------------------------------------------

class TemplateCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    body: Body
    category: Category = ""
    media_id: MediaId | None = None
    media_kind: KindField | None = None
    filename: Filename | None = None


class TemplateUpdate(Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields sent change; `"media_id": null` removes the attachment."""

    name: Name | UnsetType = UNSET
    body: Body | UnsetType = UNSET
    category: Category | UnsetType = UNSET
    media_id: MediaId | UnsetType | None = UNSET
    media_kind: KindField | UnsetType = UNSET
    filename: Filename | UnsetType = UNSET


class PreviewRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    contact_id: Annotated[str, Meta(min_length=1, max_length=64,
                                    description="A contact of this workspace")] | None = None
    fields: Annotated[dict[str, Any], Meta(
        description="Values to use (on top of the contact's when both are given): `name`, "
                    "`first_name`, `phone`, `custom.<key>` or `custom: {<key>: …}`",
        examples=[{"name": "Ana Lima", "custom": {"company": "Acme"}}])] | None = None
    seed: Seed | None = None


class DraftPreviewRequest(PreviewRequest, kw_only=True, forbid_unknown_fields=True):
    body: Body


class MediaOut(Struct, kw_only=True):
    id: str
    kind: Kind
    filename: str


class TemplateOut(Struct, kw_only=True):
    id: str
    name: str
    category: str
    body: str
    variables: Annotated[list[str], Meta(description="Every variable the body uses")]
    variants: Annotated[int, Meta(description="How many spintax combinations the body has")]
    media: MediaOut | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, row: MessageTemplate) -> TemplateOut:
        parsed = syntax.parse(row.body)
        media = (MediaOut(id=row.media_id, kind=row.media_kind,  # type: ignore[arg-type]
                          filename=row.filename) if row.media_id else None)
        return cls(id=row.id, name=row.name, category=row.category, body=row.body,
                   variables=sorted(syntax.variables(parsed)), variants=syntax.variants(parsed),
                   media=media, created_at=row.created_at, updated_at=row.updated_at)


class PreviewOut(Struct, kw_only=True):
    text: Annotated[str, Meta(description="What this contact would receive")]
    variables: list[str]
    missing: Annotated[list[str], Meta(description="Variables this contact has no value for "
                                                   "and that have no default: gaps in `text`")]
    variants: int
    length: Annotated[int, Meta(description=f"Characters in `text` (WhatsApp allows "
                                            f"{syntax.MAX_LENGTH:,})")]


class ProblemOut(Struct, kw_only=True):
    position: Annotated[int, Meta(description="0-based character offset in the body")]
    line: int
    column: int
    code: Annotated[str, Meta(description="unknown_variable, bad_custom_key, empty_variable, "
                                          "unclosed_variable, unclosed_choice, unmatched_close, "
                                          "empty_option, empty_choice, single_option, too_deep, "
                                          "too_long, empty_body, more_problems")]
    problem: str


class InvalidTemplateOut(Struct, kw_only=True):
    """400 for a body with problems; other 400s carry `{"field": …}` in `detail`."""

    status: int
    message: str
    detail: list[ProblemOut] | dict[str, Any] | None = None


class ErrorOut(Struct, kw_only=True):
    status: int
    message: str
    detail: Any = None


def _responses(*codes: int) -> dict[int, ResponseSpec]:
    described = {
        400: (InvalidTemplateOut, "The body has problems (each with its position), or another "
                                  "field is not valid (named in `detail.field`)"),
        404: (ErrorOut, "No such template (or contact) in this workspace"),
        409: (ErrorOut, "Another template of this workspace has this name"),
    }
    return {code: ResponseSpec(data_container=described[code][0],
                               description=described[code][1], generate_examples=False)
            for code in codes}


def _preview_out(result: service.Preview) -> PreviewOut:
    if result.problems:
        raise TemplateInvalid(result.problems)
    return PreviewOut(text=result.text, variables=result.variables, missing=result.missing,
                      variants=result.variants, length=result.length)


# -- Handlers --------------------------------------------------------------------------------------

@post("/", summary="Save a template", description=LANGUAGE, responses=_responses(400, 409))
async def create_template(request: AnyRequest, services: ServicesDep,
                          data: JSONBody[TemplateCreate]) -> TemplateOut:
    row = await service.create_template(
        services.store, principal_of(request), tenant_id_of(request), name=data.name,
        body=data.body, category=data.category, media_id=data.media_id,
        media_kind=data.media_kind or "", filename=data.filename, now=services.clock(),
        ip=client_ip(request))
    return TemplateOut.of(row)


@get("/", summary="List templates", description="By name; `category` narrows the list.")
async def list_templates(
    request: AnyRequest, services: ServicesDep,
    category: Annotated[str | None, QueryParameter(description="Only this category")] = None,
) -> list[TemplateOut]:
    found = await service.list_templates(services.store, tenant_id_of(request), category)
    return [TemplateOut.of(row) for row in found]


@post("/preview", status_code=200, summary="Preview a body before saving it",
      description="Renders `body` for a contact and/or sample `fields`. A body with problems "
                  "answers 400 like a save would.", responses=_responses(400, 404))
async def preview_draft(request: AnyRequest, services: ServicesDep,
                        data: JSONBody[DraftPreviewRequest]) -> PreviewOut:
    result = await service.preview(services.store, tenant_id_of(request), data.body,
                                   contact_id=data.contact_id, fields=data.fields, seed=data.seed)
    return _preview_out(result)


@get("/{template_id:str}", summary="A template", responses=_responses(404))
async def read_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str]
                        ) -> TemplateOut:
    return TemplateOut.of(await service.get_template(services.store, tenant_id_of(request),
                                                     template_id))


@patch("/{template_id:str}", summary="Change a template",
       description="Only the fields sent change; `\"media_id\": null` removes the attachment.",
       responses=_responses(400, 404, 409))
async def update_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str],
                          data: JSONBody[TemplateUpdate]) -> TemplateOut:
    row = await service.update_template(
        services.store, principal_of(request), tenant_id_of(request), template_id,
        now=services.clock(), ip=client_ip(request), name=data.name, body=data.body,
        category=data.category, media_id=data.media_id, media_kind=data.media_kind,
        filename=data.filename)
    return TemplateOut.of(row)


@delete("/{template_id:str}", summary="Delete a template", responses=_responses(404))
async def delete_template(request: AnyRequest, services: ServicesDep, template_id: FromPath[str]
                          ) -> None:
    await service.delete_template(services.store, principal_of(request), tenant_id_of(request),
                                  template_id, now=services.clock(), ip=client_ip(request))


@post("/{template_id:str}/preview", status_code=200, summary="Preview a template for a contact",
      description="What `contact_id` (or the sample `fields`, which override the contact's) "
                  "would receive. With a `seed`, the same choices a campaign seeded alike "
                  "makes.", responses=_responses(404))
async def preview_template(request: AnyRequest, services: ServicesDep,
                           template_id: FromPath[str], data: JSONBody[PreviewRequest]
                           ) -> PreviewOut:
    tenant_id = tenant_id_of(request)
    row = await service.get_template(services.store, tenant_id, template_id)
    result = await service.preview(services.store, tenant_id, row.body,
                                   contact_id=data.contact_id, fields=data.fields, seed=data.seed)
    return _preview_out(result)


ROUTES: list[Any] = [
    Router(
        path="/api/v1/templates",
        route_handlers=[create_template, list_templates, preview_draft, read_template,
                        update_template, delete_template, preview_template],
        guards=[requires_member],
        security=[{"apiKey": []}],
        tags=["Templates"],
    )
]
