"""The contract: pydantic models and Avro schemas agree, both wire formats, typed errors."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import catalog, evolution
from schemas.codec import (
    AvroCodec,
    ContractViolationError,
    MalformedAvroError,
    UnknownFormatError,
    UnknownSchemaError,
    UnstampedEventError,
    body_bytes,
    event_to_avro,
)
from schemas.models import (
    BODY_MODELS,
    AccessOutcome,
    Actor,
    ActorKind,
    Alert,
    AlertType,
    CredentialKind,
    Decision,
    Envelope,
    EventType,
    RevocationReason,
    Severity,
    StateChange,
    TaskOutcome,
    validate_event,
)
from schemas.registry import SchemaRegistryClient
from tests.support.events import T0
from tests.support.samples import one_of_each, stamped
from tests.support.trees import mischievous, run

CODEC = AvroCodec()


def every_type() -> list[Envelope]:
    """One valid event of each type (the renewal: schema v2 only)."""
    return one_of_each()


def renewal() -> Envelope:
    """The samples' renewal."""
    [found] = [e for e in every_type() if e.event_type == EventType.CREDENTIAL_RENEWED]
    return found


@pytest.mark.parametrize("event", every_type(), ids=lambda e: str(e.event_type))
def test_each_event_type_round_trips(event: Any) -> None:
    event = stamped(event)
    assert CODEC.decode_event(CODEC.encode_event(event)) == event
    assert validate_event(json.loads(json.dumps(event.model_dump(mode="json")))) == event


def test_every_event_type_is_covered() -> None:
    assert {e.event_type for e in every_type()} == set(EventType)


def test_single_object_header_is_magic_plus_fingerprint() -> None:
    message = CODEC.encode_event(stamped(one_of_each()[0]))
    assert message[:2] == b"\xc3\x01"
    assert message[2:10] == catalog.latest(catalog.EVENT).fingerprint
    assert body_bytes(message) == message[10:]


def test_unstamped_event_cannot_be_encoded() -> None:
    with pytest.raises(UnstampedEventError):
        CODEC.encode_event(one_of_each()[0])


# ---- property: any valid model round-trips through Avro unchanged ---------------------

_text = st.text(min_size=1, max_size=12)
_opt_text = st.none() | _text
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_scopes = st.lists(_text, max_size=4)
_map = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3)


# A body field's values by its name (an id's when it is not named here), or by its type's
# own entry where that type gives the name another meaning; a field the model lets be None
# draws None too.
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "purpose": st.text(max_size=30),
    "requested_scopes": _scopes,
    "scopes": _scopes,
    "data_scope": _scopes,
    "deadline": _times,
    "expires_at": _times,
    "decision": st.sampled_from(list(Decision)),
    "credential_kind": st.sampled_from(list(CredentialKind)),
    "outcome": st.sampled_from(list(AccessOutcome)),
    "reasons": st.lists(st.text(max_size=10), max_size=3),
    "context": _map,
    "reason": st.text(max_size=10),
    "standing_access_unavailable": st.text(max_size=10),
    "detail": st.text(max_size=20),
}
_OWN_FIELDS: dict[EventType, dict[str, st.SearchStrategy[Any]]] = {
    EventType.CREDENTIAL_REVOKED: {"reason": st.sampled_from(list(RevocationReason))},
    EventType.TASK_COMPLETED: {
        "outcome": st.sampled_from(list(TaskOutcome)),
        "detail": st.text(max_size=10),
    },
}


def _fields(event_type: EventType, *drawn_apart: str) -> st.SearchStrategy[dict[str, Any]]:
    """The body fields of ``event_type`` but ``drawn_apart``."""
    own = _OWN_FIELDS.get(event_type, {})
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in BODY_MODELS[event_type].model_fields.items():
        if name not in drawn_apart:
            strategy = own[name] if name in own else _FIELDS.get(name, _text)
            fields[name] = strategy if field.is_required() else st.none() | strategy
    return st.fixed_dictionaries(fields)


