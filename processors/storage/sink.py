"""Writing one batch of Kafka records to ClickHouse: what ingest does between poll and commit.

Where the backend parses Avro (chdb), a record's body goes to ClickHouse untouched, framed
in an Avro container for the ``*_avro`` table of its topic, and the views of the
migrations flatten it. Otherwise (a server over the native protocol) records are decoded
here and inserted as rows of the target tables.

Every table is a ReplacingMergeTree keyed so that a replayed record is the same row, which
makes a write idempotent: the ingest loop can write a batch again after a crash.

What cannot be stored comes back as :class:`Rejected` (for the dead-letter topic): a bad
wire header, a schema that is not the topic's contract, a body ClickHouse cannot parse
(including, through a check in ``events_avro_mv``, bytes whose event_id is not a UUID:
ClickHouse could otherwise read noise as a well-formed prefix). A
failing insert is split in halves until the bad records are isolated, so one bad record
costs a few extra inserts and never holds back the good ones. :class:`StorageUnavailable`
(ClickHouse cannot be reached) and a :class:`StorageRejected` that is not about the data
(a missing table, a permission) propagate: the caller keeps the batch and retries it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from processors.redaction import redacted
from processors.storage import rows
from processors.storage.avro_frames import container
from processors.storage.backend import Backend, StorageRejected
from schemas import catalog, topics
from schemas.catalog import SchemaVersion
from schemas.codec import (
    SINGLE_OBJECT_HEADER_SIZE,
    AvroCodec,
    ContractViolationError,
    DecodeError,
    body_bytes,
    event_to_avro,
)
from schemas.models import UUID_PATTERN
from schemas.secrets import may_hold_secret, records_that_may_hold_secrets

TOPIC_RECORDS = {
    topics.EVENTS: catalog.EVENT,
    topics.STATE: catalog.STATE,
    topics.ALERTS: catalog.ALERT,
}
AVRO_TABLES = {
    catalog.EVENT: "events_avro",
    catalog.STATE: "state_avro",
    catalog.ALERT: "alerts_avro",
}


class Record(NamedTuple):
    """One consumed Kafka record (a tuple: ingest builds one per record)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be stored, and why (a DecodeError reason code or ``unstorable``)."""

    record: Record
    reason: str
    detail: str


@dataclass(slots=True)
class WriteResult:
    stored: int = 0
    # Every insert group holds records of one topic (one table or one Avro layout each).
    stored_by_topic: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    redacted: int = 0


class BatchWriter:
    """Stores batches of records from the contract topics into one ClickHouse database."""

    def __init__(self, backend: Backend, codec: AvroCodec | None = None) -> None:
        self.backend = backend
        self.codec = codec or AvroCodec()
        self._columns: dict[str, list[str]] = {}
        self._headers: dict[bytes, tuple[SchemaVersion, int]] = {}

    def write(self, records: Sequence[Record]) -> WriteResult:
        """Store what can be stored; report the rest. Raises StorageUnavailable."""
        result = WriteResult()
        if self.backend.parses_avro:
            self._write_avro(records, result)
        else:
            self._write_rows(records, result)
        return result

    # ---- embedded: ClickHouse parses the Avro --------------------------------------

    def _write_avro(self, records: Sequence[Record], result: WriteResult) -> None:
        values = [record.value or b"" for record in records]
        events = [i for i, record in enumerate(records) if record.topic == topics.EVENTS]
        suspects = {events[i] for i in records_that_may_hold_secrets([values[i] for i in events])}
        writers: dict[tuple[str, int], SchemaVersion] = {}
        groups: dict[tuple[str, int], list[tuple[Record, bytes]]] = {}
        for index, record in enumerate(records):
            framed = self._frame(record, values[index], index in suspects, result)
            if framed is not None:
                stored, writer, body = framed
                key = (writer.record, writer.version)
                writers[key] = writer
                groups.setdefault(key, []).append((stored, body))
        for key, items in groups.items():
            writer = writers[key]
            table = AVRO_TABLES[writer.record]
            schema_json = json.dumps(writer.raw)
            self._insert_isolating(
                items,
                lambda part, t=table, s=schema_json: self.backend.insert_avro(  # type: ignore[misc]
                    t, container(s, [body for _, body in part])
                ),
                result,
            )

    def _frame(
        self, record: Record, value: bytes, suspect: bool, result: WriteResult
    ) -> tuple[Record, SchemaVersion, bytes] | None:
        # A batch carries few distinct wire headers, so each is resolved once.
        header = value[:SINGLE_OBJECT_HEADER_SIZE] if value[:1] == b"\xc3" else value[:5]
        known = self._headers.get(header)
        if known is None:
            try:
                known = self.codec.writer_of(value)
            except DecodeError as exc:
                result.rejected.append(Rejected(record, exc.reason, str(exc)))
                return None
            self._headers[header] = known
        writer, offset = known
        if writer.record != TOPIC_RECORDS[record.topic]:
            result.rejected.append(
                Rejected(record, "contract_violation", f"a {writer.record} on {record.topic}")
            )
            return None
        if not suspect:
            return record, writer, value[offset:]
        try:
            clean = redacted(self.codec.decode_event(value))
        except DecodeError as exc:
            result.rejected.append(Rejected(record, exc.reason, str(exc)))
            return None
        result.redacted += 1
        encoded = self.codec.encode(catalog.EVENT, event_to_avro(clean))
        # Should ClickHouse refuse it after all, the dead letter carries the redacted bytes.
        return record._replace(value=encoded), catalog.latest(catalog.EVENT), body_bytes(encoded)

    # ---- server: rows decoded in Python ----------------------------------------------

    def _write_rows(self, records: Sequence[Record], result: WriteResult) -> None:
        by_table: dict[str, list[tuple[Record, rows.Row]]] = {}
        for record in records:
            decoded = self._decode(record, result)
            if decoded is not None:
                table, row = decoded
                by_table.setdefault(table, []).append((record, row))
        for table, items in by_table.items():
            columns = self._table_columns(table)
            self._insert_isolating(
                items,
                lambda part, t=table, c=columns: self.backend.insert_rows(  # type: ignore[misc]
                    t, c, [[_value(row, name) for name in c] for _, row in part]
                ),
                result,
            )

    def _decode(self, record: Record, result: WriteResult) -> tuple[str, rows.Row] | None:
        value = record.value or b""
        try:
            decoded = self.codec.decode(value)
            if decoded.record != TOPIC_RECORDS[record.topic]:
                raise ContractViolationError(f"a {decoded.record} on {record.topic}")
            if decoded.record == catalog.STATE:
                return rows.state_row(decoded.datum)
            if decoded.record == catalog.ALERT:
                return "alerts", rows.alert_row(decoded.datum)
            datum = decoded.datum
            if not UUID_PATTERN.fullmatch(datum["event_id"]):
                # The same check as events_avro_mv's on the embedded path.
                raise ContractViolationError("event_id is not a UUID")
            if may_hold_secret(value):
                datum = event_to_avro(redacted(self.codec.decode_event(value)))
                result.redacted += 1
            return "events", rows.event_row(datum)
        except DecodeError as exc:
            result.rejected.append(Rejected(record, exc.reason, str(exc)))
        except (KeyError, TypeError, ValueError) as exc:
            # Well-formed Avro that does not hold together, e.g. a TASK change without
            # its task: the schema cannot say that every kind carries its own payload.
            result.rejected.append(
                Rejected(record, "contract_violation", f"{type(exc).__name__}: {exc}")
            )
        return None

    def _table_columns(self, table: str) -> list[str]:
        """The columns of ``table`` this writer fills (those without a default expression).

        Rows are inserted by column name, so their order does not matter; there is no
        ``ORDER BY position`` because older servers (18.16) have no ``position`` column in
        ``system.columns`` (it lists a table's columns in declaration order anyway).
        """
        known = self._columns.get(table)
        if known is None:
            known = [
                str(row["name"])
                for row in self.backend.select(
                    "SELECT name FROM system.columns WHERE database = currentDatabase() "
                    "AND table = {table:String} AND default_kind = ''",
                    {"table": table},
                )
            ]
            if not known:
                raise StorageRejected(f"table {table} not found: run `custody migrate`")
            self._columns[table] = known
        return known

    # ---- shared ------------------------------------------------------------------------

    def _insert_isolating(
        self,
        items: list[tuple[Record, Any]],
        insert: Callable[[list[tuple[Record, Any]]], None],
        result: WriteResult,
    ) -> None:
        """Insert ``items``; on a rejection, split until the records at fault are alone."""
        try:
            insert(items)
        except StorageRejected as exc:
            if not exc.data_error:
                raise
            if len(items) == 1:
                result.rejected.append(Rejected(items[0][0], "unstorable", str(exc)))
                return
            middle = len(items) // 2
            self._insert_isolating(items[:middle], insert, result)
            self._insert_isolating(items[middle:], insert, result)
            return
        result.stored += len(items)
        topic = items[0][0].topic
        result.stored_by_topic[topic] = result.stored_by_topic.get(topic, 0) + len(items)


def _value(row: rows.Row, column: str) -> Any:
    if column in row:
        return row[column]
    return rows.event_defaults(column)
