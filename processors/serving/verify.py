"""``custody verify``: re-check every producer instance's hash chain from ClickHouse.

Each producer instance numbers its events ``seq`` = 1, 2, ... and stamps each with
``prev_hash``, the SHA-256 of the previous event's Avro binary body
(:mod:`producers.chain`). ClickHouse stores the fields, not the bytes, so verify encodes
every stored event again from its columns with the contract's schema (Avro binary
encoding of a datum is deterministic) and hashes it. A stored event altered after it was
published no longer hashes to what its successor names; a deleted one leaves a gap in
``seq``; an inserted one repeats a ``seq`` or breaks a link.

What it reports, per producer instance:

- ``GAP``: seq numbers missing, with the stored event ids either side;
- ``DUPLICATE_SEQ``: two stored events with one seq (a fork, or an injected event);
- ``BROKEN_LINK``: an event's ``prev_hash`` is not the hash of the stored event before it
  (that one, or the link itself, was altered);
- ``REDACTED_LINK``: the same, where the earlier event carries the ``custody.redacted``
  flag: Custody itself replaced a secret-looking value before storage, so the mismatch is
  expected and says which event was changed, and why;
- ``BAD_START``: seq 1 with a ``prev_hash``.

Schema versions: ClickHouse keeps neither the bytes nor the writer's schema, and an older
producer hashed its event's encoding under an older schema version (a v1-written event
re-encoded under v2 gains the trailing null of v2's new body union, so its hash differs).
A link is accepted when it names the hash of the earlier event's encoding under any
shipped version of ``custody_event`` that can hold that event (one with a body field for
its type: a v2-only type was never written by a v1 producer). The newest version is tried
first and the older ones only when it does not match, so a store written by current
producers costs one encoding per event, as before; a tampered event matches no version.

Limits, by construction: the newest event of each chain has no successor to vouch for it
(counted as ``unvouched``); with ``--since`` the link into the window from the event
before it is not checked.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import fastavro

from processors.serving.reader import Reader
from processors.storage.backend import Row, iso
from schemas import catalog

PAGE_ROWS = 20_000
_REDACTED_FLAG = "custody.redacted"

_ACTOR = {
    "workload_id": "actor_workload_id",
    "kind": "actor_kind",
    "instance_id": "actor_instance_id",
    "on_behalf_of": "actor_on_behalf_of",
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One break in one producer instance's chain."""

    kind: str
    producer_instance: str
    seq: int
    event_id: str | None
    detail: str


@dataclass(slots=True)
class ChainReport:
    """What verify found: every chain's length and every finding."""

    chains: int = 0
    events: int = 0
    vouched: int = 0
    unvouched: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """True when nothing but Custody's own redactions broke a link."""
        return all(finding.kind == "REDACTED_LINK" for finding in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "chains": self.chains,
            "events": self.events,
            "vouched": self.vouched,
            "unvouched": self.unvouched,
            "findings": [asdict(finding) for finding in self.findings],
        }


# ---- re-encoding a stored row ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _EventSchema:
    """One shipped version of the event schema, as verify encodes with it."""

    version: int
    parsed: Any
    # The raw field types by name.
    types: dict[str, Any]


@cache
def _event_schemas() -> tuple[_EventSchema, ...]:
    """Every shipped version of the event schema, newest first."""
    return tuple(
        _EventSchema(v.version, v.parsed, {f["name"]: f["type"] for f in v.raw["fields"]})
        for v in reversed(catalog.versions(catalog.EVENT))
    )


def _avro_value(value: Any, avro_type: Any) -> Any:
    """A JSON-read column value as the Python value fastavro encodes for ``avro_type``."""
    if isinstance(avro_type, list):
        if value is None:
            return None
        branch = next(t for t in avro_type if t != "null")
        return _avro_value(value, branch)
    if isinstance(avro_type, dict):
        kind = avro_type["type"]
        if avro_type.get("logicalType") == "timestamp-micros":
            return datetime.fromisoformat(value)
        if kind == "array":
            return [_avro_value(item, avro_type["items"]) for item in value]
        if kind == "map":
            return {key: _avro_value(item, avro_type["values"]) for key, item in value.items()}
        return _avro_value(value, kind) if kind in ("string", "int", "long") else value
    if avro_type in ("int", "long"):
        return int(value)
    return value


def _body_field(event_type: str) -> str:
    return "body_" + event_type.lower()


def event_datum(row: Row, schema: _EventSchema | None = None) -> dict[str, Any]:
    """The Avro datum of a stored ``events`` row, as the producer encoded it with
    ``schema`` (the newest shipped version by default)."""
    types = (schema or _event_schemas()[0]).types
    datum: dict[str, Any] = {}
    for name, avro_type in types.items():
        if name == "actor":
            datum["actor"] = {key: row[column] for key, column in _ACTOR.items()}
        elif name.startswith("body_"):
            datum[name] = None
        else:
            datum[name] = _avro_value(row[name], avro_type)
    body_name = _body_field(row["event_type"])
    body_type = next(t for t in types[body_name] if t != "null")
    datum[body_name] = {
        f["name"]: _avro_value(row[f["name"]], f["type"]) for f in body_type["fields"]
    }
    return datum


def _hash_under(row: Row, schema: _EventSchema) -> str:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema.parsed, event_datum(row, schema))
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def stored_body_hash(row: Row) -> str:
    """SHA-256 (hex) of the Avro binary body a stored row encodes to (newest schema)."""
    return _hash_under(row, _event_schemas()[0])