def _body(event_type: EventType) -> st.SearchStrategy[dict[str, Any]]:
    if event_type is EventType.CREDENTIAL_ISSUED:
        return st.builds(
            lambda issued, ttl, fields: {
                **fields,
                "issued_at": issued,
                "expires_at": issued + timedelta(microseconds=ttl),
            },
            _times,
            st.integers(1, 10**12),
            _fields(event_type, "issued_at", "expires_at"),
        )
    return _fields(event_type)


@st.composite
def _events(draw: st.DrawFn) -> Any:
    event_type = draw(st.sampled_from(list(EventType)))
    depth = draw(st.integers(0, 2**31 - 1))
    root = draw(_text)
    data = {
        "event_id": str(draw(st.uuids())),
        "event_type": event_type,
        "event_time": draw(_times),
        "tenant": draw(_text),
        "producer": draw(_text),
        "root_task_id": root,
        "task_id": root if depth == 0 else draw(_text),
        "parent_task_id": None if depth == 0 else draw(_text),
        "depth": depth,
        "actor": {
            "workload_id": draw(_text),
            "kind": draw(st.sampled_from(list(ActorKind))),
            "instance_id": draw(_text),
            "on_behalf_of": draw(_opt_text),
        },
        "producer_instance": draw(_text),
        "seq": draw(st.integers(1, 2**63 - 1)),
        "prev_hash": draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex)),
        "attributes": draw(_map),
        "body": draw(_body(event_type)),
    }
    return validate_event(data)


@settings(max_examples=300, deadline=None)
@given(_events())
def test_any_valid_event_round_trips_through_avro(event: Any) -> None:
    assert CODEC.decode_event(CODEC.encode_event(event)) == event


@settings(max_examples=100, deadline=None)
@given(_events())
def test_json_form_round_trips(event: Any) -> None:
    text = json.dumps(event.model_dump(mode="json"))
    assert validate_event(json.loads(text)) == event


# ---- the decoder rejects what is not a contract message ------------------------------


