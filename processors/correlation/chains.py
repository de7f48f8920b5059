"""Evidence-chain checking per producer instance (``EVIDENCE_GAP``).

Each producer instance numbers its events (``seq`` from 1) and links each to the one
before (``prev_hash`` = SHA-256 of the previous event's Avro body). Its events span many
custody trees, hence many partitions, so they reach this check out of order: links ahead
of a hole wait until the hole fills or its deadline passes. Then the gap is reported and
checking resumes after it.

A link's deadline is its event time + grace, or, for a link that arrives behind the
check's watermark (a backfill: hours of buffered evidence replayed), the watermark it
arrived at + grace. The watermark is the *least* advanced source partition's, but a
backfill lands on partitions whose watermarks live traffic has already moved on; the
links of one replayed instance then arrive from each partition at its own pace, and
judging them by their own old times would report every hole between two partitions'
reads as a gap at once.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from processors.correlation.alerts import make_alert
from processors.correlation.engine import CorrelationConfig, Output
from processors.correlation.state_format import check_format, stamp
from schemas.codec import body_bytes
from schemas.models import AlertType, CustodyEvent

_UNKNOWN = "unknown"
# How many verified links are remembered to recognise a second event claiming their seq.
RECENT_LINKS = 1024


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What the chain check needs of one event."""

    event_id: str
    tenant: str
    root_task_id: str
    producer_instance: str
    seq: int
    prev_hash: str | None
    body_hash: str
    us: int


def chain_link(event: CustodyEvent, value: bytes, event_us: int) -> ChainLink:
    """The link of a decoded ``event`` (its Avro ``value``, event time ``event_us``) in
    its producer instance's hash chain."""
    if not event.producer_instance or not event.seq:
        raise TypeError(f"event {event.event_id} was decoded without its chain stamp")
    return ChainLink(
        event.event_id,
        event.tenant,
        event.root_task_id,
        event.producer_instance,
        event.seq,
        event.prev_hash,
        hashlib.sha256(body_bytes(value)).hexdigest(),
        event_us,
    )


def pending_to_json(link: ChainLink, due_us: int) -> bytes:
    """The stored form of a link waiting for its predecessors, with its deadline."""
    return json.dumps(stamp({**asdict(link), "due_us": due_us}), separators=(",", ":")).encode()


def pending_from_json(raw: bytes) -> tuple[ChainLink, int | None]:
    """A waiting link and its deadline; the deadline is None for a link stored by an
    earlier version, which waits from its own event time."""
    data = json.loads(raw)
    check_format(data, "pending chain link")
    data.pop("format", None)
    due_us = data.pop("due_us", None)
    return ChainLink(**data), due_us


def links_to_json(links: list[ChainLink]) -> bytes:
    """One record for several links of one producer instance (one per batch)."""
    return json.dumps([asdict(link) for link in links], separators=(",", ":")).encode()


def links_from_json(raw: bytes) -> list[ChainLink]:
    return [ChainLink(**link) for link in json.loads(raw)]


