"""The publish path's faster pieces write and decide exactly what the slower ones did:

- the compiled Avro writer (schemas/writer.py) writes fastavro's bytes for any datum of
  the shipped schemas, and the codec refuses what fastavro refuses, with fastavro's error;
- the GIL-holding secret pre-check (``may_hold_secret_inline``) gives Hyperscan's verdict;
- validation dispatched by hand reports the errors pydantic's union reports, and the
  producer refuses an invalid or secret-holding event before anything is sent.
"""

from __future__ import annotations

import io
import string
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas import catalog
from schemas.codec import AvroCodec, event_to_avro
from schemas.models import EVENT_ADAPTER, field_errors, validate_event
from schemas.secrets import (
    _PATTERNS,
    SecretValueError,
    kind_of_secret,
    may_hold_secret,
    may_hold_secret_inline,
)
from schemas.writer import UnsupportedSchema, compile_writer
from tests.support.samples import json_form, many_trees, one_of_each, stamped

CODEC = AvroCodec()


def fastavro_bytes(parsed: Any, datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, datum)
    return buffer.getvalue()


# ---- the compiled writer ----------------------------------------------------------------

_texts = st.text(max_size=90)  # past 63 bytes a length takes two varint bytes
_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


# Datums of the schema types that carry no further schema.
_PLAIN: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "string": _texts,
    "long": st.integers(-(2**63), 2**63 - 1),
    "int": st.integers(-(2**31), 2**31 - 1),
}


def datums(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any datum of a parsed Avro schema, as the Python form the codec takes."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return st.one_of(*(datums(branch, named) for branch in schema))
    kind = schema if isinstance(schema, str) else schema["type"]
    logical = None if isinstance(schema, str) else schema.get("logicalType")
    if logical == "timestamp-micros":
        return _times | st.integers(-(2**62), 2**62)
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind == "enum":
        named[schema["name"]] = schema
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(datums(schema["items"], named), max_size=70)
    if kind == "map":
        return st.dictionaries(_texts, datums(schema["values"], named), max_size=70)
    assert kind == "record", kind
    named[schema["name"]] = schema
    return st.fixed_dictionaries(
        {field["name"]: datums(field["type"], named) for field in schema["fields"]}
    )


@pytest.mark.parametrize("record", catalog.RECORDS)
def test_the_compiled_writer_writes_what_fastavro_writes(record: str) -> None:
    parsed = catalog.latest(record).parsed
    write = compile_writer(parsed)

    @settings(max_examples=300, deadline=None)
    @given(datums(parsed, dict(parsed["__named_schemas"])))
    def same_bytes(datum: dict[str, Any]) -> None:
        assert write(datum) == fastavro_bytes(parsed, datum)

    same_bytes()


def test_realistic_events_encode_to_fastavro_bytes_and_back() -> None:
    parsed = catalog.latest(catalog.EVENT).parsed
    for event in [*one_of_each(), *many_trees(30)]:
        datum = event_to_avro(stamped(event, seq=2**63 - 1, instance="é/pod-ü"))
        message = CODEC.encode(catalog.EVENT, datum)
        assert message[10:] == fastavro_bytes(parsed, datum)
        assert CODEC.decode_event(message) == validate_event(
            {**event.model_dump(), "producer_instance": "é/pod-ü", "seq": 2**63 - 1}
        )


def test_the_codec_refuses_what_fastavro_refuses_with_its_error() -> None:
    parsed = catalog.latest(catalog.EVENT).parsed
    good = event_to_avro(stamped(one_of_each()[3]))
    broken = [
        {**good, "tenant": 7},
        {**good, "event_type": "NOT_A_TYPE"},
        {**good, "seq": 2**63},
        {**good, "depth": 2**31},
        {**good, "event_time": datetime(2026, 1, 1)},  # naive: fastavro reads it as local
        {**good, "producer": "\udcff"},  # a lone surrogate is not UTF-8
        {**good, "attributes": {1: "x"}},
        {k: v for k, v in good.items() if k != "task_id"},
    ]
    for datum in broken:
        try:
            expected: bytes | Exception = fastavro_bytes(parsed, datum)
        except Exception as error:
            expected = error
        if isinstance(expected, bytes):
            assert CODEC.encode(catalog.EVENT, datum)[10:] == expected
            continue
        with pytest.raises(type(expected)) as caught:
            CODEC.encode(catalog.EVENT, datum)
        assert str(caught.value) == str(expected)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "double"}]},
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": ["int", "string"]}]},
        {"type": "record", "name": "R", "fields": [{"name": "x", "type": "bytes"}]},
    ],
)
def test_a_type_the_writer_does_not_compile_is_refused(schema: dict[str, Any]) -> None:
    parsed: Any = fastavro.parse_schema(schema)
    with pytest.raises(UnsupportedSchema):
        compile_writer(parsed)


# ---- the secret pre-check ---------------------------------------------------------------

_SECRETS = [
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
    "-----BEGIN RSA PRIVATE KEY-----",
    "AKIA" + "Q3EGRZ7EXAMPLEAB",
    "ASIA" + "Q3EGRZ7EXAMPLEAB",
    "AIza" + "x" * 35,
    "ghp_" + "a" * 36,
    "github_pat_" + "a" * 40,
    "xoxb-" + "1" * 12,
    "AccountKey=" + "a" * 88,
]
_NEAR_MISSES = ["ey", "eyj", "----BEGIN", "AKI", "AIz", "gh_", "github_pa", "xox-", "Accountkey="]


