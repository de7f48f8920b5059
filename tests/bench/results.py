"""The entry every benchmark returns: one line of ``bench-results.json``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict, TypeVar

from confluent_kafka import Producer

from producers.settings import Settings


@dataclass(frozen=True)
class TimedRun:
    """One timed run of a benchmark side: ``count`` items in ``seconds``, ``cpu_seconds``
    of CPU spent (by the process measured)."""

    mode: str
    count: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        """Items per second."""
        return self.count / self.seconds

    @property
    def cpu_us(self) -> float:
        """CPU time per item, in microseconds."""
        return self.cpu_seconds / self.count * 1e6


class Entry(TypedDict):
    """A measured value, and its ratio to a floor measured in the same run (if any)."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    detail: NotRequired[dict[str, Any]]


def entry(
    name: str,
    value: float,
    unit: str,
    baseline: float | None = None,
    detail: dict[str, Any] | None = None,
) -> Entry:
    """An entry with ``ratio = value / baseline`` (null without a baseline)."""
    result: Entry = {
        "name": name,
        "value": round(value, 1),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 1),
        "ratio": None if not baseline else round(value / baseline, 3),
    }
    if detail is not None:
        result["detail"] = detail
    return result


def env_count(variable: str, default: int) -> int:
    """A benchmark's size: the environment's ``variable``, else ``default``."""
    return int(os.environ.get(variable, default))


def first_run_profile(variable: str, number: int) -> Path | None:
    """Where to record round ``number``'s measured run with py-spy: the path the
    environment's ``variable`` names, in the first round only (``.svg``: a flame graph,
    any other suffix: collapsed stacks); None records nothing."""
    value = os.environ.get(variable)
    return Path(value) if value and number == 1 else None


class Paced(Protocol):
    """One timed run: its rate."""

    @property
    def rate(self) -> float: ...


class Rated(Paced, Protocol):
    """One timed run: its rate and its CPU time per item."""

    @property
    def cpu_us(self) -> float: ...


def rates_by_round(**sides: Sequence[Paced]) -> dict[str, list[int]]:
    """Each side's rate in every round, rounded, as ``<side>_rounds`` (in the order given):
    the spread behind a median, for an entry's detail."""
    return {f"{side}_rounds": [round(run.rate) for run in runs] for side, runs in sides.items()}


R = TypeVar("R", bound=Rated)


def alternate(
    name: str, rounds: int, floor: Callable[[int], R], measured: Callable[[int], R], unit: str
) -> tuple[list[R], list[R]]:
    """``rounds`` rounds of the floor then the measured run (each given the round's number,
    from 1), alternating so that a change in the machine's load hits both alike; each
    round printed with its ratio, CPU per item and the load."""
    floors: list[R] = []
    runs: list[R] = []
    for number in range(1, rounds + 1):
        floors.append(floor(number))
        runs.append(measured(number))
        print(
            f"{name}: round {number}: floor {floors[-1].rate:,.0f} {unit}, "
            f"{name} {runs[-1].rate:,.0f} {unit}, ratio {runs[-1].rate / floors[-1].rate:.3f}; "
            f"CPU per item {floors[-1].cpu_us:.1f} / {runs[-1].cpu_us:.1f} us; "
            f"load {os.getloadavg()[0]:.2f}"
        )
    return floors, runs


def announce(name: str, count: int, doing: str) -> float:
    """Say what benchmark ``name`` starts on (``doing``: "making 20,000 alerts"); the
    time it starts, for its length in seconds."""
    print(f"{name}: {doing.replace('{count}', f'{count:,}')}")
    return time.perf_counter()


def consumer_settings(bootstrap: str, **fields: Any) -> Settings:
    """Settings of a benchmark's consumers: the development profile's short session,
    joins in two seconds; ``fields`` as the benchmark needs."""
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_profile="development",
        kafka_session_timeout_ms=2000,
        **fields,
    )


def produce_all(
    settings: Settings, topic: str, pairs: Iterable[tuple[bytes, bytes]], what: str
) -> None:
    """Every (key, value) of ``pairs`` to ``topic``, waiting for room when the producer's
    buffer is full, then for every ack; ``what`` names them in the error otherwise."""
    producer = Producer(settings.kafka_producer())
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in pairs:
        while True:
            try:
                producer.produce(topic, value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{remaining} {what} unacknowledged, failures: {failures[:3]}")
