"""Bounded state: when the correlator retires a custody tree or a producer instance's
chain, what it remembers of the retired ones, and what a tree forgets while it lives.

**The rule.** A tree is retired once the watermark of its partition has passed its last
event time and every deadline it ever had, each by the tree retention
(``CUSTODY_TREE_RETENTION_SECONDS``), and no deadline is pending (:func:`tree_retire_at`).
A producer instance's chain is retired once the chain watermark has passed its newest link
and every deadline it had by the chain retention (``CUSTODY_CHAIN_RETENTION_SECONDS``):
silence, in event time (:func:`chain_retire_at`). Watermarks are event times, so the same
events retire the same trees whatever the wall clock (an idle partition's watermark moves
with it, as for deadlines).

**What is remembered of a retired key.** An event that arrives for a retired tree would
otherwise start a new, empty tree and be judged against it: a task whose parent is gone
(``BROKEN_CHAIN``), a token whose task and decision are gone (``ORPHANED_TOKEN``), an
access whose decision is gone (``UNAUTHORIZED_ACCESS``). The worker keeps a 64-bit digest
of each retired key per partition (:class:`RetiredKeys`), in buckets of one retention
period by the watermark at which it was retired, for :data:`RETIRED_PERIODS` periods
(8 bytes a key; persisted in the worker's table ``custody-retired``, so a restart keeps
them). An event of a remembered tree is counted as late with reason :data:`RETIRED_TREE`
and not judged; so is an event of a tree not remembered whose event time is more than the
retention behind its partition's watermark (:data:`BEYOND_RETENTION`): its tree, if it had
one, may have been retired longer ago than the digests reach. A link of a retired chain is
late too (:data:`RETIRED_CHAIN`): checked against an empty chain, its seq would be a gap
after every seq before it. Ingest stores all of them as always.

The trade-off: evidence that arrives more than the retention late is stored but not
judged; a root task that resumes after a silence longer than the retention is not judged
again while its digest is kept, and after that starts as a new tree (whose missing pieces
may then be reported). A new key shares a digest with a remembered one with probability
about ``remembered / 2**64`` (under one in a billion for ten billion remembered keys); it
would be taken for retired and not judged.

**Per-tree sets.** ``seen_event_ids`` holds the ids of the accesses the tree still keeps.
Every other kind of event is idempotent by construction (each handler keeps the earliest
record per id and returns for one it already has), so its duplicate changes nothing
without an id to recognise it; an access is not (a second copy would be a second access).
An access is forgotten once the watermark is a grace period past it (its own deadline is
decided, and a revocation or issuance that could still join it would be later than the
allowed lateness: :func:`forget_settled`), and with it its id. ``fired_alert_ids`` keeps
every alert the tree raised for its whole life: it grows with what went wrong in the tree
(one id per alert), not with its traffic, and a retired tree takes it along. Keeping them
is what makes a replay harmless: a duplicate of an access that arrives after the access
was forgotten (more than the grace period behind the watermark) is judged again against
what the tree still holds, and any alert it raises has the id of the first one (alert ids
are deterministic), which the tree remembers, so no alert is raised twice, by a replay or
by retirement (a retired tree is never judged again while its digest is kept).
"""

from __future__ import annotations

import base64
import heapq
import json
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import TYPE_CHECKING

from processors.correlation.state_format import check_format, stamp
from processors.correlation.tree import AccessRec, TreeState

if TYPE_CHECKING:
    from processors.correlation.chains import ChainState

# Why an event or link was not judged (the reason label of the late-events count).
RETIRED_TREE = "retired_tree"
BEYOND_RETENTION = "beyond_retention"
RETIRED_CHAIN = "retired_chain"
# How many retention periods a retired key is remembered.
RETIRED_PERIODS = 7
# Digests per stored chunk of retired keys: each stored record stays small (32 KiB), and
# only the chunk being filled is rewritten as keys retire.
CHUNK = 4096


# ---- the rule ---------------------------------------------------------------------------


def tree_retire_at(state: TreeState, retention_us: int) -> int:
    """The watermark from which ``state``'s tree may be retired: its last event time or
    its latest deadline, whichever is later, plus the retention."""
    return max(state.last_event_us, state.horizon_us) + retention_us


def tree_retirable(state: TreeState, watermark_us: int, retention_us: int) -> bool:
    """Whether the tree is retired at ``watermark_us``: every deadline decided, and the
    watermark past its last event and deadlines by the retention."""
    return not state.deadlines and watermark_us >= tree_retire_at(state, retention_us)


def chain_retire_at(state: ChainState, retention_us: int) -> int:
    """The chain watermark from which a silent chain may be retired: its newest link's
    event time or its latest deadline, whichever is later, plus the retention."""
    return max(state.last_us, state.horizon_us) + retention_us


# ---- what a living tree forgets ---------------------------------------------------------


