"""Each source partition's records reach the correlator once each, in offset order.

faust can hand an agent a record from beyond the records it delivered: after a restart or
a rebalance it drains records fetched at a stale position (before it seeks back to the
committed offsets, see faust-streaming issues #216 and #221), and its gap filling then
counts the records it skipped as acknowledged, so the next commit moves past evidence the
correlator never saw. A correlator that skips records raises false alerts (a hole in a
producer's chain, a token used but never issued) and misses true ones.

So the adapter asks this guard about every record before the correlator sees it:

- ``PROCESS``: the partition's next offset; the correlator takes it.
- ``SEEN``: before the next offset, so already processed (a replay after a rewind); it is
  acknowledged and dropped.
- ``AHEAD``: records before it were never delivered. It is neither processed nor
  acknowledged, and the adapter seeks the partition back to ``next_offset``.
- ``REVOKED``: the partition was taken from this worker and not given back yet (a
  rebalance is under way). Records faust had already fetched for it are neither
  processed nor acknowledged: its next owner reads them from the committed offset, and
  this worker, if that is it again, only once the partition is assigned and started.
  Processed meanwhile, they would write state after the rebalance's changelog end
  markers (and judge trees this worker has just forgotten).

A partition starts at the group's committed offset (or the log's start) on every
assignment. Nothing here talks to Kafka: offsets in, verdicts out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    """What to do with one record."""

    PROCESS = "process"
    SEEN = "seen"
    AHEAD = "ahead"
    REVOKED = "revoked"


@dataclass
class OffsetOrder:
    """The next offset to process per partition of one topic."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    unstarted: set[int] = field(default_factory=set)
    revoked: set[int] = field(default_factory=set)

    def assign(self, partitions: set[int]) -> None:
        """The partitions were (re)assigned: each waits for a :meth:`start`."""
        for partition in partitions:
            self.next_offsets.pop(partition, None)
        self.unstarted |= partitions
        self.revoked -= partitions

    def start(self, partition: int, offset: int) -> None:
        """The partition's next record is ``offset`` (an assignment, or records expired)."""
        self.next_offsets[partition] = offset
        self.unstarted.discard(partition)

    def forget(self, partition: int) -> None:
        """The partition is no longer this worker's."""
        self.next_offsets.pop(partition, None)
        self.unstarted.discard(partition)
        self.revoked.add(partition)

    def next_offset(self, partition: int) -> int | None:
        """The offset the partition's next processed record must have."""
        return self.next_offsets.get(partition)

    def admit(self, partition: int, offset: int) -> Verdict:
        """The verdict on the record at ``offset``; a processed record moves the partition on.

        A partition never assigned through the guard takes any first record; an assigned
        one must be started first; a revoked one takes none until it is assigned again.
        """
        if partition in self.unstarted:
            # A bug of the caller's, never of the data: checked even under python -O.
            raise AssertionError(f"partition {partition} was not started")
        if partition in self.revoked:
            return Verdict.REVOKED
        expected = self.next_offsets.get(partition)
        if expected is None or offset == expected:
            self.next_offsets[partition] = offset + 1
            return Verdict.PROCESS
        return Verdict.SEEN if offset < expected else Verdict.AHEAD
