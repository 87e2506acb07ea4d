"""Row ids: a short type prefix (readable in logs and URLs) and 80 random bits."""

from __future__ import annotations

import base64
import secrets


def new_id(prefix: str) -> str:
    raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return f"{prefix}_{raw}"
