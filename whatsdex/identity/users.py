"""Operators, tenant owners and members: created, invited, re-roled and removed."""

from __future__ import annotations

import re
import sqlite3

from whatsdex.clock import iso
from whatsdex.errors import BadRequest, Conflict, Forbidden, NotFound
from whatsdex.identity import audit, links, passwords
from whatsdex.identity.principal import Principal
from whatsdex.store import Store, logins, tenants, users
from whatsdex.store.ids import new_id
from whatsdex.store.records import LinkToken, User

TENANT_ROLES = ("owner", "member")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


def clean_email(email: str) -> str:
    value = str(email).strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        raise BadRequest("Enter a valid e-mail address", {"field": "email"})
    return value


def _check_role(role: str) -> str:
    if role not in TENANT_ROLES:
        raise BadRequest("role must be owner or member", {"field": "role"})
    return role


async def create_operator(
    db: Store, actor: Principal, *, email: str, password: str, name: str = "", now: float,
    setup_token: str | None = None, ip: str = "",
) -> User:
    """An operator account; with `setup_token`, the first-run link is consumed atomically."""
    email = clean_email(email)
    passwords.check_policy(password, email)
    password_hash = await passwords.hash_password_async(password)
    stamp = iso(now)
    user = User(id=new_id("usr"), email=email, name=name.strip()[:100], role="operator",
                tenant_id=None, created_at=stamp, last_login_at=None)

    def write(conn: sqlite3.Connection) -> User:
        if setup_token is not None:
            if users.operator_exists_sync(conn):
                raise Conflict("WhatsDeX is already set up: sign in instead")
            links.consume(conn, setup_token, "setup", now)
        if users.email_taken(conn, email):
            raise Conflict("A user with this e-mail already exists", {"field": "email"})
        users.insert_user(conn, user, password_hash)
        audit.record(conn, actor, "operator.created", at=stamp, tenant_id=None,
                     object_type="user", object_id=user.id, detail={"email": email}, ip=ip)
        return user

    return await db.write(write)


async def invite(
    db: Store, actor: Principal, tenant_id: str, *, email: str, role: str, now: float,
    ip: str = "",
) -> tuple[LinkToken, str]:
    """An invitation link for one e-mail and role; the invitee picks their password."""
    email = clean_email(email)
    _check_role(role)
    if role == "owner" and not actor.at_least("owner"):
        raise Forbidden("Only an owner can invite another owner")
    link = links._link("invite", tenant_id, email, role, actor, now, links.INVITE_TTL)

    def write(conn: sqlite3.Connection) -> tuple[LinkToken, str]:
        if tenants.get_tenant_sync(conn, tenant_id) is None:
            raise NotFound("Tenant not found")
        if users.email_taken(conn, email):
            raise Conflict("A user with this e-mail already exists", {"field": "email"})
        token = links.insert(conn, link)
        audit.record(conn, actor, "user.invited", at=link.created_at, tenant_id=tenant_id,
                     object_type="invite", object_id=link.id,
                     detail={"email": email, "role": role}, ip=ip)
        return link, token

    return await db.write(write)


async def accept_invite(
    db: Store, token: str, *, password: str, name: str = "", now: float, ip: str = ""
) -> User:
    """Create the invited user (once); the link stops working afterwards."""
    link = await links.resolve(db, token, "invite", now=now)
    passwords.check_policy(password, link.subject)
    password_hash = await passwords.hash_password_async(password)
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> User:
        used = links.consume(conn, token, "invite", now)
        if used.tenant_id is None or tenants.get_tenant_sync(conn, used.tenant_id) is None:
            raise NotFound(links.INVALID)
        if users.email_taken(conn, used.subject):
            raise Conflict("A user with this e-mail already exists")
        user = User(id=new_id("usr"), email=used.subject, name=name.strip()[:100],
                    role=used.role or "member", tenant_id=used.tenant_id, created_at=stamp,
                    last_login_at=None)
        users.insert_user(conn, user, password_hash)
        actor = Principal(kind="user", id=user.id, label=user.email, role=user.role,  # type: ignore[arg-type]
                          tenant_id=user.tenant_id)
        audit.record(conn, actor, "user.joined", at=stamp, tenant_id=user.tenant_id,
                     object_type="user", object_id=user.id,
                     detail={"email": user.email, "role": user.role, "invite": used.id}, ip=ip)
        return user

    return await db.write(write)


async def change_role(
    db: Store, actor: Principal, tenant_id: str, user_id: str, *, role: str, now: float,
    ip: str = "",
) -> None:
    _check_role(role)
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        user = users.get_tenant_user_sync(conn, tenant_id, user_id)
        if user is None:
            raise NotFound("User not found")
        if user.role == "owner" and role != "owner" and users.count_owners(conn, tenant_id) == 1:
            raise Conflict("A workspace needs at least one owner")
        users.set_role(conn, tenant_id, user_id, role)
        audit.record(conn, actor, "user.role_changed", at=stamp, tenant_id=tenant_id,
                     object_type="user", object_id=user_id,
                     detail={"email": user.email, "from": user.role, "to": role}, ip=ip)

    await db.write(write)


async def remove_user(
    db: Store, actor: Principal, tenant_id: str, user_id: str, *, now: float, ip: str = ""
) -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        user = users.get_tenant_user_sync(conn, tenant_id, user_id)
        if user is None:
            raise NotFound("User not found")
        if user.role == "owner" and users.count_owners(conn, tenant_id) == 1:
            raise Conflict("A workspace needs at least one owner")
        logins.delete_user_sessions(conn, user_id)
        users.delete_tenant_user(conn, tenant_id, user_id)
        audit.record(conn, actor, "user.removed", at=stamp, tenant_id=tenant_id,
                     object_type="user", object_id=user_id, detail={"email": user.email}, ip=ip)

    await db.write(write)
