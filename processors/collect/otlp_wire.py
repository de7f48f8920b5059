"""OTLP trace exports decoded into flat :class:`Span` records, protobuf or JSON.

The protobuf form is an ``ExportTraceServiceRequest`` (the OTLP/HTTP body) or a
``TracesData`` (what the OpenTelemetry Collector's Kafka exporter writes with the
``otlp_proto`` encoding): both are one repeated ``ResourceSpans`` as field 1, so one parser
reads either. The JSON form follows the OTLP/JSON rules: lowerCamelCase field names (the
proto names are accepted too, as the protobuf JSON mapping allows), trace and span ids as
hex strings (not base64), enums as integers, 64-bit integers as strings or numbers.

A request that cannot be read at all raises :class:`OtlpDecodeError`. A span that can be
read but names an invalid trace or span id (wrong length, all zeros) comes back with its
``problem`` set, so the receiver can reject that span alone (OTLP partial success).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

AttributeValue = str | bool | int | float | tuple[Any, ...]
"""A span attribute as Python: arrays are tuples, key-value lists JSON text, bytes hex."""
Attributes = dict[str, AttributeValue]

_NO_ATTRIBUTES: Attributes = {}
_HEX = re.compile("[0-9a-f]*")


class OtlpDecodeError(ValueError):
    """An OTLP body that is not a trace export: the whole request is refused."""


@dataclass(frozen=True, slots=True)
class Span:
    """One span of an export, flat. ``resource`` is shared by the spans of one resource:
    read it, never change it. ``problem`` says why the span cannot be used (an invalid id),
    or is None."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: Attributes
    resource: Attributes
    problem: str | None = None


def _id_problem(
    trace_id: str, span_id: str, parent: str | None, *, hex_checked: bool = True
) -> str | None:
    """Why these ids (lowercase text) are invalid, or None: the W3C trace-context rules."""
    if not hex_checked and not _HEX.fullmatch(f"{trace_id}{span_id}{parent or ''}"):
        return "an id is not a hex string"
    if len(trace_id) != 32 or trace_id.count("0") == 32:
        return "trace_id is not 16 bytes with a non-zero bit"
    if len(span_id) != 16 or span_id.count("0") == 16:
        return "span_id is not 8 bytes with a non-zero bit"
    if parent is not None and len(parent) != 16:
        return "parent_span_id is neither empty nor 8 bytes"
    return None


# ---- protobuf ---------------------------------------------------------------------------


def _finished(value: Any) -> AttributeValue | None:
    """A converted value as an attribute: a key-value list (a dict here) becomes JSON text,
    and so does any nested structure inside an array."""
    if type(value) is dict:
        return json.dumps(value, default=str)
    if type(value) is tuple:
        return tuple(
            json.dumps(item, default=str) if isinstance(item, dict | tuple) else item
            for item in value
        )
    return cast(AttributeValue | None, value)


