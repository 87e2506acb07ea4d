"""Phone numbers as people type them → E.164 digits (no '+'), the one form contacts are keyed by.

Policy: a number written internationally (`+49 …` or `0049 …`) needs nothing else; a national
number (`030 1234567`) needs a default country (ISO code such as `DE`), given by whoever sends
it. There is no implicit default country: guessing `US` would silently turn a German national
number into a wrong American one. Numbers are checked for a possible length in their country,
not against the assigned number ranges, so new ranges and test numbers are accepted; whether a
number is on WhatsApp is something only WhatsApp can say.
"""

from __future__ import annotations

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

from whatsdex.errors import BadRequest

# Characters people write numbers with. Letters are refused, not converted (the library would
# read `1-800-FLOWERS` as digits, and in an import a letter means a wrong column or junk).
_ALLOWED = frozenset("0123456789+-(). /\u00a0\t")

_REASONS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "the wrong length for its country",
    ValidationResult.INVALID_COUNTRY_CODE: "an unknown country code",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "a local number: add the area code",
}


class InvalidPhone(BadRequest):
    """400: the number cannot be a phone number; `reason` is short enough for a report row."""

    def __init__(self, reason: str, field: str = "phone") -> None:
        super().__init__(f"Invalid phone number: {reason}", {"field": field, "reason": reason})
        self.reason = reason


def country(code: str | None, field: str = "default_country") -> str | None:
    """A default country as an ISO 3166 code the library knows (`de` → `DE`), or None."""
    if code is None or not code.strip():
        return None
    clean = code.strip().upper()
    if clean not in phonenumbers.SUPPORTED_REGIONS:
        raise BadRequest(f"Unknown country code {code.strip()!r}: use a two-letter ISO code "
                         "such as DE, FR or BR", {"field": field})
    return clean


def normalize(raw: str, default_country: str | None = None, field: str = "phone") -> str:
    """E.164 digits without '+'. `default_country` must already be checked by `country()`."""
    text = raw.strip()
    if not text:
        raise InvalidPhone("missing", field)
    if not set(text) <= _ALLOWED:
        raise InvalidPhone("contains letters or symbols", field)
    compact = "".join(ch for ch in text if ch.isdigit() or ch == "+")
    if compact.count("+") > 1 or ("+" in compact and not compact.startswith("+")):
        raise InvalidPhone("misplaced '+'", field)
    if compact.startswith("00"):
        # The international call prefix of most of the world; no national number starts so.
        compact = "+" + compact[2:]
    region = None if compact.startswith("+") else default_country
    if not compact.startswith("+") and region is None:
        raise InvalidPhone("no country: write it with + and the country code, "
                           "or choose a default country", field)
    try:
        number = phonenumbers.parse(compact, region)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            raise InvalidPhone("an unknown country code", field) from None
        if exc.error_type == NumberParseException.TOO_LONG:
            raise InvalidPhone("too long", field) from None
        if exc.error_type in (NumberParseException.TOO_SHORT_NSN,
                              NumberParseException.TOO_SHORT_AFTER_IDD):
            raise InvalidPhone("too short", field) from None
        raise InvalidPhone("not a phone number", field) from None
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != ValidationResult.IS_POSSIBLE:
        raise InvalidPhone(_REASONS.get(verdict, "not a phone number"), field)
    return phonenumbers.format_number(number, PhoneNumberFormat.E164).lstrip("+")


def display(digits: str) -> str:
    """`4930123456` → `+49 30 123456` for people; '' stays ''."""
    if not digits:
        return ""
    try:
        number = phonenumbers.parse("+" + digits, None)
    except NumberParseException:
        return "+" + digits
    return phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)


def e164(digits: str) -> str:
    """`4930123456` → `+4930123456` (the API's form); '' stays ''."""
    return "+" + digits if digits else ""
