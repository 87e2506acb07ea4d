"""Signatures: the Standard Webhooks test vector, and verification by the independent
`standardwebhooks` package (including both secrets during a rotation)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from whatsdex.webhooks import signing

# The Standard Webhooks repository's vector (libraries/python/tests/test_webhooks.py,
# test_sign_function).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature}


def test_the_spec_test_vector() -> None:
    assert signing.sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    # The prefix is optional in the spec: the bare base64 is the same key.
    bare = SPEC_SECRET.removeprefix("whsec_")
    assert signing.sign(bare, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_independent_library_agrees_on_the_vector() -> None:
    theirs = Verifier(SPEC_SECRET).sign(SPEC_ID, datetime.fromtimestamp(SPEC_TIMESTAMP, UTC),
                                        SPEC_BODY.decode())
    assert theirs == SPEC_SIGNATURE


def test_a_new_secret_verifies_with_the_library() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.new_secret() != secret
    now = int(time.time())
    body = '{"type":"message.received","timestamp":"x","data":{"text":"héllo"}}'.encode()
    sent = headers("msg_abc", now, signing.signature_header([secret], "msg_abc", now, body))
    assert Verifier(secret).verify(body, sent)["data"]["text"] == "héllo"
    # Any change to the id, the time or the body breaks it.
    for changed in (headers("msg_abd", now, sent["webhook-signature"]),
                    headers("msg_abc", now + 1, sent["webhook-signature"])):
        with pytest.raises(WebhookVerificationError):
            Verifier(secret).verify(body, changed)
    with pytest.raises(WebhookVerificationError):
        Verifier(secret).verify(body + b" ", sent)


def test_during_a_rotation_either_secret_verifies() -> None:
    new, old, stranger = signing.new_secret(), signing.new_secret(), signing.new_secret()
    now = int(time.time())
    body = b'{"type":"session.status","timestamp":"t","data":{}}'
    header = signing.signature_header([new, old], "msg_rot", now, body)
    assert len(header.split(" ")) == 2 and all(p.startswith("v1,") for p in header.split(" "))
    sent = headers("msg_rot", now, header)
    assert Verifier(new).verify(body, sent) is not None
    assert Verifier(old).verify(body, sent) is not None
    with pytest.raises(WebhookVerificationError):
        Verifier(stranger).verify(body, sent)


@pytest.mark.parametrize("bad", ["whsec_", "whsec_not base64!", ""])
def test_a_malformed_secret_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        signing.secret_key(bad)
