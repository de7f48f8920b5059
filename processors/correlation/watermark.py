"""Per-partition event-time watermarks.

The watermark is the highest event time seen minus the allowed lateness. When a
partition goes idle it would otherwise freeze, leaving deadlines (a token never revoked
after its task ended) undecided forever; with idle advancement it moves on with the wall
clock from the moment the last event arrived.

Two guards, both for evidence that arrives with old or wrong clocks:
- the idle advance ends when an event arrives, so a backfill (events hours old) is judged
  by its own times rather than by the wall-clock time the partition idled up to;
- an event time ahead of the wall clock counts only up to the wall clock plus the
  allowed lateness, so one producer with a clock in the future cannot make every other
  tree's deadlines pass at once.

:func:`decide_due` is the timer's one loop over what the watermarks have passed: the
deadlines of trees and of chains alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

S = TypeVar("S")
Out = TypeVar("Out")


class Watermark:
    """The watermark of one partition, in microseconds since the epoch."""

    def __init__(self, lateness_us: int, idle_advance: bool) -> None:
        self.lateness_us = lateness_us
        self.idle_advance = idle_advance
        self.max_event_us: int | None = None
        self.last_arrival_wall_us = 0

    def observe(self, event_us: int, wall_us: int) -> None:
        """An event with time ``event_us`` arrived at wall-clock time ``wall_us``."""
        event_us = min(event_us, wall_us + self.lateness_us)
        if self.max_event_us is None or event_us > self.max_event_us:
            self.max_event_us = event_us
        self.last_arrival_wall_us = wall_us

    def arrived(self, wall_us: int) -> None:
        """The events last observed were processed by ``wall_us``: the partition idles
        from then, not from when they were read."""
        self.last_arrival_wall_us = max(self.last_arrival_wall_us, wall_us)

    def current(self, wall_us: int) -> int | None:
        """The watermark now; None before the first event."""
        if self.max_event_us is None:
            return None
        idle = max(0, wall_us - self.last_arrival_wall_us) if self.idle_advance else 0
        return self.max_event_us - self.lateness_us + idle


def decide_due(
    partitions: Iterable[int],
    watermark: Callable[[int], int | None],
    deadlines: dict[int, dict[str, int]],
    states: dict[str, S],
    decide: Callable[[S, int], tuple[S, Out]],
    emit: Callable[[Out], None],
    held: Callable[[str], bool],
) -> dict[str, tuple[int, S]]:
    """Decide the states (trees, chains) whose next deadline their partition's watermark
    has passed, unless ``held``, and ``emit`` their outputs; each decided state with its
    partition. ``watermark`` is None for a partition not known yet; ``deadlines`` holds
    each partition's next deadline by key."""
    dirty: dict[str, tuple[int, S]] = {}
    for partition in partitions:
        mark = watermark(partition)
        if mark is None:
            continue
        for key, deadline in list(deadlines.get(partition, {}).items()):
            if deadline > mark or key not in states or held(key):
                continue
            state, out = decide(states[key], mark)
            emit(out)
            dirty[key] = (partition, state)
    return dirty
