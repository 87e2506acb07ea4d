"""AES-256-GCM sealing with a version byte, a random nonce and length-prefixed associated data.

A sealed blob is `version (1 byte) | nonce (12 bytes) | ciphertext + tag (16 bytes)`. The
associated data names what the blob belongs to (tenant, table, row), so a blob copied to another
row or tenant fails to open instead of decrypting in the wrong place.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from whatsdex.errors import WhatsdexError

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
VERSION = 1
_HEADER = bytes([VERSION])
OVERHEAD = len(_HEADER) + NONCE_SIZE + TAG_SIZE

AadPart = str | int | bytes


class DecryptionError(WhatsdexError):
    """A blob that does not open: tampered with, sealed by another key, or for another row."""

    status_code = 500


def aad(*parts: AadPart) -> bytes:
    """Join parts unambiguously: each is a 4-byte big-endian length then its bytes.

    Integers are written in decimal, so `aad("row", 5)` equals `aad("row", "5")`: a row id reads
    the same whichever way a caller happens to hold it.
    """
    out = bytearray()
    for part in parts:
        if isinstance(part, bool):  # bool is an int: refuse it rather than write "True"/"1"
            raise TypeError("associated data parts must be str, int or bytes, not bool")
        if isinstance(part, int):
            data = str(part).encode()
        elif isinstance(part, str):
            data = part.encode()
        elif isinstance(part, bytes):
            data = part
        else:
            raise TypeError(f"associated data parts must be str, int or bytes, not {type(part)}")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_SIZE:
        raise ValueError(f"an AES-256 key is {KEY_SIZE} bytes, got {len(key)}")
    return AESGCM(key)


def seal(key: bytes, plaintext: bytes, associated: bytes = b"") -> bytes:
    """Encrypt and authenticate; the version byte is authenticated too."""
    nonce = os.urandom(NONCE_SIZE)
    return _HEADER + nonce + _cipher(key).encrypt(nonce, plaintext, _HEADER + associated)


def open_sealed(key: bytes, blob: bytes, associated: bytes = b"") -> bytes:
    """Decrypt a `seal` blob, or raise DecryptionError (never return unauthenticated bytes)."""
    cipher = _cipher(key)
    if len(blob) < OVERHEAD:
        raise DecryptionError("cannot decrypt: the encrypted value is truncated")
    if blob[0] != VERSION:
        raise DecryptionError(f"cannot decrypt: unknown encryption format version {blob[0]}")
    nonce = blob[1 : 1 + NONCE_SIZE]
    try:
        return cipher.decrypt(nonce, blob[1 + NONCE_SIZE :], blob[:1] + associated)
    except InvalidTag:
        raise DecryptionError(
            "cannot decrypt: wrong key, value altered, or value moved from another record"
        ) from None
