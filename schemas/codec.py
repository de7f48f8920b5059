"""Avro encode/decode of events, alerts and state changes.

Two wire formats:

- **single-object encoding** (default): ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of
  the writer schema (little-endian) + the Avro binary body, resolved against the schemas
  shipped in ``schemas/avro/``; no registry needed.
- **Confluent wire format** (when a Schema Registry is configured): ``00`` + a 4-byte
  big-endian schema id + the body.

:class:`AvroCodec` decodes both and rejects anything else with a :class:`DecodeError`
subclass naming the reason, so a consumer can route the record to the dead-letter topic.

In Avro the event ``body`` is laid out as one optional record per event type
(``body_access``, ``body_delegation``, ...), exactly one set. That layout lets ClickHouse
read every body field as a plain tuple element; the JSON and model forms keep ``body``.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import fastavro
from fastavro.schema import to_parsing_canonical_form
from pydantic import ValidationError

from schemas import catalog, topics
from schemas.catalog import SchemaVersion
from schemas.models import (
    EVENT_ADAPTER,
    Alert,
    CustodyEvent,
    Envelope,
    EventType,
    StateChange,
    describe_validation_error,
)
from schemas.registry import SchemaRegistryClient, SchemaRegistryError
from schemas.writer import UnsupportedSchema, Writer, compile_writer

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_SIZE = 10
CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_SIZE = 5

_BODY_FIELD = {event_type: f"body_{event_type.lower()}" for event_type in EventType}
_EVENT_TYPES = frozenset(str(t) for t in EventType)
_M = TypeVar("_M", Alert, StateChange)

_RECORD_TOPIC = {
    catalog.EVENT: topics.EVENTS,
    catalog.ALERT: topics.ALERTS,
    catalog.STATE: topics.STATE,
}


class DecodeError(ValueError):
    """A record that is not a valid contract message; ``reason`` is a stable short code."""

    reason = "undecodable"


class UnknownFormatError(DecodeError):
    reason = "unknown_wire_format"


class UnknownSchemaError(DecodeError):
    reason = "unknown_schema"


class MalformedAvroError(DecodeError):
    reason = "malformed_avro"


class ContractViolationError(DecodeError):
    reason = "contract_violation"


class UnstampedEventError(ValueError):
    """An event without ``producer_instance``/``seq`` cannot be encoded."""


@dataclass(frozen=True)
class Decoded:
    """A decoded message: which record it is, under which schema version, and its datum."""

    record: str
    version: int
    datum: dict[str, Any]


def body_bytes(message: bytes) -> bytes:
    """The Avro binary body of an encoded message (what the hash chain hashes)."""
    if message[:2] == SINGLE_OBJECT_MAGIC:
        return message[SINGLE_OBJECT_HEADER_SIZE:]
    if message[:1] == b"\x00":
        return message[CONFLUENT_HEADER_SIZE:]
    raise UnknownFormatError("not single-object or Confluent framing")


class AvroCodec:
    """Encodes with the newest shipped schema; decodes any shipped or registered version.

    Thread-safe: it holds only caches that are filled idempotently.
    """

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._registry = registry
        self._registered: dict[str, int] = {}
        self._writers_by_id: dict[int, SchemaVersion] = {}

    # ---- encoding --------------------------------------------------------------------

    def header(self, record: str) -> bytes:
        """The wire header for ``record`` in this codec's format."""
        schema = catalog.latest(record)
        if self._registry is None:
            return SINGLE_OBJECT_MAGIC + schema.fingerprint
        schema_id = self._registered.get(record)
        if schema_id is None:
            subject = topics.value_subject(_RECORD_TOPIC[record])
            schema_id = self._registry.register(subject, json.dumps(schema.raw))
            self._registered[record] = schema_id
        return struct.pack(">bI", CONFLUENT_MAGIC, schema_id)

    def encode(self, record: str, datum: dict[str, Any]) -> bytes:
        """Encode an Avro datum (Python form) of ``record`` with its wire header."""
        schema = catalog.latest(record)
        try:
            body = _writer(schema)(datum)
        except Exception:
            # The compiled writer knows valid data only; fastavro writes or refuses anything
            # else exactly as it always did.
            body = _fastavro_body(schema.parsed, datum)
        return self.header(record) + body

    # ---- decoding --------------------------------------------------------------------

    def _writer_for_id(self, schema_id: int) -> SchemaVersion:
        known = self._writers_by_id.get(schema_id)
        if known is not None:
            return known
        if self._registry is None:
            raise UnknownSchemaError(
                f"Confluent wire format (schema id {schema_id}) but no schema registry is "
                "configured (CUSTODY_SCHEMA_REGISTRY_URL)"
            )
        try:
            text = self._registry.schema(schema_id)
        except SchemaRegistryError as exc:
            raise UnknownSchemaError(f"schema id {schema_id}: {exc}") from None
        parsed = fastavro.parse_schema(json.loads(text))
        canonical = to_parsing_canonical_form(parsed)
        shipped = catalog.by_canonical_form().get(canonical)
        if shipped is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not a Custody contract schema")
        self._writers_by_id[schema_id] = shipped
        return shipped

    def writer_of(self, message: bytes) -> tuple[SchemaVersion, int]:
        """The schema a message was written with, and where its Avro body starts.

        Reads only the wire header, so a sink that lets ClickHouse parse the body can
        check framing and schema without decoding.
        """
        if message[:2] == SINGLE_OBJECT_MAGIC:
            if len(message) < SINGLE_OBJECT_HEADER_SIZE:
                raise MalformedAvroError("truncated single-object header")
            writer = catalog.by_fingerprint().get(message[2:SINGLE_OBJECT_HEADER_SIZE])
            if writer is None:
                fp = message[2:SINGLE_OBJECT_HEADER_SIZE].hex()
                raise UnknownSchemaError(f"unknown schema fingerprint {fp}")
            return writer, SINGLE_OBJECT_HEADER_SIZE
        if message[:1] == b"\x00" and len(message) >= CONFLUENT_HEADER_SIZE:
            (schema_id,) = struct.unpack(">I", message[1:CONFLUENT_HEADER_SIZE])
            return self._writer_for_id(schema_id), CONFLUENT_HEADER_SIZE
        raise UnknownFormatError(
            "neither Avro single-object encoding (C3 01) nor Confluent wire format (00)"
        )

    def decode(self, message: bytes) -> Decoded:
        """Decode a message in either wire format into the newest schema's shape."""
        writer, offset = self.writer_of(message)
        reader = catalog.latest(writer.record)
        stream = io.BytesIO(message)
        stream.seek(offset)
        try:
            datum = fastavro.schemaless_reader(
                stream,
                writer.parsed,
                reader.parsed if reader is not writer else None,
            )
        except Exception as exc:
            # fastavro signals bad input with many exception types (EOFError, ValueError,
            # IndexError, UnicodeDecodeError, ...); all mean the same thing here.
            raise MalformedAvroError(f"cannot read Avro body: {type(exc).__name__}") from None
        if stream.tell() != len(message):
            raise MalformedAvroError(f"{len(message) - stream.tell()} trailing bytes after body")
        if not isinstance(datum, dict):
            raise MalformedAvroError("Avro body is not a record")
        return Decoded(writer.record, writer.version, datum)

    # ---- events, alerts, state changes ----------------------------------------------

    def encode_event(self, event: Envelope) -> bytes:
        """Encode a stamped event (see :attr:`Envelope.is_stamped`)."""
        return self.encode(catalog.EVENT, event_to_avro(event))

    def decode_event(self, message: bytes) -> CustodyEvent:
        """Decode and validate an event message against the contract."""
        decoded = self.decode(message)
        if decoded.record != catalog.EVENT:
            raise ContractViolationError(f"expected an event, found a {decoded.record} record")
        return event_from_avro(decoded.datum)

    def encode_alert(self, alert: Alert) -> bytes:
        return self.encode(catalog.ALERT, alert.model_dump())

    def decode_alert(self, message: bytes) -> Alert:
        return _validated(Alert, self._expect(message, catalog.ALERT))

    def encode_state(self, change: StateChange) -> bytes:
        return self.encode(catalog.STATE, change.model_dump())

    def decode_state(self, message: bytes) -> StateChange:
        return _validated(StateChange, self._expect(message, catalog.STATE))

    def _expect(self, message: bytes, record: str) -> dict[str, Any]:
        decoded = self.decode(message)
        if decoded.record != record:
            raise ContractViolationError(f"expected a {record} record, found {decoded.record}")
        return decoded.datum


