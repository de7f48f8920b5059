"""``custody verify`` throughput on chdb: events checked per second.

A simulation of ``CUSTODY_BENCH_VERIFY_EVENTS`` events (default 100,000) is encoded with a
real hash chain per producer instance (four instances, as the SDK stamps it) and stored
through the sink, as ingest stores it. Then, alternating for :data:`ROUNDS` rounds:

- the floor: the same keyset-paged SELECT verify runs, rows read and nothing checked;
- verify: the same pages, every event re-encoded to Avro and hashed, every link checked.

The ratio shows what re-encoding and hashing cost on top of reading.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from processors.serving import verify as verify_module
from processors.serving.reader import BackendReader
from processors.storage.backend import ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ChdbTarget
from producers.chain import HashChain
from producers.simulator import SimulationConfig, simulate
from schemas import catalog, topics
from schemas.codec import AvroCodec, body_bytes, event_to_avro
from tests.bench.results import Entry, entry, env_count

ROUNDS = 3
INSTANCES = 4


def _fill(backend: ChdbBackend, events: int) -> int:
    codec = AvroCodec()
    stream = list(simulate(SimulationConfig(roots=max(1, events // 45), seed=17)))[:events]
    chains = [HashChain() for _ in range(INSTANCES)]
    values = []
    for index, event in enumerate(stream):
        number = index % INSTANCES
        link = chains[number].next_link()
        message = codec.encode(
            catalog.EVENT,
            event_to_avro(event, (f"bench/verify/{number}", link.seq, link.prev_hash)),
        )
        chains[number].advance(link.seq, body_bytes(message))
        values.append(message)
    writer = BatchWriter(backend)
    for start in range(0, len(values), 20_000):
        chunk = values[start : start + 20_000]
        records = [Record(topics.EVENTS, 0, start + i, None, v) for i, v in enumerate(chunk)]
        result = writer.write(records)
        assert result.stored == len(records)
        assert not result.rejected
    return len(values)


def _floor(reader: BackendReader) -> int:
    return sum(len(page) for page in verify_module._pages(reader, None))


def run() -> list[Entry]:
    events = env_count("CUSTODY_BENCH_VERIFY_EVENTS", 100_000)
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as home:
        target = ChdbTarget(Path(home) / "chdb")
        backend = ChdbBackend(target)
        try:
            migrate(target, 400, backend)
            stored = _fill(backend, events)
            reader = BackendReader(backend)
            floors, rates = [], []
            for _ in range(ROUNDS):
                started = time.perf_counter()
                assert _floor(reader) == stored
                floors.append(stored / (time.perf_counter() - started))
                started = time.perf_counter()
                report = verify_module.verify(reader)
                rates.append(stored / (time.perf_counter() - started))
                assert report.intact, report.findings[:3]
                assert report.vouched == stored - INSTANCES, report.findings[:3]
        finally:
            backend.close()
    return [
        entry(
            "verify (re-encode + hash + link check)",
            statistics.median(rates),
            "events/s",
            statistics.median(floors),
            detail={"events": stored, "chains": INSTANCES, "rounds": ROUNDS},
        )
    ]
