"""Addresses: phone numbers as people write them, and JIDs, normalised to one form."""

from __future__ import annotations

import pytest

from whatsdex.errors import BadRequest
from whatsdex.messaging.recipients import Recipient, normalise, phone_of_jid

GOOD = [
    ("+15551234567", "15551234567@s.whatsapp.net", "15551234567"),
    ("15551234567", "15551234567@s.whatsapp.net", "15551234567"),
    ("+1 (555) 123-4567", "15551234567@s.whatsapp.net", "15551234567"),
    ("+44 20 7946 0958", "442079460958@s.whatsapp.net", "442079460958"),
    ("0049 30 1234567", "49301234567@s.whatsapp.net", "49301234567"),
    ("  +55.11.98765.4321 ", "5511987654321@s.whatsapp.net", "5511987654321"),
    ("15551234567@s.whatsapp.net", "15551234567@s.whatsapp.net", "15551234567"),
    ("15551234567:12@s.whatsapp.net", "15551234567@s.whatsapp.net", "15551234567"),
    ("15551234567@c.us", "15551234567@s.whatsapp.net", "15551234567"),
    ("15551234567@S.WhatsApp.Net", "15551234567@s.whatsapp.net", "15551234567"),
    ("120363025246125888@g.us", "120363025246125888@g.us", ""),
    ("15551234567-1600000000@g.us", "15551234567-1600000000@g.us", ""),
    ("123456789012345@lid", "123456789012345@lid", ""),
]

BAD = [
    "",
    "   ",
    "hello",
    "+1555",  # too short
    "+1234567890123456",  # 16 digits: longer than E.164 allows
    "05551234567",  # national format
    "+1 555 CALL NOW",
    "15551234567@example.com",
    "abc@s.whatsapp.net",
    "@g.us",
    "12-34-56@g.us",
    "group@g.us",
    "x@lid",
    "+١٥٥٥١٢٣٤٥٦٧",  # non-ASCII digits
]


@pytest.mark.parametrize(("given", "jid", "phone"), GOOD)
def test_addresses_normalise(given: str, jid: str, phone: str) -> None:
    assert normalise(given) == Recipient(jid=jid, phone=phone)


@pytest.mark.parametrize("given", BAD)
def test_bad_addresses_name_the_field(given: str) -> None:
    with pytest.raises(BadRequest) as caught:
        normalise(given, field="to")
    assert caught.value.detail == {"field": "to"}
    assert "`to`" in caught.value.message


def test_groups_are_groups() -> None:
    assert normalise("120363025246125888@g.us").is_group
    assert not normalise("+15551234567").is_group


def test_phone_of_jid() -> None:
    assert phone_of_jid("15551234567:3@s.whatsapp.net") == "15551234567"
    assert phone_of_jid("123@lid") == ""
    assert phone_of_jid("120363025246125888@g.us") == ""