def older_body_hashes(row: Row) -> Iterator[str]:
    """SHA-256 (hex) of the row's encoding under each older shipped schema version that
    can hold its event type, newest first: what a producer of that version hashed."""
    body_name = _body_field(row["event_type"])
    for schema in _event_schemas()[1:]:
        if body_name in schema.types:
            yield _hash_under(row, schema)


# ---- checking the chains ----------------------------------------------------------------


class ChainChecker:
    """Checks one producer instance's stored events fed in seq order, in O(1) memory."""

    def __init__(self, producer: str, from_start: bool) -> None:
        """``from_start``: the chain should begin at seq 1 (no --since window)."""
        self.producer = producer
        self.from_start = from_start
        self.report = ChainReport(chains=1)
        self._previous: Row | None = None
        self._previous_hash: str | None = None

    def _find(self, kind: str, seq: int, event_id: str | None, detail: str) -> None:
        self.report.findings.append(Finding(kind, self.producer, seq, event_id, detail))

    def add(self, row: Row) -> None:
        """The next stored event (by seq, then event id)."""
        self.report.events += 1
        seq, event_id, previous = int(row["seq"]), str(row["event_id"]), self._previous
        if previous is None:
            if self.from_start and seq > 1:
                self._find("GAP", 1, None, f"seq 1-{seq - 1} missing before {event_id}")
            if seq == 1 and row["prev_hash"] is not None:
                self._find("BAD_START", seq, event_id, "seq 1 names a prev_hash")
        else:
            expected = int(previous["seq"]) + 1
            if seq < expected:
                self._find(
                    "DUPLICATE_SEQ",
                    seq,
                    event_id,
                    f"{event_id} and {previous['event_id']} both have seq {seq}",
                )
                return
            if seq > expected:
                self._find(
                    "GAP",
                    expected,
                    None,
                    f"seq {expected}-{seq - 1} missing between {previous['event_id']} "
                    f"and {event_id}",
                )
            elif row["prev_hash"] != self._previous_hash and row["prev_hash"] not in (
                older_body_hashes(previous)
            ):
                flag = (previous["attributes"] or {}).get(_REDACTED_FLAG)
                self._find(
                    "REDACTED_LINK" if flag else "BROKEN_LINK",
                    seq,
                    event_id,
                    f"prev_hash of {event_id} is not the hash of stored event "
                    f"{previous['event_id']} (seq {previous['seq']})"
                    + (
                        f": Custody redacted its {flag}"
                        if flag
                        else ": one of them was altered after publication"
                    ),
                )
            else:
                self.report.vouched += 1
        self._previous, self._previous_hash = row, stored_body_hash(row)

    def finish(self) -> ChainReport:
        """The chain's report; its newest event is unvouched (nothing names its hash)."""
        self.report.unvouched = 1 if self.report.events else 0
        return self.report


def check_chain(producer: str, rows: list[Row], from_start: bool = True) -> ChainReport:
    """Findings of one producer instance's stored events, ordered by seq."""
    checker = ChainChecker(producer, from_start)
    for row in rows:
        checker.add(row)
    return checker.finish()


@cache
def _columns() -> str:
    """The ``events`` columns a row needs to be encoded again under any shipped schema
    version: the envelope's, the actor's and every body's fields (shared fields share a
    column)."""
    names: dict[str, None] = {}
    for schema in _event_schemas():
        for name, avro_type in schema.types.items():
            if name == "actor":
                names.update(dict.fromkeys(_ACTOR.values()))
            elif name.startswith("body_"):
                body = next(t for t in avro_type if t != "null")
                names.update(dict.fromkeys(f["name"] for f in body["fields"]))
            else:
                names[name] = None
    return ", ".join(names)


def _pages(reader: Reader, since: datetime | None) -> Iterator[list[Row]]:
    """Stored events by (producer_instance, seq, event_id), a page at a time (keyset)."""
    window = (
        " AND event_time >= parseDateTime64BestEffort({since:String}, 6, 'UTC')" if since else ""
    )
    params: dict[str, Any] = {"limit": PAGE_ROWS}
    if since:
        params["since"] = iso(since)
    after = ""
    while True:
        rows = reader.select(
            # Constant fragments; the time and the keyset's values are bound parameters.
            f"SELECT {_columns()} FROM events WHERE 1{window}{after} "  # noqa: S608
            "ORDER BY producer_instance, seq, event_id LIMIT {limit:UInt32}",
            params,
        )
        if not rows:
            return
        yield rows
        if len(rows) < PAGE_ROWS:
            return
        last = rows[-1]
        after = " AND (producer_instance, seq, event_id) > ({p:String}, {s:Int64}, {e:String})"
        params.update(p=last["producer_instance"], s=int(last["seq"]), e=last["event_id"])


def verify(reader: Reader, since: datetime | None = None) -> ChainReport:
    """Check every stored chain (or the part of each from ``since``)."""
    report = ChainReport()
    checker: ChainChecker | None = None

    def close(checker: ChainChecker) -> None:
        part = checker.finish()
        report.chains += part.chains
        report.events += part.events
        report.vouched += part.vouched
        report.unvouched += part.unvouched
        report.findings.extend(part.findings)

    for page in _pages(reader, since):
        for row in page:
            if checker is None or row["producer_instance"] != checker.producer:
                if checker is not None:
                    close(checker)
                checker = ChainChecker(row["producer_instance"], from_start=since is None)
            checker.add(row)
    if checker is not None:
        close(checker)
    return report