def _any_of_proto(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which == "array_value":
        return tuple(_any_of_proto(item) for item in value.array_value.values)
    if which == "kvlist_value":
        return {kv.key: _any_of_proto(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return value.bytes_value.hex()
    return None


def _attributes_of_proto(values: Iterable[KeyValue]) -> Attributes:
    attributes: Attributes = {}
    for kv in values:
        # A non-empty string is by far the commonest attribute: read it without the
        # dispatch (an unset string reads as "", so only an empty one needs it).
        value = kv.value
        text = value.string_value
        if text:
            attributes[kv.key] = text
            continue
        converted = _finished(_any_of_proto(value))
        if converted is not None:
            attributes[kv.key] = converted
    return attributes


def span_json(span: Span) -> bytes:
    """The span as one JSON object (for a dead letter: what was rejected, whole)."""
    return json.dumps(dataclasses.asdict(span), default=str, sort_keys=True).encode()


def spans_of_protobuf(body: bytes) -> list[Span]:
    """The spans of a protobuf ``ExportTraceServiceRequest`` or ``TracesData``; raises
    :class:`OtlpDecodeError` when ``body`` is not one."""
    # Any exception: protobuf's DecodeError is the one this call raises, and its module has
    # no type hints to name it by.
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except Exception as exc:
        raise OtlpDecodeError(f"not an OTLP protobuf trace export: {exc}") from None
    spans: list[Span] = []
    append = spans.append
    for resource_spans in request.resource_spans:
        resource = _attributes_of_proto(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id = span.trace_id.hex()
                span_id = span.span_id.hex()
                parent = span.parent_span_id.hex() or None
                status = span.status
                append(
                    Span(
                        trace_id,
                        span_id,
                        parent,
                        span.name,
                        span.kind,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        status.code,
                        status.message,
                        _attributes_of_proto(span.attributes)
                        if span.attributes
                        else _NO_ATTRIBUTES,
                        resource,
                        _id_problem(trace_id, span_id, parent),
                    )
                )
    return spans


# ---- JSON -------------------------------------------------------------------------------


class _Malformed(Exception):
    """A JSON export whose structure is not OTLP's; becomes an OtlpDecodeError."""


def _field(message: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = message.get(camel)
    return message.get(snake) if value is None else value


def _list(message: Mapping[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = _field(message, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{where}.{camel} is not an array")
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an object")
    return value


def _int(value: Any, where: str) -> int:
    # Protobuf JSON writes 64-bit integers as strings; numbers are accepted as well.
    if value is None:
        return 0
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
        return int(value)
    raise _Malformed(f"{where} is not an integer")


def _hex_id(value: Any) -> str:
    # An id that is not a hex string is the span's problem (_id_problem), not the request's.
    if value is None:
        return ""
    return value.lower() if isinstance(value, str) else str(value)


def _json_string(item: Any, where: str) -> str:
    if not isinstance(item, str):
        raise _Malformed(f"{where} is not a string")
    return item


def _json_bool(item: Any, where: str) -> bool:
    if not isinstance(item, bool):
        raise _Malformed(f"{where} is not a boolean")
    return item


def _json_double(item: Any, where: str) -> float:
    # Protobuf JSON may write a double as a string ("NaN", "1.5").
    if not isinstance(item, bool) and isinstance(item, int | float | str):
        try:
            return float(item)
        except ValueError:
            pass
    raise _Malformed(f"{where} is not a number")


def _json_array(item: Any, where: str) -> tuple[Any, ...]:
    items = _list(_object(item, where), "values", "values", where)
    return tuple(_any_of_json(v, where) for v in items)


def _json_kvlist(item: Any, where: str) -> dict[str, Any]:
    return _pairs_of_json(_list(_object(item, where), "values", "values", where), where)


def _json_bytes(item: Any, where: str) -> str:
    # Only the trace and span ids are hex in OTLP/JSON; bytes values are base64.
    try:
        return base64.b64decode(_json_string(item, where), validate=True).hex()
    except (binascii.Error, ValueError):
        raise _Malformed(f"{where} is not base64") from None


_JSON_VALUES: dict[str, Callable[[Any, str], Any]] = {
    "stringValue": _json_string,
    "intValue": _int,
    "boolValue": _json_bool,
    "doubleValue": _json_double,
    "arrayValue": _json_array,
    "kvlistValue": _json_kvlist,
    "bytesValue": _json_bytes,
}
# The proto field names, which the protobuf JSON mapping lets parsers accept as well.
_JSON_VALUES.update(
    {re.sub("([A-Z])", r"_\1", name).lower(): read for name, read in list(_JSON_VALUES.items())}
)


def _any_of_json(value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is not an AnyValue object")
    for key, item in value.items():
        read = _JSON_VALUES.get(key)
        if read is not None:
            return read(item, f"{where}.{key}")
    # An empty AnyValue (or one of a kind this version does not know) is no value.
    return None


def _pairs_of_json(values: list[Any], where: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for kv in values:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise _Malformed(f"{where} holds an attribute without a string key")
        value = kv.get("value")
        if value is None:
            continue
        if type(value) is dict and len(value) == 1:
            # A string is by far the commonest attribute: read it without the dispatch.
            text = value.get("stringValue")
            if type(text) is str:
                pairs[kv["key"]] = text
                continue
        converted = _any_of_json(value, f"{where}[{kv['key']}]")
        if converted is not None:
            pairs[kv["key"]] = converted
    return pairs


def _attributes_of_json(values: list[Any], where: str) -> Attributes:
    attributes: Attributes = {}
    for key, value in _pairs_of_json(values, where).items():
        converted = _finished(value)
        if converted is not None:
            attributes[key] = converted
    return attributes


def _span_of_json(span: Any, resource: Attributes, where: str) -> Span:
    span = _object(span, where)
    trace_id = _hex_id(_field(span, "traceId", "trace_id"))
    span_id = _hex_id(_field(span, "spanId", "span_id"))
    parent = _hex_id(_field(span, "parentSpanId", "parent_span_id"))
    name = span.get("name", "")
    if not isinstance(name, str):
        raise _Malformed(f"{where}.name is not a string")
    status = _object(span.get("status"), f"{where}.status")
    message = status.get("message", "")
    if not isinstance(message, str):
        raise _Malformed(f"{where}.status.message is not a string")
    return Span(
        trace_id,
        span_id,
        parent or None,
        name,
        _int(span.get("kind"), f"{where}.kind"),
        _int(_field(span, "startTimeUnixNano", "start_time_unix_nano"), f"{where}.start"),
        _int(_field(span, "endTimeUnixNano", "end_time_unix_nano"), f"{where}.end"),
        _int(status.get("code"), f"{where}.status.code"),
        message,
        _attributes_of_json(_list(span, "attributes", "attributes", where), where),
        resource,
        _id_problem(trace_id, span_id, parent or None, hex_checked=False),
    )


def spans_of_json(body: bytes) -> list[Span]:
    """The spans of an OTLP/JSON ``ExportTraceServiceRequest`` (or ``TracesData``); raises
    :class:`OtlpDecodeError` when ``body`` is not one."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise OtlpDecodeError(f"not JSON: {exc}") from None
    try:
        request = _object(request, "request")
        spans: list[Span] = []
        for i, resource_spans in enumerate(
            _list(request, "resourceSpans", "resource_spans", "request")
        ):
            at = f"resourceSpans[{i}]"
            resource_spans = _object(resource_spans, at)
            resource_msg = _object(resource_spans.get("resource"), f"{at}.resource")
            resource = _attributes_of_json(
                _list(resource_msg, "attributes", "attributes", f"{at}.resource"),
                f"{at}.resource",
            )
            for j, scope_spans in enumerate(_list(resource_spans, "scopeSpans", "scope_spans", at)):
                scope_at = f"{at}.scopeSpans[{j}]"
                scope_spans = _object(scope_spans, scope_at)
                spans.extend(
                    _span_of_json(span, resource, f"{scope_at}.spans[{k}]")
                    for k, span in enumerate(_list(scope_spans, "spans", "spans", scope_at))
                )
        return spans
    except _Malformed as exc:
        raise OtlpDecodeError(f"not an OTLP/JSON trace export: {exc}") from None
