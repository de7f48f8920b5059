"""ingest's retry loop without services: a stop request ends the wait, and nothing of the
batch is committed."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from processors.batch_consumer import Batch, Stopped
from processors.ingest import Ingest
from processors.storage.backend import StorageRejected, StorageUnavailable
from processors.storage.sink import BatchWriter, Record, WriteResult
from producers.settings import Settings
from schemas import topics

# Nothing listens there: the clients are created, never used to reach a broker.
SETTINGS = Settings(kafka_bootstrap="127.0.0.1:9", ingest_retry_max_seconds=0.2)


class Unreachable(BatchWriter):
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    def write(self, records: Sequence[Record]) -> WriteResult:
        self.attempts += 1
        raise self.error


def batch() -> Batch:
    pending = Batch()
    pending.add(Record(topics.EVENTS, 0, 41, None, b"x"))
    return pending


def test_a_stop_during_an_outage_ends_the_retries_without_a_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = Unreachable(StorageUnavailable("connection refused"))
    ingest = Ingest(SETTINGS, writer)
    committed: list[dict[tuple[str, int], int]] = []
    monkeypatch.setattr(ingest, "_commit", committed.append)
    threading.Timer(1.0, ingest.stop.set).start()
    with pytest.raises(Stopped):
        ingest.flush(batch())
    assert writer.attempts >= 2
    assert committed == []
    assert ingest.stats.waiting_for_clickhouse
    assert ingest.stats.retries >= 2
    assert "connection refused" in str(ingest.stats.last_error)


def test_a_refused_statement_is_retried_but_a_data_error_is_not() -> None:
    missing_table = Unreachable(StorageRejected("Code: 60. Unknown table events"))
    ingest = Ingest(SETTINGS, missing_table)
    threading.Timer(0.8, ingest.stop.set).start()
    with pytest.raises(Stopped):
        ingest.flush(batch())
    assert missing_table.attempts >= 2

    bad_data = Unreachable(StorageRejected("Code: 117. Incorrect data"))
    with pytest.raises(StorageRejected):
        Ingest(SETTINGS, bad_data).flush(batch())
    assert bad_data.attempts == 1
