"""The subprocess side of the correlator benchmark: one faust worker, instrumented.

``python -m tests.bench.correlate_worker MODE BOOTSTRAP APP_ID NAME STATS_PATH ENDS_PATH GO_PATH
METRICS_ADDRESS``

- ``floor``: a faust app with the settings the correlator's app has
  (:func:`processors.correlator.app.app_options`) and one agent that takes batches like
  the correlator (``take_events(1000, within=0.2)``), decodes every value with
  :class:`schemas.codec.AvroCodec` and counts.
- ``correlator``: the real worker (:func:`processors.correlator.app.run_worker`) under the
  app id given and its own chain-links topic, so every run starts from nothing and does the
  same work; :meth:`processors.correlator.step.Correlation.on_events` is wrapped to count
  records. Several processes given the same app id are one consumer group; ``NAME`` keeps
  their data directories apart.

Each process, once it has imported everything, says so in its stats and waits for
``GO_PATH`` to exist before it starts its app: the benchmark starts a group's workers
together, so that they join the group at once. Each writes a small JSON file
(``STATS_PATH``): the wall time of its first record, its count, the wall time at which it
processed the last published offset of each partition (``ENDS_PATH``:
``{partition: offset}``) it reached, and (correlators) the events partitions each
rebalance assigned it. A correlator serves its metrics on ``METRICS_ADDRESS``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust

from processors.correlator import app as correlator_app
from processors.correlator.step import Correlation, Record
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec

BATCH = 1000
BATCH_WITHIN = 0.2


def links_topic(app_id: str) -> str:
    """The chain-links topic of the correlator run under ``app_id``."""
    return f"{app_id}-chain-links"


def bench_settings(bootstrap: str, home: Path | None = None) -> Settings:
    """The correlator's settings in the benchmark (short session timeout and grace);
    ``home``: where the workers keep their data directories (default: the settings')."""
    settings = Settings(
        kafka_bootstrap=bootstrap,
        kafka_profile="development",
        kafka_session_timeout_ms=2000,
        grace_seconds=3,
        allowed_lateness_seconds=1,
        event_partitions=6,
    )
    return settings if home is None else settings.model_copy(update={"home": home})


class Stats:
    """Counts records and writes the timings to a JSON file, atomically: the file shows
    progress, for diagnosis, and the benchmark reads it to know when a run is done."""

    def __init__(self, path: Path, ends: dict[int, int]) -> None:
        self.path = path
        self.ends = ends
        self.reached: dict[int, float] = {}
        self.count = 0
        self.first: float | None = None
        self.ready = False
        self.assignments: list[list[int]] = []

    def built(self) -> None:
        """The app is built: the process waits for the go."""
        self.ready = True
        self.write()

    def assigned(self, partitions: Iterable[int]) -> None:
        """The group gave this worker ``partitions`` of the events topic (each rebalance
        gives a worker its whole assignment anew)."""
        self.assignments.append(sorted(partitions))
        self.write()

    def started(self) -> None:
        """A batch arrived: remember the wall time of the very first one."""
        if self.first is None:
            self.first = time.time()
            self.write()

    def add(self, positions: Iterable[tuple[int, int]]) -> None:
        """A batch of ``(partition, offset)`` was processed."""
        ends, reached = self.ends, self.reached
        now = time.time()
        for partition, offset in positions:
            self.count += 1
            if partition not in reached and offset >= ends.get(partition, offset + 1):
                reached[partition] = now
        self.write()

    def write(self) -> None:
        data = {
            "pid": os.getpid(),
            "ready": self.ready,
            "first": self.first,
            "count": self.count,
            "reached": self.reached,
            "assignments": self.assignments,
        }
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(data), encoding="utf-8")
        partial.replace(self.path)


def read_stats(path: Path) -> dict[str, Any]:
    """What a worker's :class:`Stats` last wrote to ``path`` (empty before its first write)."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data


def wait_for(go: Path) -> None:
    """Block until the benchmark says go (before any event loop runs)."""
    while not go.exists():
        time.sleep(0.01)


def run_floor(settings: Settings, app_id: str, name: str, stats: Stats, go: Path) -> None:
    """A bare faust app: the correlator's settings, one agent that decodes and counts."""
    app = faust.App(app_id, **correlator_app.app_options(settings, name))
    events = app.topic(
        topics.EVENTS,
        partitions=settings.event_partitions,
        internal=False,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    codec = AvroCodec()

    @app.agent(events)
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(BATCH, within=BATCH_WITHIN):
            stats.started()
            for event in batch:
                codec.decode_event(event.message.value)
            stats.add((e.message.partition, e.message.offset) for e in batch)

    stats.built()
    wait_for(go)
    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


def run_correlator(
    settings: Settings, app_id: str, name: str, stats: Stats, go: Path, metrics: str
) -> None:
    """The real worker, with its own app id and chain-links topic, counting records; its
    metrics on ``metrics`` (``HOST:PORT``)."""
    original = Correlation.on_events

    def on_events(self: Correlation, records: Iterable[Record], load: Any, wall_us: int) -> Any:
        batch = list(records)
        stats.started()
        result = original(self, batch, load, wall_us)
        stats.add((partition, offset) for partition, offset, _, _ in batch)
        return result

    assigned = correlator_app.Correlator.on_assigned

    async def on_assigned(
        self: correlator_app.Correlator, sender: Any, *args: Any, **kwargs: Any
    ) -> None:
        partitions = args[0] if args else kwargs.get("assigned", set())
        stats.assigned(tp.partition for tp in partitions if tp.topic == topics.EVENTS)
        await assigned(self, sender, *args, **kwargs)

    Correlation.on_events = on_events  # type: ignore[method-assign]
    correlator_app.Correlator.on_assigned = on_assigned  # type: ignore[method-assign]
    stats.built()
    wait_for(go)
    correlator_app.run_worker(
        settings,
        app_id=app_id,
        links_topic=links_topic(app_id),
        name=name,
        metrics_address=metrics,
    )


def main(argv: list[str]) -> None:
    mode, bootstrap, app_id, name, stats_path, ends_path, go_path, metrics = argv
    ends = json.loads(Path(ends_path).read_text(encoding="utf-8"))
    stats = Stats(Path(stats_path), {int(p): int(o) for p, o in ends.items()})
    settings = bench_settings(bootstrap, Path(stats_path).parent / "home")
    if mode == "floor":
        run_floor(settings, app_id, name, stats, Path(go_path))
    elif mode == "correlator":
        run_correlator(settings, app_id, name, stats, Path(go_path), metrics)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
