"""Messages in the JSON API: send (202 once committed), upload and download media, read the
history with filters, full-text search and cursors, list chats and mark them read.

The messaging core (`whatsdex/messaging`) does the work; these handlers check who asks and shape
the answers. The inbox pages call the same operations (`ui/inbox.py`).
"""

from __future__ import annotations

import mimetypes
import re
from typing import Annotated, Any
from urllib.parse import quote

from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Body, FromPath, HeaderParameter, JSONBody, QueryParameter
from msgspec import Meta, Struct

from whatsdex.errors import BadRequest, NotFound, Unavailable
from whatsdex.messaging import MEDIA_KINDS, history
from whatsdex.messaging.history import ChatRead
from whatsdex.messaging.media import MediaLibrary
from whatsdex.messaging.outbox import Accepted, Outbox, SendRequest
from whatsdex.services import Services
from whatsdex.store import media as media_rows
from whatsdex.store.media import Media
from whatsdex.web.api.message_schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    ChatOut,
    ChatPage,
    ChatReadOut,
    MediaOut,
    MessageAccepted,
    MessageCreate,
    MessageOut,
    MessagePage,
)
from whatsdex.web.api.session_schemas import ErrorOut
from whatsdex.web.api.sessions import supervisor_of
from whatsdex.web.auth import requires_member, tenant_id_of

AnyRequest = Request[Any, Any, Any]
ServicesDep = NamedDependency[Services]  # injected by name (app-level `services`)

# 64 MB of media as base64 is 85.4 MB; the JSON (or multipart envelope) around it needs a little.
MAX_BODY = 90 * 1024 * 1024
# Checked by the core (length, printable), which names the header in its 400.
IdempotencyKey = Annotated[str | None, HeaderParameter(
    name="Idempotency-Key", required=False,
    description="Your id for this request (at most 255 characters): a retry with the same "
                "key and body queues nothing and answers the first answer again")]

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description=f"1-{MAX_PAGE}")]
Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page",
                                              max_length=512)]
SessionQ = Annotated[str | None, QueryParameter(description="Only this number's",
                                                max_length=64)]


