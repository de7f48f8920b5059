"""``custody verify`` over stored events written by producers of two schema versions: a
chain hashed under v1 and continued under v2 is stored through the sink in the real
embedded engine (chdb), as ingest stores it, and verifies intact; an altered v1-written
event is still found. No broker: the messages are handed to the sink."""

from __future__ import annotations

import pytest

from processors.serving.reader import BackendReader
from processors.serving.verify import verify
from processors.storage.backend import ChdbBackend
from processors.storage.sink import BatchWriter, Record
from schemas import topics
from tests.unit.test_verify import INSTANCE, upgraded_chain

pytestmark = pytest.mark.integration


def _store(backend: ChdbBackend, messages: list[bytes]) -> None:
    result = BatchWriter(backend).write(
        [Record(topics.EVENTS, 0, offset, None, value) for offset, value in enumerate(messages)]
    )
    assert (result.stored, result.rejected) == (len(messages), [])


def test_a_stored_chain_written_under_v1_then_v2_verifies_intact(backend: ChdbBackend) -> None:
    events, messages = upgraded_chain()
    _store(backend, messages)

    report = verify(BackendReader(backend))

    assert report.findings == []
    assert (report.chains, report.events, report.vouched) == (1, len(events), len(events) - 1)


def test_an_altered_stored_v1_event_breaks_its_link(backend: ChdbBackend) -> None:
    events, messages = upgraded_chain()
    _store(backend, messages)
    access = events[3]
    assert access.event_type == "ACCESS"
    backend.execute(
        f"ALTER TABLE events UPDATE resource = 'crm://everything' "
        f"WHERE event_id = '{access.event_id}' SETTINGS mutations_sync = 2"
    )

    report = verify(BackendReader(backend))

    assert [(f.kind, f.producer_instance, f.seq) for f in report.findings] == [
        ("BROKEN_LINK", INSTANCE, 5)
    ]
