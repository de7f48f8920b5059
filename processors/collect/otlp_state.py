"""The collector's trace assemblers: one per source, since a source's traces arrive over
many exports (children usually before their parents) and from the HTTP route and the
OTLP topic alike. Each assembler is a pure state machine; this holds them, serialises the
calls into each, and finds the spans whose wait for a parent is over."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from processors.collect.otlp import OtlpMapping, TraceAssembler
from processors.collect.otlp_wire import Span
from processors.collect.records import Origin, Outcome

# Exports mapped but not acked, kept for the sender's retry: an OTLP exporter sends the
# same request again after a 503, and the assembler, having seen its spans, would skip
# them all as duplicates.
_MAX_UNACKED_EXPORTS = 32


class Assemblers:
    """The :class:`TraceAssembler` of every origin seen, each behind its own lock, and the
    outcomes of the exports Kafka did not take, until their retry."""

    def __init__(self, mapping: OtlpMapping) -> None:
        self.mapping = mapping
        self._lock = threading.Lock()
        self._assemblers: dict[Origin, tuple[TraceAssembler, threading.Lock]] = {}
        self._unacked: OrderedDict[tuple[Origin, bytes], list[Outcome]] = OrderedDict()

    def _of(self, origin: Origin) -> tuple[TraceAssembler, threading.Lock]:
        with self._lock:
            if origin not in self._assemblers:
                assembler = TraceAssembler(origin, self.mapping, observe_only=origin.observe_only)
                self._assemblers[origin] = (assembler, threading.Lock())
            return self._assemblers[origin]

    def feed(self, origin: Origin, spans: Sequence[Span], now: float) -> list[Outcome]:
        """What ``origin``'s assembler makes of ``spans`` at ``now`` (the spans whose
        ancestry is still unknown are held), with any held span whose wait is over."""
        assembler, lock = self._of(origin)
        with lock:
            return [*assembler.feed(spans, now), *assembler.expire(now)]

    def mapped(
        self, origin: Origin, export: bytes, spans: Sequence[Span], now: float
    ) -> list[Outcome]:
        """:meth:`feed`, unless ``export`` (a digest of the request) was mapped before and
        not acked: then the outcomes it had, to publish again."""
        with self._lock:
            kept = self._unacked.pop((origin, export), None)
        return kept if kept is not None else self.feed(origin, spans, now)

    def not_acked(self, origin: Origin, export: bytes, outcomes: list[Outcome]) -> None:
        """Kafka did not take ``export``'s outcomes: keep them for its retry (the oldest
        kept export is dropped past a bound; its retry then finds its spans seen)."""
        with self._lock:
            self._unacked[origin, export] = outcomes
            while len(self._unacked) > _MAX_UNACKED_EXPORTS:
                self._unacked.popitem(last=False)

    def drained(self) -> list[tuple[Origin, list[Outcome]]]:
        """Every origin's held spans, mapped as if their wait were over (at a stop)."""
        with self._lock:
            held = list(self._assemblers.items())
        found = []
        for origin, (assembler, lock) in held:
            with lock:
                outcomes = assembler.drain()
            if outcomes:
                found.append((origin, outcomes))
        return found

    def expired(self, now: float) -> list[tuple[Origin, list[Outcome]]]:
        """Every origin's held spans whose wait for a parent is over, mapped."""
        with self._lock:
            held = list(self._assemblers.items())
        found = []
        for origin, (assembler, lock) in held:
            with lock:
                outcomes = assembler.expire(now)
            if outcomes:
                found.append((origin, outcomes))
        return found
