"""No secret enters the pipeline: detection, rejection, and reports without the value."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from producers import events
from producers.context import CustodyContext
from producers.jsonlines import parse_event_lines
from schemas.codec import AvroCodec
from schemas.secrets import (
    REDACTED,
    SecretValueError,
    find_secrets,
    mask_secrets,
    may_hold_secret,
    records_that_may_hold_secrets,
    redact_secrets,
    reject_secrets,
)
from tests.support.samples import AGENT, json_form, one_of_each, stamped

CODEC = AvroCodec()

# Secret-looking samples, assembled at run time so no secret-shaped literal sits in the repo.
JWT = "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiJhZ2VudCJ9" + ".c2lnbmF0dXJlX2J5dGVz"
PEM = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"
AWS = "AKIA" + "Q3EGRZ7EXAMPLEAB"
GOOGLE = "AIza" + "S" * 35
GITHUB = "ghp_" + "a1B2" * 9
SAMPLES = {
    "jwt": JWT,
    "private_key": PEM,
    "aws_access_key": AWS,
    "google_api_key": GOOGLE,
    "github_token": GITHUB,
}


@pytest.mark.parametrize(("kind", "value"), SAMPLES.items())
def test_each_kind_is_found_anywhere_in_an_event(kind: str, value: str) -> None:
    data = json_form(one_of_each()[3])
    data["body"]["detail"] = f"response was {value} ok"
    data["attributes"] = {"note": value}
    findings = find_secrets(data)
    assert {(f.field, f.kind) for f in findings} == {
        ("body.detail", kind),
        ("attributes.note", kind),
    }


def test_secret_in_a_list_or_a_map_key_is_found() -> None:
    findings = find_secrets({"scopes": ["read", AWS], "context": {JWT: "x"}})
    assert {(f.field, f.kind) for f in findings} == {
        ("scopes[1]", "aws_access_key"),
        ("context.[secret key] (key)", "jwt"),
    }


@pytest.mark.parametrize(
    "value",
    [
        "tok-7f3a9c",
        "api-key rotation finished",
        "eyJ",  # a JWT prefix alone
        "AKIA",  # too short to be a key id
        "-----BEGIN PUBLIC KEY-----",
        "spiffe://acme/agent/planner",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_near_misses_are_not_secrets(value: str) -> None:
    assert find_secrets({"detail": value, "token_id": value}) == []


def test_rejection_names_field_and_kind_but_never_the_value() -> None:
    with pytest.raises(SecretValueError) as caught:
        reject_secrets({"body": {"detail": JWT}})
    message = str(caught.value)
    assert "body.detail" in message
    assert "jwt" in message
    assert JWT not in message
    assert JWT[:20] not in message


def test_redaction_replaces_only_the_secret() -> None:
    assert redact_secrets({"d": f"key={AWS}!", "l": [PEM]}) == {
        "d": f"key={REDACTED}!",
        "l": [REDACTED],
    }


def test_validation_errors_never_echo_a_secret() -> None:
    ctx = CustodyContext.new_root()
    with pytest.raises(ValidationError) as caught:
        events.access(
            AGENT,
            ctx,
            token_id="t",
            tool="t",
            resource="r",
            action="a",
            data_scope=[JWT],
            outcome=AWS,
        )
    text = str(caught.value) + repr(caught.value)
    assert "outcome" in text
    assert AWS not in text
    assert JWT[:20] not in text


def test_publish_file_with_a_secret_reports_line_and_field_only() -> None:
    data = json_form(one_of_each()[3])
    data["attributes"] = {"authorization": "Bearer " + JWT}
    parsed = parse_event_lines([json.dumps(json_form(one_of_each()[0])), json.dumps(data)])
    assert [(e.line, e.field) for e in parsed.errors] == [(2, "attributes.authorization")]
    assert all(JWT not in str(e) for e in parsed.errors)
    assert [line for line, _ in parsed.events] == [1]


@pytest.mark.parametrize(("kind", "value"), SAMPLES.items())
def test_the_encoded_precheck_sees_every_kind(kind: str, value: str) -> None:
    event = stamped(one_of_each()[3])
    assert not may_hold_secret(CODEC.encode_event(event))
    leaky = event.model_copy(update={"attributes": {"x": value}})
    assert may_hold_secret(CODEC.encode_event(leaky))
    assert may_hold_secret(json.dumps({"x": value}).encode())


def test_a_batch_screen_flags_exactly_the_records_holding_markers() -> None:
    clean = [CODEC.encode_event(stamped(e, n)) for n, e in enumerate(one_of_each(), 1)]
    values = [*clean, b"key AKIA" + b"Q3EGRZ7EXAMPLEAB", *clean, b"eyJ", b"x eyJ y", b""]
    first = len(clean)
    assert records_that_may_hold_secrets(values) == {first, 2 * first + 1, 2 * first + 2}
    assert records_that_may_hold_secrets(clean) == set()
    assert records_that_may_hold_secrets([]) == set()
    # A marker split across two records is in neither.
    assert records_that_may_hold_secrets([b"xx ey", b"J yy"]) == set()


@pytest.mark.parametrize(("kind", "value"), SAMPLES.items())
def test_masking_keeps_length_and_framing_and_names_the_kind(kind: str, value: str) -> None:
    event = stamped(one_of_each()[3])
    leaky = CODEC.encode_event(event.model_copy(update={"attributes": {"x": f"a {value} b"}}))
    masked, kinds = mask_secrets(leaky)
    assert masked is not None
    assert len(masked) == len(leaky)
    assert kinds == [kind]
    assert value.encode() not in masked
    # Still the same Avro record, the secret overwritten in place.
    assert CODEC.decode_event(masked).attributes["x"] == f"a {'*' * len(value)} b"


def test_masking_leaves_clean_and_missing_values_alone() -> None:
    clean = CODEC.encode_event(stamped(one_of_each()[3]))
    assert mask_secrets(clean) == (clean, [])
    assert mask_secrets(None) == (None, [])
