"""The subprocess side of the correlator benchmark: one faust worker, instrumented.

``python -m tests.bench.correlate_worker MODE BOOTSTRAP APP_ID STATS_PATH ENDS_PATH``

- ``floor``: a faust app with the very settings :func:`processors.correlator.app.build_app`
  gives its app (captured from it, so they cannot drift apart) and one agent that takes
  batches like the correlator (``take_events(1000, within=0.2)``), decodes every value with
  :class:`schemas.codec.AvroCodec` and counts.
- ``correlator``: the real worker (:func:`processors.correlator.app.run_worker`) under its own
  app id and its own chain-links topic, so every run starts from nothing and does the same
  work; :meth:`processors.correlator.step.Correlation.on_events` is wrapped to count records.

Both write a small JSON file (``STATS_PATH``): the wall time of the first record, the
count, and the wall time (and count) when the last offset of every partition, as read from
``ENDS_PATH`` (``{partition: offset}``), was processed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from unittest import mock

import faust

from processors.correlator import app as correlator_app
from processors.correlator.step import Correlation
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec

BATCH = 1000
BATCH_WITHIN = 0.2


def bench_settings(bootstrap: str) -> Settings:
    """The correlator's settings in the benchmark (short session timeout and grace)."""
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_profile="development",
        kafka_session_timeout_ms=2000,
        grace_seconds=3,
        allowed_lateness_seconds=1,
        event_partitions=6,
    )


class Stats:
    """Counts records and writes the timings to a JSON file, atomically.

    Done when every partition's last published offset was processed: a count alone would
    hang if the worker skipped a record, and the skipped ones are worth reporting.
    """

    def __init__(self, path: Path, ends: dict[int, int]) -> None:
        self.path = path
        self.ends = ends
        self.waiting = set(ends)
        self.count = 0
        self.first: float | None = None
        self.done: float | None = None
        self.count_at_done: int | None = None

    def started(self) -> None:
        """A batch arrived: remember the wall time of the very first one."""
        if self.first is None:
            self.first = time.time()
            self.write()

    def add(self, positions: Iterable[tuple[int, int]]) -> None:
        """A batch of ``(partition, offset)`` was processed (written each time: the file
        shows progress, for diagnosis)."""
        ends, waiting = self.ends, self.waiting
        for partition, offset in positions:
            self.count += 1
            if partition in waiting and offset >= ends[partition]:
                waiting.discard(partition)
        if self.done is None and not waiting:
            self.done = time.time()
            self.count_at_done = self.count
        self.write()

    def write(self) -> None:
        data = {
            "pid": os.getpid(),
            "first": self.first,
            "done": self.done,
            "count": self.count,
            "count_at_done": self.count_at_done,
        }
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(data), encoding="utf-8")
        partial.replace(self.path)


class _Captured(Exception):
    """Raised by the stand-in ``faust.App`` once it has the arguments."""


def correlator_app_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments ``build_app`` passes to ``faust.App``, captured from it."""
    captured: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> None:
        captured.update(kwargs)
        raise _Captured

    with mock.patch.object(faust, "App", record), contextlib.suppress(_Captured):
        correlator_app.build_app(settings)
    return captured


def run_floor(settings: Settings, app_id: str, stats: Stats) -> None:
    """A bare faust app: same settings, one agent that decodes and counts."""
    app = faust.App(app_id, **correlator_app_options(settings))
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

    @app.agent(events)  # type: ignore[misc]
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(BATCH, within=BATCH_WITHIN):
            stats.started()
            for event in batch:
                codec.decode_event(event.message.value)
            stats.add((e.message.partition, e.message.offset) for e in batch)

    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()


def run_correlator(settings: Settings, app_id: str, stats: Stats) -> None:
    """The real worker, with its own app id and chain-links topic, counting records."""
    original = Correlation.on_events

    def on_events(
        self: Correlation,
        records: Iterable[tuple[int, int, bytes | None, bytes | None]],
        load: Any,
        wall_us: int,
    ) -> Any:
        batch = list(records)
        stats.started()
        result = original(self, batch, load, wall_us)
        stats.add((partition, offset) for partition, offset, _, _ in batch)
        return result

    Correlation.on_events = on_events  # type: ignore[method-assign]
    correlator_app.run_worker(settings, app_id=app_id, links_topic=f"{app_id}-chain-links")


def main(argv: list[str]) -> None:
    mode, bootstrap, app_id, stats_path, ends_path = argv
    ends = json.loads(Path(ends_path).read_text(encoding="utf-8"))
    stats = Stats(Path(stats_path), {int(p): int(o) for p, o in ends.items()})
    settings = bench_settings(bootstrap)
    if mode == "floor":
        run_floor(settings, app_id, stats)
    elif mode == "correlator":
        run_correlator(settings, app_id, stats)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