def forget_settled(state: TreeState, before_us: int) -> None:
    """Drop accesses at or before ``before_us`` (the watermark less the grace period),
    and their ids (see the module docstring).

    Their own deadline (``UNAUTHORIZED_ACCESS``) is decided, and a revocation or issuance
    that could still join them would be later than the allowed lateness. A long batch job
    makes thousands of accesses; kept, they would outgrow a changelog record.
    """
    for token_id, accesses in list(state.accesses.items()):
        kept = [access for access in accesses if access.us > before_us]
        if len(kept) == len(accesses):
            continue
        for access in accesses:
            if access.us <= before_us:
                _forget_access(state, access)
        if kept:
            state.accesses[token_id] = kept
        else:
            del state.accesses[token_id]


def _forget_access(state: TreeState, access: AccessRec) -> None:
    state.seen_event_ids.discard(access.event_id)


# ---- keys by the watermark they may be retired at ------------------------------------


class RetireQueue:
    """The live keys of one partition by the watermark from which each may be retired.

    One heap entry per key: a key whose time moved on (its tree got a later event) is
    pushed again, at its new time, when its old time comes up.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._at: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def set(self, key: str, at_us: int) -> None:
        """``key`` may be retired from ``at_us`` on."""
        old = self._at.get(key)
        if old is None or at_us < old:
            heapq.heappush(self._heap, (at_us, key))
        self._at[key] = at_us

    def discard(self, key: str) -> None:
        self._at.pop(key, None)

    def due(self, watermark_us: int) -> list[str]:
        """The keys whose time ``watermark_us`` has reached, taken out of the queue."""
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= watermark_us:
            at_us, key = heapq.heappop(heap)
            current = self._at.get(key)
            if current is None or current < at_us:
                continue  # gone, or an older entry already came up at its earlier time
            if current > at_us:
                heapq.heappush(heap, (current, key))
                continue
            del self._at[key]
            due.append(key)
        return due


# ---- what is remembered of retired keys -------------------------------------------------


def digest(key: str) -> int:
    """The 64-bit digest a retired key is remembered by."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class _Bucket:
    sealed: array[int] = field(default_factory=lambda: array("Q"))  # sorted
    fresh: set[int] = field(default_factory=set)  # the chunk being filled
    chunk: int = 0  # the index of that chunk


class RetiredKeys:
    """Digests of the keys retired in one partition, by the watermark they were retired
    at: a bucket per ``period_us``, kept for ``periods`` periods after its own.

    Stored as chunks of at most :data:`CHUNK` digests; :meth:`changes` names the chunks to
    write or delete since it was last called.
    """

    def __init__(self, period_us: int, periods: int = RETIRED_PERIODS) -> None:
        self.period_us = max(1, period_us)
        self.periods = periods
        self._buckets: dict[int, _Bucket] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._sealed: dict[tuple[int, int], list[int]] = {}
        self._dropped: dict[int, int] = {}

    def __len__(self) -> int:
        return sum(len(b.sealed) + len(b.fresh) for b in self._buckets.values())

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self._buckets:
            return False
        value = digest(key)
        for bucket in self._buckets.values():
            if value in bucket.fresh:
                return True
            sealed = bucket.sealed
            at = bisect_left(sealed, value)
            if at < len(sealed) and sealed[at] == value:
                return True
        return False

    def add(self, key: str, watermark_us: int) -> None:
        """Remember ``key``, retired at ``watermark_us``."""
        index = watermark_us // self.period_us
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        bucket.fresh.add(digest(key))
        self._dirty.add((index, bucket.chunk))
        if len(bucket.fresh) >= CHUNK:
            chunk = sorted(bucket.fresh)
            self._sealed[(index, bucket.chunk)] = chunk
            bucket.sealed = array("Q", heapq.merge(bucket.sealed, chunk))
            bucket.fresh = set()
            bucket.chunk += 1

    def expire(self, watermark_us: int) -> None:
        """Forget the buckets more than ``periods`` periods behind ``watermark_us``."""
        oldest = watermark_us // self.period_us - self.periods
        for index in [i for i in self._buckets if i < oldest]:
            bucket = self._buckets.pop(index)
            self._dropped[index] = bucket.chunk

    def changes(self) -> list[tuple[int, int, list[int] | None]]:
        """``(bucket, chunk, digests)`` of each chunk to store since the last call;
        digests None: delete the chunk."""
        out: list[tuple[int, int, list[int] | None]] = []
        for index, last in self._dropped.items():
            out += [(index, chunk, None) for chunk in range(last + 1)]
        for index, chunk in sorted(self._dirty):
            if index in self._dropped:
                continue
            sealed = self._sealed.get((index, chunk))
            if sealed is not None:
                out.append((index, chunk, sealed))
            elif index in self._buckets and self._buckets[index].chunk == chunk:
                out.append((index, chunk, sorted(self._buckets[index].fresh)))
        self._dirty.clear()
        self._sealed.clear()
        self._dropped.clear()
        return out

    def restore(self, chunks: list[tuple[int, int, list[int]]]) -> None:
        """Start again from stored ``(bucket, chunk, digests)``; new keys go to new chunks."""
        self._buckets.clear()
        gathered: dict[int, tuple[list[int], int]] = {}
        for index, chunk, digests in chunks:
            values, last = gathered.get(index, ([], -1))
            values += digests
            gathered[index] = (values, max(last, chunk))
        for index, (values, last) in gathered.items():
            self._buckets[index] = _Bucket(array("Q", sorted(set(values))), set(), last + 1)


