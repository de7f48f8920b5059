"""``custody verify``'s hashing across schema versions: a chain an older producer hashed
under the v1 schema still verifies after the contract moved to v2, without ClickHouse
(rows shaped as the ``events`` table returns them; tests/integration/test_verify_versions.py
stores the same chains in chdb)."""

from __future__ import annotations

from typing import Any

from processors.serving.verify import check_chain
from producers.context import CustodyContext
from schemas import catalog
from schemas.models import Envelope
from tests.support import events as build
from tests.support.events import at
from tests.support.samples import BROKER, Chain, one_of_each

INSTANCE = "verify/old-producer"


def v1_types(events: list[Envelope]) -> list[Envelope]:
    """The events whose type the v1 schema has (what a v1 producer could write)."""
    v1 = next(v for v in catalog.versions(catalog.EVENT) if v.version == 1).raw["fields"]
    symbols = next(f["type"]["symbols"] for f in v1 if f["name"] == "event_type")
    return [e for e in events if e.event_type in symbols]


def upgraded_chain() -> tuple[list[Envelope], list[bytes]]:
    """A producer that wrote under v1, was upgraded and went on under v2 (a renewal among
    them): its stamped events and their messages."""
    chain = Chain(INSTANCE, version=1)
    ctx = CustodyContext.new_root()
    stamped = [chain.stamp(event) for event in v1_types(one_of_each(ctx))]
    chain.version = 2
    stamped += [
        chain.stamp(build.issue(ctx, "tok-2", at(10), source=BROKER)),
        chain.stamp(build.renew(ctx, "tok-2", at(11))),
        chain.stamp(build.use(ctx, "tok-2", at(12))),
    ]
    return [model for model, _ in stamped], [message for _, message in stamped]


def _row(event: Envelope) -> dict[str, Any]:
    data = event.model_dump(mode="json")
    actor, body = data.pop("actor"), data.pop("body")
    return {**data, **{f"actor_{key}": value for key, value in actor.items()}, **body}


def test_a_chain_written_under_v1_verifies_after_the_upgrade() -> None:
    """Every link is vouched for, none is a BROKEN_LINK."""
    events, _ = upgraded_chain()

    report = check_chain(INSTANCE, [_row(event) for event in events])

    assert report.findings == []
    assert report.intact
    assert report.vouched == len(events) - 1


def test_an_altered_v1_written_event_still_breaks_its_link() -> None:
    """Accepting older versions' encodings does not accept an altered event."""
    events, _ = upgraded_chain()
    rows = [_row(event) for event in events]
    assert rows[3]["event_type"] == "ACCESS"
    rows[3]["resource"] = "crm://everything"

    report = check_chain(INSTANCE, rows)

    assert [(f.kind, f.seq) for f in report.findings] == [("BROKEN_LINK", 5)]
    assert not report.intact