_WRITERS: dict[tuple[str, int], Writer] = {}


def _fastavro_body(parsed: Any, datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, datum)
    return buffer.getvalue()


def _writer(schema: SchemaVersion) -> Writer:
    """The compiled writer of a schema version (fastavro's for one it cannot compile)."""
    key = (schema.record, schema.version)
    writer = _WRITERS.get(key)
    if writer is None:
        try:
            writer = compile_writer(schema.parsed)
        except UnsupportedSchema:
            writer = partial(_fastavro_body, schema.parsed)
        # Compiling twice in a race is harmless: both writers are the same.
        _WRITERS[key] = writer
    return writer


def event_to_avro(
    event: Envelope, chain: tuple[str, int, str | None] | None = None
) -> dict[str, Any]:
    """The Avro datum of an event: ``body`` moved to its ``body_<type>`` field.

    ``chain`` (producer_instance, seq, prev_hash) stamps an unstamped event on the way.
    """
    if chain is None and not event.is_stamped:
        raise UnstampedEventError(
            "event has no producer_instance/seq: publish it through CustodyProducer or "
            "custody publish, which stamp the hash chain"
        )
    # Field values are already Avro-ready (str enums, aware datetimes, lists, dicts), so
    # copying the validated attributes is enough; model_dump() costs 5x more per event.
    datum = dict(event.__dict__)
    datum["actor"] = dict(event.actor.__dict__)
    datum[_BODY_FIELD[event.event_type]] = dict(datum.pop("body").__dict__)
    if chain is not None:
        datum["producer_instance"], datum["seq"], datum["prev_hash"] = chain
    return datum


def event_from_avro(datum: dict[str, Any]) -> CustodyEvent:
    """Validate an Avro event datum into its model; the body must match ``event_type``."""
    data = dict(datum)
    event_type = str(data.get("event_type"))
    bodies = {name: data.pop(name) for name in _BODY_FIELD.values() if name in data}
    present = [name for name, value in bodies.items() if value is not None]
    expected = _BODY_FIELD.get(EventType(event_type)) if event_type in _EVENT_TYPES else None
    if expected is None or present != [expected]:
        raise ContractViolationError(
            f"event_type {event_type} must carry exactly {expected}; found {present or 'none'}"
        )
    data["body"] = bodies[expected]
    try:
        return EVENT_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ContractViolationError(describe_validation_error(exc)) from None


def _validated(model: type[_M], datum: dict[str, Any]) -> _M:
    try:
        return model.model_validate(datum)
    except ValidationError as exc:
        raise ContractViolationError(describe_validation_error(exc)) from None
