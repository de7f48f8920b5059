"""``custody verify``'s hashing across schema versions: a chain an older producer hashed
under the v1 schema still verifies after the contract moved to v2, without ClickHouse
(rows shaped as the ``events`` table returns them)."""

from __future__ import annotations

import io
from typing import Any

import fastavro

from processors.serving.verify import check_chain
from producers.chain import HashChain
from producers.context import CustodyContext
from schemas import catalog
from schemas.codec import event_to_avro
from schemas.models import Envelope
from tests.support import events as build
from tests.support.events import at
from tests.support.samples import BROKER, one_of_each

INSTANCE = "verify/old-producer"


class Producer:
    """Stamps events as one producer instance does, hashing each body as encoded with the
    schema version it was built with; its stored rows as ingest leaves them."""

    def __init__(self) -> None:
        self.chain = HashChain()
        self.rows: list[dict[str, Any]] = []

    def publish(self, event: Envelope, version: int) -> None:
        """Encode ``event`` with schema ``version`` of custody_event, chain and store it."""
        parsed = next(v.parsed for v in catalog.versions(catalog.EVENT) if v.version == version)
        link = self.chain.next_link()
        buffer = io.BytesIO()
        datum = event_to_avro(event, (INSTANCE, link.seq, link.prev_hash))
        fastavro.schemaless_writer(buffer, parsed, datum)
        self.chain.advance(link.seq, buffer.getvalue())
        stamped = event.model_copy(
            update={"producer_instance": INSTANCE, "seq": link.seq, "prev_hash": link.prev_hash}
        )
        data = stamped.model_dump(mode="json")
        actor, body = data.pop("actor"), data.pop("body")
        self.rows.append({**data, **{f"actor_{k}": v for k, v in actor.items()}, **body})


def _v1_types(events: list[Envelope]) -> list[Envelope]:
    """The events whose type the v1 schema has (what a v1 producer could write)."""
    v1 = next(v for v in catalog.versions(catalog.EVENT) if v.version == 1).raw["fields"]
    symbols = next(f["type"]["symbols"] for f in v1 if f["name"] == "event_type")
    return [e for e in events if e.event_type in symbols]


def test_a_chain_written_under_v1_verifies_after_the_upgrade() -> None:
    """A producer wrote under v1, was upgraded and went on under v2 (a renewal among them):
    every link is vouched for, none is a BROKEN_LINK."""
    producer = Producer()
    ctx = CustodyContext.new_root()
    for event in _v1_types(one_of_each(ctx)):
        producer.publish(event, version=1)
    producer.publish(build.issue(ctx, "tok-2", at(10), source=BROKER), version=2)
    producer.publish(build.renew(ctx, "tok-2", at(11)), version=2)
    producer.publish(build.use(ctx, "tok-2", at(12)), version=2)

    report = check_chain(INSTANCE, producer.rows)

    assert report.findings == []
    assert report.intact
    assert report.vouched == len(producer.rows) - 1


def test_an_altered_v1_written_event_still_breaks_its_link() -> None:
    """Accepting older versions' encodings does not accept an altered event."""
    producer = Producer()
    for event in _v1_types(one_of_each()):
        producer.publish(event, version=1)
    producer.rows[3]["resource"] = "crm://everything"

    report = check_chain(INSTANCE, producer.rows)

    assert [(f.kind, f.seq) for f in report.findings] == [("BROKEN_LINK", 5)]
    assert not report.intact