class Retirement:
    """Retirement of one kind of key (trees or chains), per partition: the keys kept, by
    the watermark from which each may be retired (:class:`RetireQueue`), and the keys
    retired (:class:`RetiredKeys`, remembered for ``period_us`` times
    :data:`RETIRED_PERIODS`)."""

    def __init__(self, kind: str, period_us: int) -> None:
        self.kind = kind
        self.period_us = period_us
        self.retired_total = 0
        self._kept: dict[int, RetireQueue] = {}
        self._retired: dict[int, RetiredKeys] = {}

    @property
    def live(self) -> int:
        """How many keys are kept, over every partition."""
        # list(): the metrics thread reads it while the worker may add a partition.
        return sum(len(queue) for queue in list(self._kept.values()))

    def keep(self, partition: int, key: str, at_us: int) -> None:
        """``key`` is kept in ``partition`` and may be retired from ``at_us`` on."""
        queue = self._kept.get(partition)
        if queue is None:
            queue = self._kept[partition] = RetireQueue()
        queue.set(key, at_us)

    def is_retired(self, partition: int, key: str) -> bool:
        keys = self._retired.get(partition)
        return keys is not None and key in keys

    def due(self, partition: int, watermark_us: int) -> list[str]:
        """The keys of ``partition`` whose time ``watermark_us`` has reached (to retire,
        or to :meth:`keep` again); the retired keys too old to remember are forgotten."""
        keys = self._retired.get(partition)
        if keys is not None:
            keys.expire(watermark_us)
        queue = self._kept.get(partition)
        return queue.due(watermark_us) if queue is not None else []

    def retire(self, partition: int, key: str, watermark_us: int) -> None:
        """``key`` is retired at ``watermark_us``: remembered, and counted."""
        self._keys(partition).add(key, watermark_us)
        self.retired_total += 1

    def _keys(self, partition: int) -> RetiredKeys:
        keys = self._retired.get(partition)
        if keys is None:
            keys = self._retired[partition] = RetiredKeys(self.period_us)
        return keys

    def forget(self, partition: int) -> None:
        """The partition is no longer this worker's."""
        self._kept.pop(partition, None)
        self._retired.pop(partition, None)

    def changes(self) -> list[tuple[int, int, int, bytes | None]]:
        """``(partition, bucket, chunk, stored form)`` of each chunk of retired keys to
        store since the last call (stored form None: delete it)."""
        return [
            (
                partition,
                bucket,
                chunk,
                None if d is None else chunk_to_json(self.kind, bucket, chunk, d),
            )
            for partition, keys in self._retired.items()
            for bucket, chunk, d in keys.changes()
        ]

    def restore(self, partition: int, chunks: list[tuple[int, int, list[int]]]) -> None:
        """After recovery: the retired keys of ``partition`` from their stored chunks."""
        self._keys(partition).restore(chunks)


def restore_retired(retirements: Iterable[Retirement], items: Iterable[tuple[int, bytes]]) -> None:
    """After recovery: each kind's retired keys from the stored ``(partition, chunk)``."""
    chunks: dict[tuple[str, int], list[tuple[int, int, list[int]]]] = {}
    for partition, raw in items:
        kind, bucket, chunk, digests = chunk_from_json(raw)
        chunks.setdefault((kind, partition), []).append((bucket, chunk, digests))
    by_kind = {retirement.kind: retirement for retirement in retirements}
    for (kind, partition), stored in chunks.items():
        by_kind[kind].restore(partition, stored)


def chunk_to_json(kind: str, bucket: int, chunk: int, digests: list[int]) -> bytes:
    """The stored form of a chunk of retired keys of ``kind`` (``tree`` or ``chain``)."""
    packed = array("Q", digests)
    if sys.byteorder == "little":
        packed.byteswap()  # stored big-endian, whichever host wrote it
    data = {
        "kind": kind,
        "bucket": bucket,
        "chunk": chunk,
        "digests": base64.b64encode(packed.tobytes()).decode(),
    }
    return json.dumps(stamp(data), separators=(",", ":")).encode()


def chunk_from_json(raw: bytes) -> tuple[str, int, int, list[int]]:
    """``(kind, bucket, chunk, digests)`` of a stored chunk of retired keys."""
    data = json.loads(raw)
    check_format(data, "retired keys")
    packed = array("Q")
    packed.frombytes(base64.b64decode(data["digests"]))
    if sys.byteorder == "little":
        packed.byteswap()
    return str(data["kind"]), int(data["bucket"]), int(data["chunk"]), packed.tolist()
