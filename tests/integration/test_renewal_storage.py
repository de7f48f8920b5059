"""Storing schema v2's CREDENTIAL_RENEWED (migration 0008) in chdb: a renewal's fields land
in `events` on both ingest paths, records written with schema v1 are still stored beside
it, token_issuances reports a token's expiry as renewed, and the explorer's token timeline
shows each renewal. No broker."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import fastavro
import pytest

from processors.serving.explorer import token_timeline
from processors.serving.reader import BackendReader
from processors.storage.backend import ChdbBackend
from processors.storage.sink import BatchWriter, Record
from producers.context import CustodyContext
from schemas import catalog, topics
from schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, event_to_avro
from schemas.models import Envelope
from tests.support.events import at, issue, renew
from tests.support.stored import migrated_chdb
from tests.support.trees import CONFIG, run

pytestmark = pytest.mark.integration

CODEC = AvroCodec()
TREE = CustodyContext.new_root("renewed-root")


class _RowsOnly(ChdbBackend):
    """The embedded engine fed the way a server is: decoded rows, not Avro."""

    parses_avro = False


def _v1(event: Envelope, seq: int) -> bytes:
    """``event`` as a producer that ships only schema v1 writes it."""
    v1 = catalog.versions(catalog.EVENT)[0]
    assert v1.version == 1
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, v1.parsed, event_to_avro(event, ("old/1", seq, None)))
    return SINGLE_OBJECT_MAGIC + v1.fingerprint + buffer.getvalue()


def _v2(event: Envelope, seq: int) -> bytes:
    return CODEC.encode(catalog.EVENT, event_to_avro(event, ("new/1", seq, None)))


# Issued at 0 until 900 s (written with v1); renewed at 600 until 1,800 and at 700 until
# 1,200 (which moves nothing), written with v2.
ISSUED = issue(TREE, "tok-r", at(0), expires=at(900))
RENEWED = renew(TREE, "tok-r", at(600), expires=at(1800))
SHORTER = renew(TREE, "tok-r", at(700), expires=at(1200))
VALUES = [_v1(ISSUED, 1), _v2(RENEWED, 1), _v2(SHORTER, 2)]


@pytest.fixture(params=[ChdbBackend, _RowsOnly], ids=["avro", "rows"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ChdbBackend]:
    with migrated_chdb(tmp_path / "chdb", request.param) as opened:
        yield opened


def _store(backend: ChdbBackend) -> None:
    records = [Record(topics.EVENTS, 0, i, None, v) for i, v in enumerate(VALUES)]
    result = BatchWriter(backend).write(records)
    assert (result.stored, result.rejected) == (len(VALUES), [])


def test_a_renewal_and_a_v1_record_are_stored_side_by_side(backend: ChdbBackend) -> None:
    _store(backend)
    rows = BackendReader(backend).select(
        "SELECT event_id, event_type, token_id, expires_at, renewed_by, revoked_by "
        "FROM events ORDER BY event_time"
    )
    assert [r["event_type"] for r in rows] == [
        "CREDENTIAL_ISSUED",
        "CREDENTIAL_RENEWED",
        "CREDENTIAL_RENEWED",
    ]
    issued, renewed, _ = rows
    assert issued["event_id"] == ISSUED.event_id
    assert issued["renewed_by"] is None
    assert renewed["token_id"] == "tok-r"
    assert renewed["expires_at"] == "2026-11-29T09:30:00.000000Z"
    assert renewed["renewed_by"] == "spiffe://acme/vault"
    assert renewed["revoked_by"] is None


def test_token_issuances_reports_the_expiry_as_renewed(backend: ChdbBackend) -> None:
    _store(backend)
    [token] = BackendReader(backend).select(
        "SELECT token_id, issued_event_id, issued_expires_at, expires_at, renewal_event_id "
        "FROM token_issuances"
    )
    assert token["issued_event_id"] == ISSUED.event_id
    assert token["issued_expires_at"] == "2026-11-29T09:15:00.000000Z"
    assert token["expires_at"] == "2026-11-29T09:30:00.000000Z"
    assert token["renewal_event_id"] == RENEWED.event_id


def test_a_token_never_renewed_keeps_its_issued_expiry(backend: ChdbBackend) -> None:
    record = Record(topics.EVENTS, 0, 0, None, _v2(issue(TREE, "tok-plain", at(0)), 1))
    assert BatchWriter(backend).write([record]).stored == 1
    [token] = BackendReader(backend).select(
        "SELECT expires_at, issued_expires_at, renewal_event_id FROM token_issuances"
    )
    assert token["expires_at"] == token["issued_expires_at"] == "2026-11-29T09:15:00.000000Z"
    assert token["renewal_event_id"] is None


def test_the_explorer_shows_renewals_in_a_token_timeline(backend: ChdbBackend) -> None:
    _store(backend)
    changes = run([ISSUED, RENEWED, SHORTER], CONFIG, until=at(1000)).changes
    states = [
        Record(topics.STATE, 0, i, None, CODEC.encode_state(c)) for i, c in enumerate(changes)
    ]
    assert BatchWriter(backend).write(states).stored == len(states)
    timeline = token_timeline(BackendReader(backend), "tok-r")
    assert timeline.token.credential.expires_at == "2026-11-29T09:30:00.000000Z"
    renewals = [mark for mark in timeline.timeline if mark.kind == "RENEWED"]
    assert [mark.event_id for mark in renewals] == [RENEWED.event_id, SHORTER.event_id]
    assert renewals[0].label == ("renewed by spiffe://acme/vault until 2026-11-29T09:30:00.000000Z")