def error_responses(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers a handler may give, for the API docs."""
    described = {
        400: "Invalid input; `detail.field` names the field",
        404: "No such number, message, chat or file in this workspace",
        409: "Idempotency-Key reused with another body, or the number cannot send now",
        413: "Media larger than 64 MB (or a request body over 90 MB)",
        429: "The plan's daily message limit (see `Retry-After`)",
    }
    return {code: ResponseSpec(data_container=ErrorOut, description=described[code],
                               generate_examples=False) for code in codes}


# -- The messaging core ------------------------------------------------------------------------

def outbox_of(services: Services) -> Outbox:
    if services.outbox is None:
        raise Unavailable("WhatsDeX is starting: try again in a moment")
    return services.outbox


def media_of(services: Services) -> MediaLibrary:
    if services.media is None:
        raise Unavailable("WhatsDeX is starting: try again in a moment")
    return services.media


# -- Operations shared with the inbox ----------------------------------------------------------

def send_request(session_id: str, body: MessageCreate) -> SendRequest:
    """The API's body as the core's request: `caption` is the text of a media message."""
    text = body.text
    if body.caption:
        if body.type not in MEDIA_KINDS:
            raise BadRequest("`caption` applies to media messages only; use `text`",
                             {"field": "caption"})
        if text:
            raise BadRequest("Give the caption as `caption` or `text`, not both",
                             {"field": "caption"})
        text = body.caption
    return SendRequest(
        session_id=session_id, to=body.to, type=body.type, text=text, media_id=body.media_id,
        url=body.url, base64=body.base64, mimetype=body.mimetype, filename=body.filename,
        voice_note=body.voice_note, latitude=body.latitude, longitude=body.longitude,
        name=body.name, message_id=body.message_id, emoji=body.emoji, quoted_id=body.quoted_id)


async def send(services: Services, tenant_id: str, request: SendRequest, *, source: str,
               idempotency_key: str | None = None) -> Accepted:
    """Queue one message; returns once it is committed."""
    return await outbox_of(services).accept(tenant_id, request, source=source,
                                            idempotency_key=idempotency_key)


async def receive_upload(upload: UploadFile) -> bytes:
    try:
        return await upload.read()
    finally:
        await upload.close()


async def store_upload(services: Services, tenant_id: str, upload: UploadFile) -> Media:
    data = await receive_upload(upload)
    return await media_of(services).store_upload(
        tenant_id, data, filename=upload.filename or "", declared_type=upload.content_type or "")


async def message_media(services: Services, tenant_id: str, message_id: str
                        ) -> tuple[Media, bytes]:
    """A message's media bytes, fetched from WhatsApp on demand for received media."""
    library = media_of(services)
    try:
        return await library.download(tenant_id, message_id)
    except Unavailable as exc:
        if library.fetch_inbound is not None:
            raise  # a passing outage (the engine host restarting): worth a retry
        # This engine cannot fetch received media at all: no retry will help.
        raise NotFound(exc.message, {"reason": "not_supported"}) from None


async def mark_chat_read(services: Services, tenant_id: str, chat_id: str) -> ChatRead:
    """Unread back to 0, and read receipts to the senders when the number is connected."""
    return await history.mark_read(services.store, supervisor_of(services), services.bus,
                                   services.clock, tenant_id, chat_id)


def content_disposition(disposition: str, filename: str) -> str:
    """RFC 6266 with an ASCII fallback, so any file name survives any browser."""
    fallback = re.sub(r'[^A-Za-z0-9._ -]', "_", filename).strip() or "file"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def file_response(row: Media, data: bytes, *, name: str, mimetype: str | None = None,
                  disposition: str = "attachment") -> Response[bytes]:
    """Stored bytes as a file, for this site only; unnamed files are named after their id."""
    base_type = row.mimetype.split(";", 1)[0].strip()
    filename = row.filename or name + (mimetypes.guess_extension(base_type) or "")
    return Response(data, media_type=mimetype or row.mimetype, headers={
        "Content-Disposition": content_disposition(disposition, filename),
        "Cross-Origin-Resource-Policy": "same-origin",
        "Cache-Control": "private, max-age=3600",
    })


# -- Validation errors that name the field -----------------------------------------------------

_QUOTED = re.compile(r"`([^`]+)`")


def invalid_request(request: AnyRequest, exc: ValidationException) -> Response[Any]:
    """Litestar's 400 for a malformed body or query, reworded to name the field first."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    field, said = "", str(exc.detail)
    for error in errors:
        if isinstance(error, dict):
            said = str(error.get("message", said))
            key = str(error.get("key") or "")
            quoted = _QUOTED.search(said)
            # A missing or unknown field is reported on the whole body ("data"): name it.
            field = quoted.group(1) if key in ("", "data") and quoted else key
            break
    message = f"`{field}`: {said}" if field and f"`{field}`" not in said else said
    return Response({"status": 400, "message": message,
                     "detail": {"field": field, "errors": errors} if field else errors},
                    status_code=400, media_type=MediaType.JSON)


# -- Sending -----------------------------------------------------------------------------------

@post("/sessions/{session_id:str}/messages", status_code=202, request_max_body_size=MAX_BODY,
      summary="Send a message",
      description=(
          "Queues the message and answers 202 once it is committed: it is then delivered by "
          "the number's paced queue, exactly once. Follow it with `GET /messages/{id}` or the "
          "`message.status` webhook (queued → sent → delivered → read, or failed with a "
          "reason). With an `Idempotency-Key` header (at most 255 characters) a retry of the "
          "same request answers the first answer again (202, header `Idempotent-Replayed: "
          "true`) and queues nothing; the same key with another body is a 409. Keys are kept "
          "24 hours. Bodies may be up to 90 MB (64 MB media as base64)."),
      responses=error_responses(400, 404, 409, 413, 429), tags=["Messages"])
async def send_message(request: AnyRequest, services: ServicesDep, session_id: FromPath[str],
                       data: JSONBody[MessageCreate], idempotency_key: IdempotencyKey = None
                       ) -> Response[MessageAccepted]:
    accepted = await send(services, tenant_id_of(request), send_request(session_id, data),
                          source="api", idempotency_key=idempotency_key)
    # The first answer, whatever happened to the message since: a retry must see the same.
    headers = {"Idempotent-Replayed": "true"} if accepted.replayed else {}
    return Response(MessageAccepted(id=accepted.message.id, status="queued"), status_code=202,
                    headers=headers)


# -- Media -------------------------------------------------------------------------------------

class MediaUpload(Struct, kw_only=True):
    file: Annotated[UploadFile, Meta(description="The file (at most 64 MB); its type is read "
                                                 "from its bytes")]


@post("/media", status_code=201, request_max_body_size=MAX_BODY, summary="Upload media",
      description="Multipart upload of one `file` to send later by `media_id` (any message "
                  "type its bytes allow: image, video, audio, document). Size and type are "
                  "checked here; the type comes from the bytes, not the file name.",
      responses=error_responses(400, 413), tags=["Media"])
async def upload_media(
    request: AnyRequest, services: ServicesDep,
    data: Annotated[MediaUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
) -> MediaOut:
    return MediaOut.of(await store_upload(services, tenant_id_of(request), data.file))


@get("/media/{media_id:str}", summary="Download media", media_type="application/octet-stream",
     description="The bytes of an uploaded (or downloaded) file, with its type and name.",
     responses={200: ResponseSpec(data_container=bytes, media_type="application/octet-stream",
                                  description="The file", generate_examples=False),
                **error_responses(404)}, tags=["Media"])
async def download_media(request: AnyRequest, services: ServicesDep, media_id: FromPath[str]
                         ) -> Response[bytes]:
    tenant_id = tenant_id_of(request)
    row = await media_rows.get(services.store, tenant_id, media_id)
    data = None if row is None else await media_rows.data(services.store, tenant_id, media_id)
    if row is None or data is None:
        raise NotFound("Media not found")
    return file_response(row, data, name=media_id)


@get("/messages/{message_id:str}/media", summary="A message's media",
     media_type="application/octet-stream",
     description="The file of a media message. Received media is downloaded from WhatsApp on "
                 "the first request (when the engine can) and kept in a size-capped cache.",
     responses={200: ResponseSpec(data_container=bytes, media_type="application/octet-stream",
                                  description="The file", generate_examples=False),
                **error_responses(404)}, tags=["Messages"])
async def message_media_file(request: AnyRequest, services: ServicesDep,
                             message_id: FromPath[str]) -> Response[bytes]:
    row, data = await message_media(services, tenant_id_of(request), message_id)
    return file_response(row, data, name=message_id)


# -- History -----------------------------------------------------------------------------------

@get("/messages/{message_id:str}", summary="A message and its status",
     description="With the time it reached each status (`timestamps`) and, when it failed or "
                 "waits, the reason.", responses=error_responses(404), tags=["Messages"])
async def read_message(request: AnyRequest, services: ServicesDep, message_id: FromPath[str]
                       ) -> MessageOut:
    return MessageOut.of(await history.get_message(services.store, tenant_id_of(request),
                                                   message_id))


@get("/messages", summary="Message history",
     description="Both directions, newest first, with filters. `q` searches the text (every "
                 "word must appear; the last one may be the start of a word). Pass "
                 "`next_cursor` back as `cursor` for older messages.",
     responses=error_responses(400), tags=["Messages"])
async def list_messages(
    request: AnyRequest, services: ServicesDep, session_id: SessionQ = None,
    chat_id: Annotated[str | None, QueryParameter(max_length=64)] = None,
    direction: Annotated[str | None, QueryParameter(description="in or out")] = None,
    status: Annotated[str | None, QueryParameter(description=", ".join(history.STATUSES))
                      ] = None,
    since: Annotated[str | None, QueryParameter(description="ISO 8601, inclusive")] = None,
    until: Annotated[str | None, QueryParameter(description="ISO 8601, exclusive")] = None,
    q: Annotated[str | None, QueryParameter(description="Full-text search", max_length=200)
                 ] = None,
    cursor: Cursor = None, limit: Limit = DEFAULT_PAGE,
) -> MessagePage:
    found = await history.list_messages(
        services.store, tenant_id_of(request), session_id=session_id, chat_id=chat_id,
        direction=direction, status=status, since=since, until=until, query=q, cursor=cursor,
        limit=limit)
    return MessagePage(items=[MessageOut.of(m) for m in found.items],
                       next_cursor=found.next_cursor)


# -- Chats -------------------------------------------------------------------------------------

@get("/chats", summary="Chats",
     description="Conversations, most recently active first, each with its unread count. `q` "
                 "matches the name, phone number or JID.", responses=error_responses(400),
     tags=["Chats"])
async def list_chats(
    request: AnyRequest, services: ServicesDep, session_id: SessionQ = None,
    q: Annotated[str | None, QueryParameter(max_length=200)] = None,
    cursor: Cursor = None, limit: Limit = DEFAULT_PAGE,
) -> ChatPage:
    found = await history.list_chats(services.store, tenant_id_of(request), session_id,
                                     cursor=cursor, limit=limit, query=q)
    return ChatPage(items=[ChatOut.of(c) for c in found.items], next_cursor=found.next_cursor)


@get("/chats/{chat_id:str}", summary="A chat", responses=error_responses(404), tags=["Chats"])
async def read_chat(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str]
                    ) -> ChatOut:
    return ChatOut.of(await history.get_chat(services.store, tenant_id_of(request), chat_id))


@post("/chats/{chat_id:str}/read", status_code=200, summary="Mark a chat read",
      description="Its unread count goes to 0 and, when its number is connected, the senders "
                  "get read receipts (blue ticks).", responses=error_responses(404),
      tags=["Chats"])
async def read_chat_messages(request: AnyRequest, services: ServicesDep, chat_id: FromPath[str]
                             ) -> ChatReadOut:
    read = await mark_chat_read(services, tenant_id_of(request), chat_id)
    return ChatReadOut(id=read.chat_id, unread=0, marked=read.unread_before,
                       receipts_sent=read.receipts_sent)


ROUTES: list[Any] = [
    Router(
        path="/api/v1",
        route_handlers=[send_message, upload_media, download_media, message_media_file,
                        read_message, list_messages, list_chats, read_chat, read_chat_messages],
        guards=[requires_member],
        security=[{"apiKey": []}],
        exception_handlers={ValidationException: invalid_request},
    )
]