@dataclass(slots=True)
class ChainState:
    """The verified prefix of one producer instance's chain and the links beyond it.

    Stored in two parts: the prefix (:meth:`to_json`, bounded) in one record, and each
    pending link in a record of its own. A busy producer read unevenly across partitions
    can have tens of thousands of links waiting; one record for all of them would outgrow
    Kafka's message size. ``added`` and ``removed`` name the pending links to write or
    delete since the state was last stored.
    """

    producer_instance: str
    verified_seq: int = 0
    last_hash: str | None = None
    last_event_id: str | None = None
    pending: dict[int, ChainLink] = field(default_factory=dict)
    due: dict[int, int] = field(default_factory=dict)
    recent: dict[int, str] = field(default_factory=dict)
    # alert id -> the seq it is about: an alert about a seq RECENT_LINKS behind the
    # verified prefix cannot be raised again (see prune_behind), so its id is dropped
    fired_alert_ids: dict[str, int] = field(default_factory=dict)
    deadlines: list[tuple[int, int]] = field(default_factory=list)
    added: set[int] = field(default_factory=set)
    removed: set[int] = field(default_factory=set)
    # the newest link's event time and the latest deadline: retention counts from them
    last_us: int = 0
    horizon_us: int = 0
    # set when the chain is retired: its records are to be deleted, not written
    retired: bool = False

    def hold(self, link: ChainLink, due_us: int) -> None:
        """Keep a link that waits for its predecessors until ``due_us``."""
        self.pending[link.seq] = link
        self.due[link.seq] = due_us
        heapq.heappush(self.deadlines, (due_us, link.seq))
        self.horizon_us = max(self.horizon_us, due_us)
        self.added.add(link.seq)
        self.removed.discard(link.seq)

    def release(self, seq: int) -> ChainLink:
        """Take a waiting link out, now that it is verified."""
        link = self.pending.pop(seq)
        self.due.pop(seq, None)
        if seq in self.added:
            self.added.discard(seq)
        else:
            self.removed.add(seq)
        return link

    def pending_json(self, seq: int) -> bytes:
        """The stored form of the waiting link ``seq``."""
        return pending_to_json(self.pending[seq], self.due[seq])

    def to_json(self) -> bytes:
        """The prefix record (pending links are stored one by one)."""
        fired = sorted(self.fired_alert_ids)
        return json.dumps(
            stamp(
                {
                    "producer_instance": self.producer_instance,
                    "verified_seq": self.verified_seq,
                    "last_hash": self.last_hash,
                    "last_event_id": self.last_event_id,
                    "recent": list(self.recent.items()),
                    "fired_alert_ids": fired,
                    "fired_alert_seqs": [self.fired_alert_ids[a] for a in fired],
                    "last_us": self.last_us,
                    "horizon_us": self.horizon_us,
                }
            ),
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(
        cls, raw: bytes, pending: list[tuple[ChainLink, int | None]], config: CorrelationConfig
    ) -> ChainState:
        """A state from its prefix record and its stored pending links with their
        deadlines (see :func:`pending_from_json`)."""
        data = json.loads(raw)
        check_format(data, "chain state")
        state = cls(
            data["producer_instance"],
            data["verified_seq"],
            data["last_hash"],
            data["last_event_id"],
        )
        state.recent = {int(seq): event_id for seq, event_id in data["recent"]}
        # Saved before the seqs were kept: the verified prefix is as far as is known.
        seqs = data.get("fired_alert_seqs") or [state.verified_seq] * len(data["fired_alert_ids"])
        state.fired_alert_ids = dict(zip(data["fired_alert_ids"], seqs, strict=True))
        state.last_us = int(data.get("last_us", 0))
        state.horizon_us = int(data.get("horizon_us", 0))
        for link, due_us in pending:
            if link.seq > state.verified_seq:
                state.pending[link.seq] = link
                state.due[link.seq] = link.us + config.grace_us if due_us is None else due_us
        state.deadlines = [(due_us, seq) for seq, due_us in state.due.items()]
        heapq.heapify(state.deadlines)
        state.horizon_us = max(state.horizon_us, *state.due.values(), 0)
        return state

    def retire(self) -> None:
        """Mark the chain retired: its prefix and every pending link stored are deleted
        when it is next stored."""
        self.retired = True
        self.removed |= set(self.pending) | self.added
        self.added.clear()

    def prune_behind(self) -> None:
        """Forget what concerns seqs :data:`RECENT_LINKS` or more behind the verified
        prefix. A second claim on a seq is recognised from ``recent`` or ``pending``, a
        hash mismatch is found at the seq just verified and a gap at the next one; none of
        them can concern such a seq again, so neither can its alert ids."""
        floor = self.verified_seq - RECENT_LINKS
        for seq in [s for s in self.recent if s <= floor]:
            del self.recent[seq]
        for alert in [a for a, seq in self.fired_alert_ids.items() if seq <= floor]:
            del self.fired_alert_ids[alert]


class _ChainStep:
    def __init__(self, state: ChainState, detected_at: datetime) -> None:
        self.state = state
        self.detected_at = detected_at
        self.out = Output()

    def gap(self, link: ChainLink, kind: str, seq: int, evidence: list[str], detail: str) -> None:
        record = make_alert(
            AlertType.EVIDENCE_GAP,
            tenant=link.tenant,
            root_task_id=link.root_task_id,
            subject=f"{link.producer_instance}\x1f{kind}:{seq}",
            event_time_us=link.us,
            detected_at=self.detected_at,
            evidence=evidence,
            detail=f"producer_instance {link.producer_instance}: {detail}",
        )
        if record.alert_id not in self.state.fired_alert_ids:
            self.state.fired_alert_ids[record.alert_id] = seq
            self.out.alerts.append(record)


def observe_link(
    state: ChainState | None,
    link: ChainLink,
    config: CorrelationConfig,
    detected_at: datetime,
    watermark_us: int | None = None,
) -> tuple[ChainState, Output]:
    """Fold one event's chain fields into its producer instance's chain; ``watermark_us``
    is the check's watermark as the link arrives (None before it has one)."""
    if state is None:
        state = ChainState(link.producer_instance)
    step = _ChainStep(state, detected_at)
    state.last_us = max(state.last_us, link.us)
    claimed = state.recent.get(link.seq) or (
        state.pending[link.seq].event_id if link.seq in state.pending else None
    )
    if claimed is not None or link.seq <= state.verified_seq:
        if claimed is not None and claimed != link.event_id:
            step.gap(
                link,
                "seq",
                link.seq,
                [claimed, link.event_id],
                f"two different events claim seq {link.seq}",
            )
        return state, step.out
    if link.seq == state.verified_seq + 1:
        state.pending[link.seq] = link
        state.added.add(link.seq)
    else:
        waits_from = link.us if watermark_us is None else max(link.us, watermark_us)
        state.hold(link, waits_from + config.grace_us)
    _advance(step)
    return state, step.out


def _advance(step: _ChainStep) -> None:
    """Verify every link that directly follows the verified prefix."""
    state = step.state
    while state.verified_seq + 1 in state.pending:
        link = state.release(state.verified_seq + 1)
        if state.last_hash != _UNKNOWN and link.prev_hash != state.last_hash:
            evidence = [link.event_id] + ([state.last_event_id] if state.last_event_id else [])
            expected = "null (first event)" if state.last_hash is None else "the previous body"
            step.gap(
                link,
                "hash",
                link.seq,
                evidence,
                f"prev_hash of seq {link.seq} does not match {expected}: an event "
                "before it was altered or removed",
            )
        state.verified_seq, state.last_hash, state.last_event_id = (
            link.seq,
            link.body_hash,
            link.event_id,
        )
        state.recent[link.seq] = link.event_id
        state.recent.pop(link.seq - RECENT_LINKS, None)


def expire_chain(
    state: ChainState, watermark_us: int, config: CorrelationConfig, detected_at: datetime
) -> tuple[ChainState, Output]:
    """Report the holes whose deadline passed, then resume checking after them."""
    step = _ChainStep(state, detected_at)
    while state.deadlines and state.deadlines[0][0] <= watermark_us:
        _, seq = heapq.heappop(state.deadlines)
        if seq <= state.verified_seq or not state.pending:
            continue
        after = min(state.pending)
        link = state.pending[after]
        missing = (
            f"seq {state.verified_seq + 1}"
            if after == state.verified_seq + 2
            else f"seqs {state.verified_seq + 1}-{after - 1}"
        )
        evidence = [link.event_id] + ([state.last_event_id] if state.last_event_id else [])
        step.gap(
            link,
            "gap",
            state.verified_seq + 1,
            evidence,
            f"{missing} never arrived: evidence is missing",
        )
        state.verified_seq, state.last_hash, state.last_event_id = after - 1, _UNKNOWN, None
        _advance(step)
        state.prune_behind()
    return state, step.out