def _valid_message() -> bytes:
    return CODEC.encode_event(stamped(one_of_each()[3]))


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", UnknownFormatError),
        (b'{"event_id": "x"}', UnknownFormatError),
        (b"\xc3\x01\x00", MalformedAvroError),
        (b"\xc3\x01" + b"\xff" * 8 + b"body", UnknownSchemaError),
        (b"\x00\x00\x00\x00\x07body", UnknownSchemaError),
    ],
    ids=["empty", "json", "short-header", "unknown-fingerprint", "confluent-no-registry"],
)
def test_decoder_rejects_foreign_bytes(message: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        CODEC.decode(message)


def test_decoder_rejects_truncated_and_extended_bodies() -> None:
    message = _valid_message()
    with pytest.raises(MalformedAvroError):
        CODEC.decode(message[:-5])
    with pytest.raises(MalformedAvroError, match="trailing"):
        CODEC.decode(message + b"\x00")


def test_decoder_rejects_body_that_does_not_match_event_type() -> None:
    datum = event_to_avro(stamped(one_of_each()[3]))
    datum["event_type"] = "DELEGATION"
    message = CODEC.encode(catalog.EVENT, datum)
    with pytest.raises(ContractViolationError, match="body_delegation"):
        CODEC.decode_event(message)


def test_decoder_reports_contract_violations_by_field() -> None:
    datum = event_to_avro(stamped(one_of_each()[0]))
    datum["event_id"] = "not-a-uuid"
    with pytest.raises(ContractViolationError, match="event_id: must be a UUID"):
        CODEC.decode_event(CODEC.encode(catalog.EVENT, datum))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_fails_with_an_untyped_error(noise: bytes) -> None:
    header = catalog.latest(catalog.EVENT).fingerprint
    for message in (noise, b"\xc3\x01" + header + noise):
        with contextlib.suppress(
            UnknownFormatError, UnknownSchemaError, MalformedAvroError, ContractViolationError
        ):
            CODEC.decode_event(message)


# ---- alerts and state changes --------------------------------------------------------


def test_alert_round_trips() -> None:
    alert = Alert(
        alert_id="a1",
        alert_type=AlertType.UNREVOKED_TOKEN,
        severity=Severity.HIGH,
        tenant="acme",
        root_task_id="r",
        token_id="tok-1",
        event_time=T0,
        detected_at=T0 + timedelta(seconds=1),
        evidence_event_ids=[str(uuid.uuid4())],
        detail="not revoked 300 s after completion",
    )
    assert CODEC.decode_alert(CODEC.encode_alert(alert)) == alert


def test_state_change_round_trips_and_needs_its_payload() -> None:
    change = StateChange.model_validate(
        {
            "kind": "DELEGATION",
            "tenant": "acme",
            "root_task_id": "r",
            "key": "child",
            "version": 3,
            "updated_at": T0,
            "source_event_ids": ["e1"],
            "delegation": {
                "delegator": "a",
                "delegatee": "b",
                "parent_task_id": "r",
                "child_task_id": "child",
                "scopes": ["x"],
                "decision_id": "d",
                "delegated_at": T0,
            },
        }
    )
    assert CODEC.decode_state(CODEC.encode_state(change)) == change
    with pytest.raises(ValueError, match="exactly the task payload"):
        StateChange.model_validate({**change.model_dump(), "kind": "TASK"})


def test_decoding_an_alert_as_an_event_is_a_contract_violation() -> None:
    [alert] = run(mischievous({"leak"})).alerts
    with pytest.raises(ContractViolationError, match="expected an event"):
        CODEC.decode_event(CODEC.encode_alert(alert))


# ---- schema evolution ----------------------------------------------------------------


def test_every_released_version_reads_the_one_before() -> None:
    for verdict in evolution.check_released_versions():
        assert verdict.compatible, verdict


def test_the_event_schema_has_a_v2_read_against_v1() -> None:
    released = {v.version for v in catalog.versions(catalog.EVENT)}
    assert {1, 2} <= released
    verdicts = {
        (v.record, v.reader_version, v.writer_version) for v in evolution.check_released_versions()
    }
    assert (catalog.EVENT, 2, 1) in verdicts
    # Alerts and state changes did not change: their one version is still v1.
    assert catalog.latest(catalog.ALERT).version == 1
    assert catalog.latest(catalog.STATE).version == 1


def _written_with(version: int, datum: dict[str, Any]) -> bytes:
    """``datum`` encoded as a producer holding only schema ``version`` would write it."""
    schema = catalog.versions(catalog.EVENT)[version - 1]
    assert schema.version == version
    return b"\xc3\x01" + schema.fingerprint + fastavro_body(schema.raw, datum)


@pytest.mark.parametrize(
    "event",
    [e for e in one_of_each() if e.event_type != EventType.CREDENTIAL_RENEWED],
    ids=lambda e: str(e.event_type),
)
def test_v1_written_events_decode_under_v2(event: Any) -> None:
    event = stamped(event)
    message = _written_with(1, event_to_avro(event))
    decoded = CODEC.decode(message)
    assert decoded.version == 1
    assert decoded.datum["body_credential_renewed"] is None
    assert CODEC.decode_event(message) == event


def test_a_v1_reader_cannot_take_a_v2_renewal() -> None:
    """A consumer that ships only v1 knows no v2 fingerprint (the codec dead-letters the
    record as ``unknown_schema``); even given the v2 schema, Avro resolution to v1 fails
    on the enum symbol v1 lacks, so a renewal is never misread as another event."""
    message = CODEC.encode_event(stamped(renewal()))
    v1, v2 = catalog.versions(catalog.EVENT)[:2]
    assert message[2:10] == v2.fingerprint != v1.fingerprint
    stream = io.BytesIO(body_bytes(message))
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(stream, v2.parsed, v1.parsed)
    assert not evolution.can_read(v1.raw, v2.raw)[0]


def test_compatibility_check_catches_a_breaking_change() -> None:
    current = catalog.latest(catalog.EVENT).raw
    broken = json.loads(json.dumps(current))
    broken["fields"].append({"name": "new_required", "type": "string"})
    ok, messages = evolution.can_read(broken, current)
    assert not ok
    assert messages
    additive = json.loads(json.dumps(current))
    additive["fields"].append({"name": "optional", "type": ["null", "string"], "default": None})
    assert evolution.can_read(additive, current)[0]


# ---- Confluent wire format -----------------------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    """The two Schema Registry endpoints the codec uses, over real HTTP."""

    schemas: ClassVar[dict[int, str]] = {}

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids = {text: i for i, text in self.schemas.items()}
        schema_id = ids.get(payload["schema"]) or len(self.schemas) + 1
        self.schemas[schema_id] = payload["schema"]
        self._answer({"id": schema_id})

    def do_GET(self) -> None:
        schema_id = int(self.path.rsplit("/", 1)[-1])
        if schema_id in self.schemas:
            self._answer({"schema": self.schemas[schema_id]})
        else:
            self.send_response(404)
            self.end_headers()

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry_url() -> Iterator[str]:
    _Registry.schemas = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_confluent_wire_format_round_trips_through_a_registry(registry_url: str) -> None:
    writer = AvroCodec(SchemaRegistryClient(registry_url))
    event = stamped(one_of_each()[1])
    message = writer.encode_event(event)
    assert message[0] == 0
    (schema_id,) = struct.unpack(">I", message[1:5])
    assert schema_id in _Registry.schemas
    # A fresh decoder learns the schema from the registry; single-object still decodes.
    reader = AvroCodec(SchemaRegistryClient(registry_url))
    assert reader.decode_event(message) == event
    assert reader.decode_event(CODEC.encode_event(event)) == event
    assert body_bytes(message) == body_bytes(CODEC.encode_event(event))


def test_confluent_message_with_a_foreign_schema_is_rejected(registry_url: str) -> None:
    client = SchemaRegistryClient(registry_url)
    foreign = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    schema_id = client.register("other-value", json.dumps(foreign))
    body = fastavro_body(foreign, {"x": 1})
    with pytest.raises(UnknownSchemaError, match="not a Custody contract schema"):
        AvroCodec(client).decode(struct.pack(">bI", 0, schema_id) + body)
    with pytest.raises(UnknownSchemaError):
        AvroCodec(client).decode(struct.pack(">bI", 0, 999) + body)


def fastavro_body(schema: dict[str, Any], datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), datum)
    return buffer.getvalue()


def test_models_name_exactly_the_avro_fields() -> None:
    """Round trips cannot see an Avro field with a default that the models lack."""
    schema = catalog.latest(catalog.EVENT).raw
    avro_fields = {f["name"]: f for f in schema["fields"]}
    envelope = set(Envelope.model_fields) - {"body"}
    assert envelope == {n for n in avro_fields if not n.startswith("body_")}
    for event_type, body_model in BODY_MODELS.items():
        union = avro_fields[f"body_{event_type.lower()}"]["type"]
        record = next(t for t in union if t != "null")
        assert set(body_model.model_fields) == {f["name"] for f in record["fields"]}
    actor = next(f for f in schema["fields"] if f["name"] == "actor")["type"]
    assert set(Actor.model_fields) == {f["name"] for f in actor["fields"]}
    alert = catalog.latest(catalog.ALERT).raw
    assert set(Alert.model_fields) == {f["name"] for f in alert["fields"]}
    state = catalog.latest(catalog.STATE).raw
    assert set(StateChange.model_fields) == {f["name"] for f in state["fields"]}
