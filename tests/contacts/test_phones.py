"""Phone normalisation: national numbers need a country, `+`/`00` numbers do not, junk is named."""

from __future__ import annotations

import pytest

from whatsdex.contacts import phones
from whatsdex.errors import BadRequest

VALID = [
    # (typed, default country, E.164 digits)
    ("030 1234567", "DE", "49301234567"),
    ("(030) 123-4567", "DE", "49301234567"),
    ("06 12 34 56 78", "FR", "33612345678"),
    ("(415) 555-2671", "US", "14155552671"),
    ("11 91234-5678", "BR", "5511912345678"),
    ("+49 30 1234567", None, "49301234567"),
    ("+49 30 1234567", "FR", "49301234567"),  # international wins over the default
    ("0049 30 1234567", None, "49301234567"),
    ("0049 30 1234567", "US", "49301234567"),  # 00 is international everywhere here
    ("+1 555 123 4567", None, "15551234567"),  # test ranges pass: length is what is checked
    ("  +44 20 7946 0018 ", None, "442079460018"),
    ("+55.11.91234.5678", None, "5511912345678"),
    ("+49\u00a030\u00a01234567", None, "49301234567"),  # non-breaking spaces from spreadsheets
]

INVALID = [
    # (typed, default country, reason)
    ("", "DE", "missing"),
    ("   ", None, "missing"),
    ("030 1234567", None, "no country"),
    ("15551234567", None, "no country"),
    ("1-800-FLOWERS", "US", "letters"),
    ("abc", "DE", "letters"),
    ("+49 30 12x4567", None, "letters"),
    ("49+301234567", None, "misplaced"),
    ("+49 3", None, "too short"),
    ("12", "DE", "local number"),
    ("+33 6", None, "too short"),
    ("+999 123456", None, "unknown country code"),
    ("+49 30 1234567890123456", None, "too long"),
    ("+", None, "not a phone number"),
]


@pytest.mark.parametrize(("typed", "country", "digits"), VALID)
def test_valid_numbers(typed: str, country: str | None, digits: str) -> None:
    assert phones.normalize(typed, phones.country(country)) == digits


@pytest.mark.parametrize(("typed", "country", "reason"), INVALID)
def test_invalid_numbers_say_why(typed: str, country: str | None, reason: str) -> None:
    with pytest.raises(phones.InvalidPhone) as caught:
        phones.normalize(typed, phones.country(country))
    assert reason in caught.value.reason
    assert caught.value.status_code == 400
    assert caught.value.detail["field"] == "phone"


def test_country_codes() -> None:
    assert phones.country(" de ") == "DE"
    assert phones.country(None) is None
    assert phones.country("") is None
    for bad in ("XX", "germany", "D"):
        with pytest.raises(BadRequest, match="Unknown country code"):
            phones.country(bad)


def test_display_forms() -> None:
    assert phones.e164("49301234567") == "+49301234567"
    assert phones.e164("") == ""
    assert phones.display("49301234567") == "+49 30 1234567"
    assert phones.display("") == ""
