"""Media to send (uploads, base64, URLs fetched once) and inbound media fetched on demand.

Types are sniffed from the bytes (libmagic through python-magic), never taken on trust from a
file name or a header, and checked against an allow-list per message type. URLs are fetched once,
at accept time, through the SSRF guard of `whatsdex.webhooks.ssrf` (redirects included).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import magic

from whatsdex.clock import Clock, iso
from whatsdex.errors import BadRequest, NotFound, PayloadTooLarge, Unavailable
from whatsdex.settings import Settings
from whatsdex.store import Store
from whatsdex.store import media as media_rows
from whatsdex.store import messages as message_rows
from whatsdex.store.ids import new_id
from whatsdex.store.media import Media
from whatsdex.webhooks import ssrf

log = logging.getLogger(__name__)

# Below the engine protocol's 64 MiB frame, which also carries the rest of the message.
MAX_BYTES = 64_000_000
MAX_REDIRECTS = 5
FETCH_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
FETCH_DEADLINE = 120.0  # seconds for a whole fetch, redirects and body included
SNIFF_BYTES = 65536
GENERIC_TYPES = frozenset({"application/octet-stream", "text/plain", "application/zip"})
DEFAULT_CACHE_MB = 1024

# What WhatsApp shows for each message type; a document may be most things, but no programs.
ALLOWED: dict[str, tuple[str, ...]] = {
    "image": ("image/jpeg", "image/png", "image/webp"),
    "video": ("video/mp4", "video/3gpp"),
    "audio": ("audio/ogg", "audio/opus", "audio/mpeg", "audio/mp4", "audio/x-m4a", "audio/aac",
              "audio/x-hx-aac-adts", "audio/amr", "video/mp4"),
    "document": (
        "application/pdf", "application/msword", "application/vnd.ms-",
        "application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.",
        "application/rtf", "text/", "application/json", "application/xml", "application/zip",
        "application/x-zip", "application/gzip", "application/x-7z-compressed",
        "application/vnd.rar", "application/x-rar", "application/epub+zip", "application/csv",
        "image/", "audio/", "video/", "application/octet-stream",
    ),
}
MEDIA_KINDS = tuple(ALLOWED)

InboundFetcher = Callable[[str, str, dict[str, Any]], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Prepared:
    """Checked media not stored yet: the caller inserts it in its own transaction."""

    media: Media
    data: bytes


def sniff(data: bytes) -> str:
    return str(magic.from_buffer(data[:SNIFF_BYTES], mime=True))


def allowed(kind: str, mimetype: str) -> bool:
    base = mimetype.split(";", 1)[0].strip().lower()
    return any(base == a or (a.endswith(("/", ".", "-")) and base.startswith(a))
               for a in ALLOWED[kind])


def choose_type(data: bytes, declared: str) -> str:
    """The sniffed type; the declared one only where it refines it (same type, or a generic
    sniff such as text/plain for a CSV file)."""
    sniffed = sniff(data)
    declared = (declared or "").strip().lower()
    base = declared.split(";", 1)[0].strip()
    if base == sniffed:
        return declared  # keeps parameters such as `codecs=opus`
    if sniffed in GENERIC_TYPES and base and allowed("document", base):
        return base
    return sniffed


def check_kind(kind: str, mimetype: str, *, field: str = "media") -> None:
    if not allowed(kind, mimetype):
        raise BadRequest(
            f"A {kind} cannot be a {mimetype} file; allowed: "
            + ", ".join(a.rstrip("/.-") + ("*" if a.endswith(("/", ".", "-")) else "")
                        for a in ALLOWED[kind]),
            {"field": field, "mimetype": mimetype},
        )


def check_size(size: int, *, field: str = "media") -> None:
    if size > MAX_BYTES:
        raise PayloadTooLarge(f"Media may be at most {MAX_BYTES // 1_000_000} MB",
                              {"field": field, "max_bytes": MAX_BYTES})
    if size == 0:
        raise BadRequest("The media file is empty", {"field": field})


def decode_base64(text: str, *, field: str = "base64") -> tuple[bytes, str]:
    """Plain base64 or a `data:<type>;base64,` URL; returns the bytes and any declared type."""
    declared = ""
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise BadRequest(f"`{field}` data URLs must be base64 encoded", {"field": field})
        declared = header[5:-7]
    if len(text) * 3 // 4 > MAX_BYTES + 3:
        check_size(MAX_BYTES + 1, field=field)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"`{field}` is not valid base64", {"field": field}) from None
    check_size(len(data), field=field)
    return data, declared


def _refuse(url: str, why: str) -> BadRequest:
    return BadRequest(f"Cannot fetch the media URL {url}: {why}", {"field": "url"})


class MediaLibrary:
    """Checks and stores media; fetches URLs; serves and caches inbound media."""

    def __init__(
        self, store: Store, settings: Settings, clock: Clock, *,
        fetch_inbound: InboundFetcher | None = None,
        resolver: ssrf.Resolver = ssrf.resolve,
        cache_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        # Set once the engine protocol can fetch inbound media: (tenant, session, media) → bytes.
        self.fetch_inbound = fetch_inbound
        self._resolver = resolver
        # Downloaded inbound media kept at most (all tenants); the least recently used go.
        self.cache_bytes = cache_bytes if cache_bytes is not None else int(
            getattr(settings, "media_cache_mb", DEFAULT_CACHE_MB)) * 1_000_000

    # -- media to send -----------------------------------------------------------------------

    def prepare(self, tenant_id: str, data: bytes, *, filename: str = "", declared_type: str = "",
                origin: str, field: str = "media") -> Prepared:
        """Size and type checked, hashed, ready to insert (nothing written yet)."""
        check_size(len(data), field=field)
        mimetype = choose_type(data, declared_type)
        if not any(allowed(kind, mimetype) for kind in MEDIA_KINDS):
            raise BadRequest(f"{mimetype} files cannot be sent", {"field": field,
                                                                  "mimetype": mimetype})
        stamp = iso(self.clock())
        media = Media(id=new_id("med"), tenant_id=tenant_id,
                      sha256=hashlib.sha256(data).hexdigest(), mimetype=mimetype,
                      size=len(data), filename=clean_filename(filename), origin=origin,
                      created_at=stamp, last_used_at=stamp)
        return Prepared(media=media, data=data)

    async def store_upload(self, tenant_id: str, data: bytes, filename: str = "",
                           declared_type: str = "") -> Media:
        """An uploaded file, kept to be sent by `media_id`."""
        prepared = await asyncio.to_thread(
            self.prepare, tenant_id, data, filename=filename, declared_type=declared_type,
            origin="upload", field="file")
        await self.store.write(lambda conn: media_rows.insert(conn, prepared.media, data))
        return prepared.media

    async def fetch_url(self, url: str) -> tuple[bytes, str, str]:
        """The body of an http(s) URL, within the limits: (data, content type, file name).

        Every connection, redirects included, goes through the SSRF guard's transport, which
        checks the addresses it connects to (not just the name in the URL).
        """
        allow_private = self.settings.allow_private_urls
        await ssrf.check_url(url, allow_private=allow_private, resolver=self._resolver)
        transport = ssrf.GuardedTransport(allow_private=allow_private, resolver=self._resolver,
                                          max_connections=4)
        try:
            async with (
                asyncio.timeout(FETCH_DEADLINE),
                httpx.AsyncClient(transport=transport, timeout=FETCH_TIMEOUT, trust_env=False,
                                  follow_redirects=True, max_redirects=MAX_REDIRECTS) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise _refuse(url, f"the server answered HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > MAX_BYTES:
                    check_size(declared, field="url")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        check_size(len(body), field="url")
                return (bytes(body), response.headers.get("content-type", ""),
                        _url_filename(str(response.url)))
        except TimeoutError:
            raise _refuse(url, f"no complete answer within {FETCH_DEADLINE:.0f}s") from None
        except httpx.TooManyRedirects:
            raise _refuse(url, f"more than {MAX_REDIRECTS} redirects") from None
        except httpx.HTTPError as exc:
            raise _refuse(url, f"{type(exc).__name__}: {exc}") from None

    # -- inbound media -----------------------------------------------------------------------

    async def download(self, tenant_id: str, message_id: str) -> tuple[Media, bytes]:
        """A message's media bytes: from the database if kept, else fetched from the engine."""
        message = await message_rows.get(self.store, tenant_id, message_id)
        if message is None:
            raise NotFound("Message not found")
        meta = message.payload.get("media")
        if not isinstance(meta, dict) or not meta:
            raise NotFound("This message has no media")
        media_id = str(meta.get("media_id") or "")
        if media_id:
            row = await media_rows.get(self.store, tenant_id, media_id)
            data = await media_rows.data(self.store, tenant_id, media_id)
            if row is not None and data is not None:
                stamp = iso(self.clock())
                await self.store.write(
                    lambda conn: media_rows.touch(conn, tenant_id, media_id, stamp))
                return row, data
        if message.direction == "out":
            raise NotFound("The media of this message is no longer kept")
        if self.fetch_inbound is None:
            raise Unavailable("This engine cannot download the media of received messages")
        data = await self.fetch_inbound(tenant_id, message.session_id, meta)
        check_size(len(data))
        stamp = iso(self.clock())
        mimetype = str(meta.get("mimetype") or "") or await asyncio.to_thread(sniff, data)
        row = Media(id=new_id("med"), tenant_id=tenant_id,
                    sha256=hashlib.sha256(data).hexdigest(), mimetype=mimetype, size=len(data),
                    filename=clean_filename(str(meta.get("filename") or "")), origin="inbound",
                    created_at=stamp, last_used_at=stamp)

        def write(conn: sqlite3.Connection) -> None:
            media_rows.insert(conn, row, data)
            message_rows.set_media_id(conn, tenant_id, message_id, row.id)

        await self.store.write(write)
        await self.evict_cache()
        return row, data

    async def evict_cache(self) -> int:
        """Drop least recently used inbound media beyond the cache size; bytes freed."""
        cap = self.cache_bytes

        def write(conn: sqlite3.Connection) -> tuple[int, int]:
            excess = media_rows.cache_size(conn) - cap
            return media_rows.evict_oldest(conn, excess) if excess > 0 else (0, 0)

        freed_total = 0
        while True:
            rows, freed = await self.store.write(write)
            freed_total += freed
            if rows == 0:
                break
        if freed_total:
            log.info("media cache: freed %d bytes of inbound media", freed_total)
        return freed_total


def clean_filename(name: str) -> str:
    """A bare file name: no directories, no control characters, at most 200 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:200]


def _url_filename(url: str) -> str:
    return clean_filename(unquote(urlsplit(url).path.rsplit("/", 1)[-1]))
