"""Who a message goes to: E.164 phone numbers and WhatsApp JIDs, normalised to one JID form."""

from __future__ import annotations

from dataclasses import dataclass

from whatsdex.errors import BadRequest

PHONE_SERVER = "s.whatsapp.net"
GROUP_SERVER = "g.us"
LID_SERVER = "lid"
# Punctuation people write phone numbers with; anything else is refused, not guessed at.
_PHONE_PUNCTUATION = str.maketrans("", "", " -().\u00a0")
_HINT = "a phone number in international format (e.g. +15551234567) or a WhatsApp JID"


@dataclass(frozen=True, slots=True)
class Recipient:
    """A normalised address: the JID to send to and, for a person, the phone digits."""

    jid: str
    phone: str = ""  # E.164 digits without '+', for a phone JID

    @property
    def is_group(self) -> bool:
        return self.jid.endswith("@" + GROUP_SERVER)


def phone_digits(text: str, *, field: str = "phone") -> str:
    """`+1 (555) 123-4567` → `15551234567`; a national number (leading 0) is refused."""
    raw = str(text).strip().translate(_PHONE_PUNCTUATION)
    if raw.startswith("+"):
        raw = raw[1:]
    elif raw.startswith("00"):  # the international call prefix used in much of the world
        raw = raw[2:]
    if not (raw.isascii() and raw.isdigit()):
        raise BadRequest(f"`{field}` must be {_HINT}", {"field": field})
    if raw.startswith("0"):
        raise BadRequest(
            f"`{field}` looks like a national number: write it in international format "
            "with the country code (e.g. +15551234567)",
            {"field": field},
        )
    if not 7 <= len(raw) <= 15:
        raise BadRequest(f"`{field}` must have 7 to 15 digits, with the country code",
                         {"field": field})
    return raw


def normalise(address: str, *, field: str = "to") -> Recipient:
    """A phone number or a JID (person, LID or group) as the one form the engines expect."""
    text = str(address).strip()
    if not text:
        raise BadRequest(f"`{field}` is required: {_HINT}", {"field": field})
    user, at, server = text.partition("@")
    if not at:
        digits = phone_digits(text, field=field)
        return Recipient(jid=f"{digits}@{PHONE_SERVER}", phone=digits)
    server = server.lower()
    if server in (PHONE_SERVER, "c.us"):  # c.us: the older spelling other gateways use
        # A device (`:12`) or agent (`.0`) suffix addresses one device; messages go to the user.
        digits = phone_digits(user.split(":", 1)[0].split(".", 1)[0], field=field)
        return Recipient(jid=f"{digits}@{PHONE_SERVER}", phone=digits)
    if server == LID_SERVER:
        lid = user.split(":", 1)[0]
        if lid.isascii() and lid.isdigit() and 1 <= len(lid) <= 20:
            return Recipient(jid=f"{lid}@{LID_SERVER}")
    elif server == GROUP_SERVER:
        parts = user.split("-")
        if 1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() and p for p in parts):
            return Recipient(jid=f"{user}@{GROUP_SERVER}")
    raise BadRequest(f"`{field}` must be {_HINT}; {text!r} is not", {"field": field})


def phone_of_jid(jid: str) -> str:
    """The phone digits of a phone JID (device suffix dropped), else ''."""
    user, _, server = jid.partition("@")
    if server != PHONE_SERVER:
        return ""
    digits = user.split(":", 1)[0].split(".", 1)[0]
    return digits if digits.isascii() and digits.isdigit() else ""