@pytest.mark.parametrize("text", _SECRETS + _NEAR_MISSES + ["token_id", "api-key rotation"])
def test_the_inline_pre_check_gives_hyperscans_verdict(text: str) -> None:
    leaky = one_of_each()[3].model_copy(update={"attributes": {"note": f"see {text} here"}})
    for data in (text.encode(), CODEC.encode_event(stamped(leaky))):
        assert may_hold_secret_inline(data) == may_hold_secret(data)
    assert may_hold_secret_inline(text.encode()) == (text in _SECRETS)


def test_the_samples_cover_every_kind_of_secret() -> None:
    assert {kind_of_secret(secret) for secret in _SECRETS} == set(_PATTERNS)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from([s[:n] for s in _SECRETS for n in (2, 3, 4, 5, 11, len(s))])
        | st.text(alphabet=string.printable, max_size=20),
        max_size=8,
    ),
    st.binary(max_size=40),
)
def test_the_inline_pre_check_agrees_on_any_bytes(pieces: list[str], noise: bytes) -> None:
    data = noise.join(piece.encode() for piece in pieces)
    assert may_hold_secret_inline(data) == may_hold_secret(data)


# ---- validation and the producer's refusals ----------------------------------------------


def _invalid_events() -> list[dict[str, Any]]:
    access = json_form(one_of_each()[3])
    body = dict(access["body"])
    cases: list[dict[str, Any]] = [
        {**access, "event_id": "not-a-uuid"},
        {**access, "event_time": "2026-11-29T09:00:00"},
        {**access, "depth": -1},
        {**access, "depth": 1},
        {**access, "seq": 0, "producer_instance": "x"},
        {**access, "seq": 3},
        {**access, "prev_hash": "ABC", "seq": 2, "producer_instance": "x"},
        {**access, "tenant": ""},
        {**access, "surplus": 1},
        {**access, "attributes": {"k": "v" * 9000}},
        {**access, "body": {**body, "outcome": "MAYBE"}},
        {**access, "body": {k: v for k, v in body.items() if k != "tool"}},
        {**access, "body": {**body, "data_scope": [""]}},
        {**access, "event_type": "NOT_A_TYPE"},
        {k: v for k, v in access.items() if k != "event_type"},
    ]
    issued = json_form(one_of_each()[2])
    cases.append({**issued, "body": {**issued["body"], "expires_at": issued["body"]["issued_at"]}})
    return cases


@pytest.mark.parametrize("data", _invalid_events())
def test_dispatch_by_hand_reports_what_the_union_reports(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as reference:
        EVENT_ADAPTER.validate_python(data)
    with pytest.raises(ValidationError) as dispatched:
        validate_event(data)
    assert field_errors(dispatched.value) == field_errors(reference.value)


def _described(error: ValidationError) -> list[tuple[str, tuple[str | int, ...], str]]:
    return [(e["type"], e["loc"], e["msg"]) for e in error.errors()]


@pytest.fixture(scope="module")
def offline_producer() -> Any:
    """A producer with nowhere to send: a refused event never reaches its buffer."""
    dead = Settings(kafka_bootstrap="127.0.0.1:1", producer_delivery_timeout_ms=1000)
    producer = CustodyProducer(dead, create_topics=False)
    yield producer
    assert producer.published == 0
    producer.close(timeout=0)


@pytest.mark.parametrize("data", _invalid_events())
def test_the_producer_refuses_an_invalid_event_as_validation_does(
    offline_producer: CustodyProducer, data: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as reference:
        validate_event(data)
    with pytest.raises(ValidationError) as refused:
        offline_producer.publish(data)
    assert _described(refused.value) == _described(reference.value)


def test_the_producer_refuses_a_secret_anywhere_in_an_event(
    offline_producer: CustodyProducer,
) -> None:
    secret = "ghp_" + "a" * 36
    base = json_form(one_of_each()[2])
    body = dict(base["body"])
    leaks = {
        "attributes.note": {**base, "attributes": {"note": secret}},
        "attributes.[secret key] (key)": {**base, "attributes": {secret: "x"}},
        # Named as in the Avro datum the screen reads.
        "body_credential_issued.token_subject": {
            **base,
            "body": {**body, "token_subject": secret},
        },
        "body_credential_issued.scopes[0]": {**base, "body": {**body, "scopes": [secret]}},
        "actor.instance_id": {**base, "actor": {**base["actor"], "instance_id": secret}},
    }
    for field, data in leaks.items():
        with pytest.raises(SecretValueError) as caught:
            offline_producer.publish(data)
        assert [f.field for f in caught.value.findings] == [field]
        assert secret not in str(caught.value)


def test_timestamps_before_1970_encode_as_fastavro_does() -> None:
    parsed = catalog.latest(catalog.EVENT).parsed
    event = one_of_each()[0]
    old = event.model_copy(update={"event_time": datetime(1969, 7, 20, 20, 17, tzinfo=UTC)})
    datum = event_to_avro(stamped(old))
    assert CODEC.encode(catalog.EVENT, datum)[10:] == fastavro_bytes(parsed, datum)
    late = old.model_copy(update={"event_time": old.event_time + timedelta(microseconds=1)})
    assert CODEC.decode_event(CODEC.encode_event(stamped(late))).event_time == late.event_time
