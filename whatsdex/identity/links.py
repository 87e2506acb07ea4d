"""One-purpose links: first-run set-up, invitations, and client QR links for one number.

The link carries a random token; only its hash is stored. A link grants exactly its purpose,
expires, and (set-up and invitations) works once.
"""

from __future__ import annotations

import sqlite3

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, NotFound
from whatsdex.identity import audit
from whatsdex.identity.principal import SYSTEM, Principal
from whatsdex.identity.tokens import new_token, sha256_hex
from whatsdex.store import Store, links
from whatsdex.store.ids import new_id
from whatsdex.store.records import LinkToken

SETUP_TTL = 24 * 3600
INVITE_TTL = 72 * 3600
CLIENT_LINK_TTL = 24 * 3600
MAX_CLIENT_LINK_TTL = 30 * 24 * 3600

INVALID = "This link is invalid, was already used or has expired"


def _link(purpose: str, tenant_id: str | None, subject: str, role: str | None,
          actor: Principal, now: float, ttl: int) -> LinkToken:
    return LinkToken(id=new_id("lnk"), purpose=purpose, tenant_id=tenant_id, subject=subject,
                     role=role, created_by=actor.id if actor.kind == "user" else None,
                     created_at=iso(now), expires_at=iso(now + ttl), used_at=None,
                     revoked_at=None)


def insert(conn: sqlite3.Connection, link: LinkToken) -> str:
    """Store a new link inside the caller's transaction; returns its token (shown once)."""
    issued = new_token()
    links.insert_link(conn, link, issued.hash)
    return issued.secret


async def create_setup_link(db: Store, *, now: float) -> str:
    """A fresh first-run set-up token; earlier unused ones stop working."""
    link = _link("setup", None, "", None, SYSTEM, now, SETUP_TTL)

    def write(conn: sqlite3.Connection) -> str:
        links.revoke_purpose(conn, "setup", iso(now))
        return insert(conn, link)

    return await db.write(write)


async def create_client_link(
    db: Store, actor: Principal, tenant_id: str, number_id: str, *, now: float,
    ttl_seconds: int = CLIENT_LINK_TTL, ip: str = "",
) -> tuple[LinkToken, str]:
    """A page link that shows only one number's QR / pairing code and status."""
    if not 60 <= ttl_seconds <= MAX_CLIENT_LINK_TTL:
        raise BadRequest("A client link must last between 1 minute and 30 days",
                         {"field": "ttl_seconds"})
    link = _link("client_link", tenant_id, number_id, None, actor, now, ttl_seconds)

    def write(conn: sqlite3.Connection) -> tuple[LinkToken, str]:
        token = insert(conn, link)
        audit.record(conn, actor, "client_link.created", at=link.created_at, tenant_id=tenant_id,
                     object_type="number", object_id=number_id,
                     detail={"link": link.id, "expires_at": link.expires_at}, ip=ip)
        return link, token

    return await db.write(write)


def usable(link: LinkToken | None, purpose: str, now: float) -> LinkToken:
    if (
        link is None
        or link.purpose != purpose
        or link.revoked_at is not None
        or link.expires_at <= iso(now)
        or (purpose != "client_link" and link.used_at is not None)
    ):
        raise NotFound(INVALID)
    return link


async def resolve(db: Store, token: str, purpose: str, *, now: float) -> LinkToken:
    """The link behind a token if it is still valid for this purpose, else 404."""
    if not token or len(token) > 200:
        raise NotFound(INVALID)
    return usable(await links.find_by_hash(db, sha256_hex(token)), purpose, now)


def consume(conn: sqlite3.Connection, token: str, purpose: str, now: float) -> LinkToken:
    """Inside a write: check the link and mark it used, so it works exactly once."""
    link = usable(links.find_by_hash_sync(conn, sha256_hex(token)), purpose, now)
    if links.mark_used(conn, link.id, iso(now)) != 1:
        raise NotFound(INVALID)
    return link


async def revoke(db: Store, actor: Principal, tenant_id: str | None, link_id: str, *,
                 now: float, ip: str = "") -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        if links.revoke_link(conn, tenant_id, link_id, stamp) != 1:
            raise NotFound("Link not found")
        audit.record(conn, actor, "link.revoked", at=stamp, tenant_id=tenant_id,
                     object_type="link", object_id=link_id, ip=ip)

    await db.write(write)
