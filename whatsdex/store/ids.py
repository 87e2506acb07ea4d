"""Row ids: a short type prefix (readable in logs and URLs), the time, and 80 random bits.

The time (milliseconds, 45 bits) comes first so that new rows land next to each other in a
table's id index: random ids scatter every insert over the whole index, and a busy table's
writes slow down as it grows (each insert dirties another page). The 80 random bits keep ids
unguessable and unique.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32 (RFC 4648), lower case, sorts as text
# Two base32 characters per 10 bits: ids are made by the thousand per second while messages
# pour in (base64.b32encode is pure Python).
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_RANDOM_SHIFTS = (70, 60, 50, 40, 30, 20, 10, 0)
_TIME_SHIFTS = (40, 30, 20, 10, 0)  # 45 bits: the first character holds 5, the rest 10 each


def new_id(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    bits = secrets.randbits(80)
    stamp = "".join([_PAIRS[(millis >> shift) & 1023] for shift in _TIME_SHIFTS])[1:]
    return (prefix + "_" + stamp
            + "".join([_PAIRS[(bits >> shift) & 1023] for shift in _RANDOM_SHIFTS]))
