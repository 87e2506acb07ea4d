"""Passwords: argon2id with OWASP parameters, hashed off the event loop; weak ones refused."""

from __future__ import annotations

import asyncio
import functools
import gzip
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from whatsdex.errors import BadRequest

MIN_LENGTH = 8
MAX_LENGTH = 256

# OWASP Password Storage Cheat Sheet: argon2id, 19 MiB, 2 iterations, parallelism 1.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
# Verified against when the account does not exist, so both cases take the same time.
_DUMMY_HASH = _HASHER.hash("whatsdex-timing-equaliser")

# The list Django ships (BSD licence): 20,000 passwords seen most often in breaches.
_COMMON_FILE = Path(__file__).resolve().parent / "common-passwords.txt.gz"


@functools.cache
def _common_passwords() -> frozenset[str]:
    with gzip.open(_COMMON_FILE, "rt", encoding="utf-8") as fh:
        return frozenset(line.strip().lower() for line in fh if line.strip())


def check_policy(password: str, email: str = "") -> None:
    """Raise BadRequest naming the rule a new password breaks."""
    if len(password) < MIN_LENGTH:
        raise BadRequest(f"The password must have at least {MIN_LENGTH} characters",
                         {"field": "password"})
    if len(password) > MAX_LENGTH:
        raise BadRequest(f"The password must have at most {MAX_LENGTH} characters",
                         {"field": "password"})
    lowered = password.lower()
    if lowered in _common_passwords():
        raise BadRequest("This password is too common; choose another one",
                         {"field": "password"})
    local = email.split("@", 1)[0].lower()
    if local and len(local) >= 4 and local in lowered:
        raise BadRequest("The password must not contain your e-mail name", {"field": "password"})


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)
