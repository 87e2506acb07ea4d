"""Secrets handed to people (API keys, session and link tokens): random, shown once, hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

API_KEY_PREFIX = "wdx_"
_VISIBLE = 12  # "wdx_" + 8 characters: enough to recognise a key in a list


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    secret: str  # shown once to its owner, never stored
    hash: str
    prefix: str


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_api_key() -> IssuedSecret:
    """256 random bits, URL-safe, with a recognisable `wdx_` prefix."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return IssuedSecret(secret=key, hash=sha256_hex(key), prefix=key[:_VISIBLE])


def new_token() -> IssuedSecret:
    token = secrets.token_urlsafe(32)
    return IssuedSecret(secret=token, hash=sha256_hex(token), prefix=token[:6])


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
