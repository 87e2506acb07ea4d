"""Dashboard sign-in: throttled password checks and server-side sessions with timeouts."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass

from whatsdex.clock import iso, parse_iso
from whatsdex.errors import Forbidden, LimitReached, Unauthorized
from whatsdex.identity import audit, passwords
from whatsdex.identity.apikeys import SUSPENDED
from whatsdex.identity.principal import Principal
from whatsdex.identity.tokens import new_token, sha256_hex
from whatsdex.store import Store, logins, users
from whatsdex.store.records import User

WINDOW = 15 * 60.0  # failures older than this are forgotten
LOCK = 15 * 60.0
ACCOUNT_MAX_FAILURES = 5
ADDRESS_MAX_FAILURES = 20
TOUCH_INTERVAL = 60.0
BAD_CREDENTIALS = "Wrong e-mail or password"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    idle_seconds: float
    max_seconds: float


@dataclass(frozen=True, slots=True)
class LoginSession:
    principal: Principal
    token_hash: str


@dataclass(frozen=True, slots=True)
class NewLogin:
    token: str  # goes in the cookie, never stored
    user: User


def _keys(email: str, ip: str) -> tuple[str, str]:
    # Capped like a valid address (254): a megabyte "e-mail" must not become a megabyte row.
    return f"account:{email.strip().lower()[:254]}", f"address:{ip or 'unknown'}"


def _count_failure(conn: sqlite3.Connection, key: str, limit: int, now: float) -> None:
    row = logins.get_failures(conn, key)
    if row is None or parse_iso(row["window_started_at"]) <= now - WINDOW:
        failures, started = 1, iso(now)
    else:
        failures, started = row["failures"] + 1, row["window_started_at"]
    locked = iso(now + LOCK) if failures >= limit else None
    if row is not None and row["locked_until"] and row["locked_until"] > iso(now):
        locked = row["locked_until"]  # already locked: do not extend
    logins.set_failures(conn, key, failures, started, locked)


async def login(
    db: Store, *, email: str, password: str, ip: str, user_agent: str, now: float,
    limits: SessionLimits, replaces: str | None = None,
) -> NewLogin:
    """Check the password (unless throttled) and open a new session; the old one ends."""
    account_key, address_key = _keys(email, ip)
    locked = await logins.locked_until(db, [account_key, address_key], iso(now))
    if locked:
        wait = max(1, math.ceil(parse_iso(locked) - now))
        raise LimitReached(
            f"Too many failed sign-in attempts: try again in {math.ceil(wait / 60)} minute(s)",
            retry_after=wait,
        )
    found = await users.find_for_login(db, email.strip().lower())
    ok = await passwords.verify_password_async(found[1] if found else None, password)
    if not ok or found is None:

        def failed(conn: sqlite3.Connection) -> None:
            _count_failure(conn, account_key, ACCOUNT_MAX_FAILURES, now)
            _count_failure(conn, address_key, ADDRESS_MAX_FAILURES, now)

        await db.write(failed)
        raise Unauthorized(BAD_CREDENTIALS)
    user = found[0]
    if user.tenant_id is not None:
        status = await db.fetchval("SELECT status FROM tenants WHERE id = ?", (user.tenant_id,))
        if status != "active":
            raise Forbidden(SUSPENDED)
    issued = new_token()
    stamp = iso(now)
    actor = principal_for(user)

    def opened(conn: sqlite3.Connection) -> None:
        if replaces:
            logins.delete_session(conn, sha256_hex(replaces))
        logins.clear_failures(conn, account_key)
        logins.insert_session(conn, token_hash=issued.hash, user_id=user.id, now=stamp,
                              expires_at=iso(now + limits.max_seconds), ip=ip,
                              user_agent=user_agent)
        users.mark_login(conn, user.id, stamp)
        audit.record(conn, actor, "user.login", at=stamp, tenant_id=user.tenant_id,
                     object_type="user", object_id=user.id, ip=ip)

    await db.write(opened)
    return NewLogin(token=issued.secret, user=user)


def principal_for(user: User) -> Principal:
    return Principal(kind="user", id=user.id, label=user.email, role=user.role,  # type: ignore[arg-type]
                     tenant_id=user.tenant_id)


async def resolve(db: Store, token: str, *, now: float, limits: SessionLimits
                  ) -> LoginSession | None:
    """The signed-in identity behind a session cookie, or None when absent or timed out."""
    if not token or len(token) > 200:
        return None
    token_hash = sha256_hex(token)
    row = await logins.find_session(db, token_hash)
    if row is None:
        return None
    stamp = iso(now)
    if row["expires_at"] <= stamp or row["last_seen_at"] <= iso(now - limits.idle_seconds):
        await db.write(lambda conn: logins.delete_session(conn, token_hash))
        return None
    if row["tenant_id"] is not None and row["tenant_status"] != "active":
        raise Forbidden(SUSPENDED)
    if row["last_seen_at"] <= iso(now - TOUCH_INTERVAL):
        db.submit(lambda conn: logins.touch_session(conn, token_hash, stamp))
    principal = Principal(kind="user", id=row["user_id"], label=row["email"], role=row["role"],
                          tenant_id=row["tenant_id"])
    return LoginSession(principal=principal, token_hash=token_hash)


async def logout(db: Store, session: LoginSession, *, now: float, ip: str = "") -> None:
    stamp = iso(now)

    def write(conn: sqlite3.Connection) -> None:
        logins.delete_session(conn, session.token_hash)
        audit.record(conn, session.principal, "user.logout", at=stamp,
                     tenant_id=session.principal.tenant_id, object_type="user",
                     object_id=session.principal.id or "", ip=ip)

    await db.write(write)


async def purge_expired(db: Store, *, now: float, limits: SessionLimits) -> int:
    """Drop timed-out sessions and spent failure counters (a periodic job)."""

    def write(conn: sqlite3.Connection) -> int:
        logins.delete_stale_failures(conn, iso(now - WINDOW), iso(now))
        return logins.delete_expired_sessions(conn, iso(now), iso(now - limits.idle_seconds))

    return await db.write(write)
