"""A compiled Avro binary writer for the contract's record schemas.

fastavro's generic ``schemaless_writer`` walks the schema for every datum and, for each
union, validates the value against the branches to choose one (a whole body record, for
the event's ``body_<type>`` fields): about 20 µs per event, most of the SDK's publish
time. :func:`compile_writer` turns a parsed schema into one straight-line Python function
once, which writes the same bytes several times faster.

Only the types the contract uses are compiled: records, enums, strings, ints, longs
(with ``timestamp-micros``), null, maps and arrays, and unions of null with one other
type. Any other schema raises :class:`UnsupportedSchema`, and the caller keeps fastavro.
The writer trusts its datum to be valid (the codec writes validated models): it does not
check what fastavro does not check either, and it never puts a value in an error message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

Writer = Callable[[dict[str, Any]], bytes]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# Zig-zag varints of 0..63, the lengths and counts nearly every string, map and array has.
_SMALL = tuple(bytes([2 * n]) for n in range(64))


class UnsupportedSchema(ValueError):
    """The schema uses a type this writer does not compile."""


def _varint(zigzagged: int) -> bytes:
    out = bytearray()
    while zigzagged > 0x7F:
        out.append((zigzagged & 0x7F) | 0x80)
        zigzagged >>= 7
    out.append(zigzagged)
    return bytes(out)


def _long(value: int) -> bytes:
    """A long in zig-zag varint coding; out of range raises, as fastavro does."""
    if 0 <= value < 64:
        return _SMALL[value]
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError("value out of range for an Avro long")
    return _varint((value << 1) ^ (value >> 63))


def _int(value: int) -> bytes:
    if not _INT_MIN <= value <= _INT_MAX:
        raise OverflowError("value out of range for an Avro int")
    return _long(value)


def _timestamp_micros(value: datetime | int) -> bytes:
    """A ``timestamp-micros`` long; an aware datetime counts as fastavro counts it."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp-micros needs an aware datetime")
        delta = value - _EPOCH
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _long(value)


def _bad_symbol(enum: str) -> bytes:
    # The value is not named: it may be a secret a caller put in the wrong field.
    raise ValueError(f"value is not a symbol of enum {enum}")


class _Compiler:
    """Emits the body of one function that appends a datum's encoding to ``a``."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names: Iterator[int] = itertools.count()

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._names)}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def write(self, schema: Any, value: str, indent: int) -> None:
        """Code appending the encoding of the local variable ``value`` under ``schema``."""
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        if isinstance(schema, list):
            self._union(schema, value, indent)
            return
        kind = schema if isinstance(schema, str) else schema["type"]
        logical = None if isinstance(schema, str) else schema.get("logicalType")
        if kind == "null":
            return
        if kind == "string":
            encoded, size = self.fresh("b"), self.fresh("n")
            self.emit(indent, f"{encoded} = {value}.encode()")
            self.emit(indent, f"{size} = len({encoded})")
            self.emit(indent, f"a(_SMALL[{size}] if {size} < 64 else _long({size}))")
            self.emit(indent, f"a({encoded})")
        elif kind == "long" and logical == "timestamp-micros":
            self.emit(indent, f"a(_timestamp_micros({value}))")
        elif kind in ("long", "int") and logical is None:
            # Small values, most lengths and counts, skip the call.
            writer = "_long" if kind == "long" else "_int"
            self.emit(indent, f"a(_SMALL[{value}] if 0 <= {value} < 64 else {writer}({value}))")
        elif kind == "enum":
            self._enum(schema, value, indent)
        elif kind == "record":
            self.named.setdefault(schema["name"], schema)
            self._record(schema, value, indent)
        elif kind in ("array", "map"):
            self._container(schema, value, indent)
        else:
            raise UnsupportedSchema(f"type {kind} ({logical or 'plain'}) is not compiled")

    def _enum(self, schema: dict[str, Any], value: str, indent: int) -> None:
        self.named.setdefault(schema["name"], schema)
        table = self.fresh("E")
        self.constants[table] = {s: _long(i) for i, s in enumerate(schema["symbols"])}
        symbol = self.fresh("e")
        self.emit(indent, f"{symbol} = {table}.get({value})")
        refused = f"_bad_symbol({schema['name']!r})"
        self.emit(indent, f"a({symbol} if {symbol} is not None else {refused})")

    def _union(self, schema: list[Any], value: str, indent: int) -> None:
        if len(schema) != 2 or "null" not in schema:
            raise UnsupportedSchema("only unions of null and one other type are compiled")
        other = schema[1] if schema[0] == "null" else schema[0]
        null_index, other_index = (0, 1) if schema[0] == "null" else (1, 0)
        self.emit(indent, f"if {value} is None:")
        self.emit(indent + 1, f"a({_long(null_index)!r})")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"a({_long(other_index)!r})")
        self.write(other, value, indent + 1)

    def _record(self, schema: dict[str, Any], record: str, indent: int) -> None:
        for field in schema["fields"]:
            name, kind = field["name"], field["type"]
            may_be_null = kind == "null" or (isinstance(kind, list) and "null" in kind)
            if "default" in field:
                default = self.fresh("D")
                self.constants[default] = field["default"]
                access = f"{record}.get({name!r}, {default})"
            elif may_be_null:
                access = f"{record}.get({name!r})"
            else:
                access = f"{record}[{name!r}]"
            held = self.fresh("f")
            self.emit(indent, f"{held} = {access}")
            self.write(kind, held, indent)

    def _container(self, schema: dict[str, Any], value: str, indent: int) -> None:
        held, item = self.fresh("c"), self.fresh("i")
        self.emit(indent, f"{held} = {value}")
        self.emit(indent, f"if {held}:")
        self.emit(indent + 1, f"a(_long(len({held})))")
        if schema["type"] == "array":
            self.emit(indent + 1, f"for {item} in {held}:")
            self.write(schema["items"], item, indent + 2)
        else:
            key = self.fresh("k")
            self.emit(indent + 1, f"for {key}, {item} in {held}.items():")
            self.write("string", key, indent + 2)
            self.write(schema["values"], item, indent + 2)
        self.emit(indent, "a(b'\\x00')")


def compile_writer(schema: dict[str, Any]) -> Writer:
    """A function writing a datum of the parsed record ``schema`` as Avro binary, byte for
    byte what ``fastavro.schemaless_writer`` writes; raises :class:`UnsupportedSchema`."""
    compiler = _Compiler(dict(schema.get("__named_schemas", {})))
    compiler.emit(1, "out = []")
    compiler.emit(1, "a = out.append")
    compiler.write(schema, "datum", 1)
    compiler.emit(1, "return b''.join(out)")
    source = "def write(datum):\n" + "\n".join(compiler.lines) + "\n"
    namespace: dict[str, Any] = {
        "_SMALL": _SMALL,
        "_long": _long,
        "_int": _int,
        "_timestamp_micros": _timestamp_micros,
        "_bad_symbol": _bad_symbol,
        **compiler.constants,
    }
    # Generated from the shipped schema alone, never from data: nothing untrusted is run.
    exec(compile(source, f"<avro writer {schema.get('name', '?')}>", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace["write"]
    return writer
