"""The correlator's worker step, without faust: records in, records to send and states to
store out.

One batch of source records (:meth:`Correlation.on_events`) goes, record by record:

1. decode, or dead-letter: what is not a valid contract event goes to ``custody.dlq.v1``
   with the original bytes and the reason, topic, partition and offset in headers;
2. redact: secret-looking values are replaced and flagged (a record that cannot be kept
   clean is dead-lettered too);
3. the engine: the event's chain link is set aside for the chain check, the event is
   folded into its custody tree (:func:`processors.correlation.engine.observe`), and the
   deadlines its partition's watermark has passed are decided;
4. the outputs: dead letters, alerts (key ``alert_id``), state changes (key
   ``root_task_id``), chain links (key ``producer_instance``) and the source watermarks,
   and the trees to store once Kafka has those.

``EVIDENCE_GAP`` needs each producer instance's events in one place: the chain links are
repartitioned by ``producer_instance`` to :data:`CHAIN_LINKS`, whose records
(:meth:`Correlation.on_links`) are checked against per-instance chains. The timer's step
(:meth:`Correlation.due`) decides deadlines on partitions no record moves, and retires the
trees and chains whose retention has passed (:mod:`processors.correlation.retention`): a
retired one is deleted from the tables and remembered by a digest, and an event or link
that arrives for it is counted in :attr:`Correlation.late_events` and logged, not judged.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from processors.correlation.alerts import from_micros
from processors.correlation.chains import (
    ChainLink,
    ChainState,
    chain_link,
    expire_chain,
    links_from_json,
    links_to_json,
    observe_link,
    pending_from_json,
)
from processors.correlation.engine import (
    CorrelationConfig,
    Output,
    expire,
    observe,
    to_micros,
)
from processors.correlation.retention import (
    BEYOND_RETENTION,
    RETIRED_CHAIN,
    RETIRED_TREE,
    Retirement,
    chain_retire_at,
    restore_retired,
    tree_retire_at,
)
from processors.correlation.tree import TreeState
from processors.correlation.watermark import Watermark, decide_due
from processors.correlator.codec import load_tree, retired_key, stored_form, tree_key
from processors.dead_letters import dlq_headers, dlq_key, dlq_value
from processors.redaction import redacted
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec, DecodeError
from schemas.models import Alert, CustodyEvent, StateChange
from schemas.secrets import may_hold_secret

CHAIN_LINKS = "custody.chain-links.v1"
# Key of the source-partition watermark records on the chain-links topic.
WATERMARK_KEY = b"\x00custody-watermark"

# A source record as the step takes it: partition, offset, key, value.
Record = tuple[int, int, bytes | None, bytes | None]
# What a step stores: key -> (partition, state); a state of None deletes the key.
TreeWrites = dict[str, tuple[int, TreeState | None]]

_log = logging.getLogger("custody.correlate")


@dataclass(frozen=True, slots=True)
class Outbound:
    """A record to send: where, with which key, value and headers."""

    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


@dataclass(slots=True)
class _Pending:
    """Outputs gathered over one batch, turned into records at its end."""

    alerts: list[Alert] = field(default_factory=list)
    changes: dict[tuple[str, str], StateChange] = field(default_factory=dict)
    links: dict[str, list[ChainLink]] = field(default_factory=dict)


class Correlation:
    """The worker's state and steps, without faust: trees per root task, chains per
    producer instance, watermarks per partition, and the outputs of each step; chain
    links go to ``links_topic``."""

    def __init__(self, settings: Settings, links_topic: str = CHAIN_LINKS) -> None:
        self.links_topic = links_topic
        self.config = CorrelationConfig.of(
            settings.grace_seconds, settings.max_credential_ttl_seconds
        )
        self.lateness_us = int(settings.allowed_lateness_seconds * 1_000_000)
        self.idle_advance = settings.idle_advance
        self.partitions = settings.event_partitions
        self.codec = AvroCodec()
        # Trees by tree_key(tenant, root_task_id): root task ids are unique per tenant only.
        self.trees: dict[str, TreeState] = {}
        self.chains: dict[str, ChainState] = {}
        self.chain_partitions: dict[int, set[str]] = {}
        # source partition -> wall time it was first seen without any event
        self.silent_since: dict[int, int] = {}
        # partition -> tree key -> next deadline, for the timer
        self.tree_deadlines: dict[int, dict[str, int]] = {}
        self.chain_deadlines: dict[int, dict[str, int]] = {}
        self.event_marks: dict[int, Watermark] = {}
        # link partition -> source partition -> the watermark it announced
        self.link_marks: dict[int, dict[int, int]] = {}
        # tree key -> wall time until which its deadlines wait: the tree received
        # evidence older than its partition's watermark (a backfill), whose deadlines
        # have passed already; deciding them at once would judge the tree before the
        # rest of the backfill arrives (false BROKEN_CHAIN, ORPHANED_TOKEN, ...).
        self.held_until: dict[str, int] = {}
        # What the current step read: its partitions, and the trees it held. Both count
        # from the step's end (see written), not its start.
        self.step_partitions: set[int] = set()
        self.step_held: set[str] = set()
        # Each retirement holds its retention period (period_us), which the step reads too.
        self.tree_retirement = Retirement("tree", int(settings.tree_retention_seconds * 1_000_000))
        self.chain_retirement = Retirement(
            "chain", int(settings.chain_retention_seconds * 1_000_000)
        )
        # Events and links not judged, by reason.
        self.late_events: Counter[str] = Counter()

    @property
    def trees_retired(self) -> int:
        """Trees retired since the worker started."""
        return self.tree_retirement.retired_total

    @property
    def chains_retired(self) -> int:
        """Producer instances' chains retired since the worker started."""
        return self.chain_retirement.retired_total

    @property
    def live_trees(self) -> int:
        """Trees stored and not retired, in the partitions this worker owns."""
        return self.tree_retirement.live

    @property
    def live_chains(self) -> int:
        """Producer instances' chains kept, in the partitions this worker owns."""
        return len(self.chains)

    def on_events(
        self,
        records: Sequence[Record],
        load: Callable[[str], bytes | None],
        wall_us: int,
    ) -> tuple[list[Outbound], TreeWrites]:
        """Process ``(partition, offset, key, value)`` records; ``load(tree key)`` returns a
        tree's stored JSON. Returns what to send and the trees to write afterwards; the
        trees of these partitions whose deadlines the batch passed are decided too."""
        pending = _Pending()
        letters: list[Outbound] = []
        dirty: TreeWrites = {}
        late: Counter[tuple[str, str]] = Counter()
        detected = from_micros(wall_us)
        for partition, offset, key, value in records:
            # 1-2. Decode and redact, or dead-letter.
            event = self._admit(partition, offset, key, value)
            if isinstance(event, Outbound):
                letters.append(event)
                continue
            # 3. The engine: the chain link, the tree, the deadlines passed. A late event's
            # link still goes to the chain check: its seq is part of the chain.
            event_us = to_micros(event.event_time)
            link = chain_link(event, value or b"", event_us)
            pending.links.setdefault(link.producer_instance, []).append(link)
            mark = self._mark(self.event_marks, partition)
            mark.observe(event_us, wall_us)
            root = tree_key(event.tenant, event.root_task_id)
            state = self.trees.get(root)
            if state is None:
                state = load_tree(load, root, event.tenant, event.root_task_id)
            if state is None:
                reason = self._not_judged(partition, root, event_us, mark.current(wall_us))
                if reason is not None:
                    late[(reason, root)] += 1
                    continue
            state, out = observe(state, event, self.config, detected)
            self._emit(out, pending)
            watermark = mark.current(wall_us)
            if watermark is not None and event_us < watermark:
                # Late evidence: the tree is judged once its backfill has had the
                # allowed lateness of wall time to arrive whole (the timer decides it).
                self.held_until[root] = wall_us + self.lateness_us
                self.step_held.add(root)
            if watermark is not None and not self._held(root, wall_us):
                state, out = expire(state, watermark, self.config, detected)
                self._emit(out, pending)
            self.trees[root] = state
            dirty[root] = (partition, state)
        self._count_late(late, "tree")
        touched = {record[0] for record in records}
        self.step_partitions |= touched
        dirty.update(self._due_trees(touched, wall_us, pending))
        # 4. The outputs. The watermark records go after the batch's links, so that every
        # link partition sees an instance's links before the mark that covers them.
        sends = letters + self._outbound(pending) + self.source_watermarks(touched, wall_us)
        return sends, dirty

    def reading_behind(self, partitions: Iterable[int], wall_us: int) -> None:
        """Source ``partitions`` have records not read yet (a backlog is read unevenly):
        until they are read, none is idle (its watermark does not move with the wall
        clock) or taken as empty, so neither judges trees nor retires chains before them."""
        for partition in partitions:
            self._mark(self.event_marks, partition).arrived(wall_us)
            if partition in self.silent_since:
                self.silent_since[partition] = wall_us

    def _not_judged(
        self, partition: int, root: str, event_us: int, watermark: int | None
    ) -> str | None:
        """Why an event of a tree not kept is not judged (None: it starts a new tree)."""
        if self.tree_retirement.is_retired(partition, root):
            return RETIRED_TREE
        if watermark is not None and event_us < watermark - self.tree_retirement.period_us:
            return BEYOND_RETENTION
        return None

    def _count_late(self, late: Counter[tuple[str, str]], what: str) -> None:
        """Count and log what was not judged, one line per reason and key."""
        for (reason, key), count in late.items():
            self.late_events[reason] += count
            _log.warning("%d late event(s) of %s %s not judged (%s)", count, what, key, reason)

    def _admit(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> CustodyEvent | Outbound:
        """The record's event, secret-looking values redacted; or its dead letter, when it
        is not a valid contract event or cannot be kept clean."""
        try:
            event = self.codec.decode_event(value or b"")
            if may_hold_secret(value or b""):
                event = redacted(event)
        except DecodeError as exc:
            return dead_letter(value, key, exc, topics.EVENTS, partition, offset)
        return event

    def _mark(self, marks: dict[int, Watermark], partition: int) -> Watermark:
        mark = marks.get(partition)
        if mark is None:
            mark = marks[partition] = Watermark(self.lateness_us, self.idle_advance)
        return mark

    def _emit(self, out: Output, into: _Pending) -> None:
        into.alerts += out.alerts
        for change in out.changes:
            # Downstream keeps the highest version per (kind, key): within a batch only the
            # last change of each needs to be sent.
            into.changes[(change.kind, change.key)] = change

    def _outbound(self, pending: _Pending) -> list[Outbound]:
        sends = [
            Outbound(topics.ALERTS, alert.alert_id.encode(), self.codec.encode_alert(alert))
            for alert in pending.alerts
        ]
        sends += [
            Outbound(topics.STATE, change.root_task_id.encode(), self.codec.encode_state(change))
            for change in pending.changes.values()
        ]
        sends += [
            Outbound(self.links_topic, instance.encode(), links_to_json(links))
            for instance, links in pending.links.items()
        ]
        return sends

    def _held(self, root: str, wall_us: int) -> bool:
        until = self.held_until.get(root)
        if until is None:
            return False
        if until > wall_us:
            return True
        del self.held_until[root]
        return False

    def source_watermarks(self, partitions: Iterable[int], wall_us: int) -> list[Outbound]:
        """Watermark records for the chain check, one per source partition and link
        partition. A producer instance's links come from every source partition, each at
        its own pace (a backlog is read unevenly), so the chain check may only consider
        event time passed once *every* source partition has passed it."""
        sends = []
        for partition in partitions:
            watermark = self.event_watermark(partition, wall_us)
            if watermark is None:
                # A partition with no event yet may be empty, or not read yet (a backlog
                # is read unevenly). Once it has stayed silent for a grace period of wall
                # time, it is taken as empty and stops holding the chain check back.
                since = self.silent_since.setdefault(partition, wall_us)
                if wall_us - since < self.config.grace_us:
                    continue
                watermark = wall_us - self.lateness_us
            value = json.dumps({"source_partition": partition, "watermark_us": watermark})
            for link_partition in range(self.partitions):
                sends.append(
                    Outbound(
                        self.links_topic, WATERMARK_KEY, value.encode(), partition=link_partition
                    )
                )
        return sends

    def event_watermark(self, partition: int, wall_us: int) -> int | None:
        """The watermark of an events partition (None: no event read on it yet)."""
        mark = self.event_marks.get(partition)
        return mark.current(wall_us) if mark else None

    def chain_watermark(self, link_partition: int) -> int | None:
        """The event time every source partition has passed, as seen on a link partition."""
        marks = self.link_marks.get(link_partition, {})
        return min(marks.values()) if len(marks) == self.partitions else None

    def on_links(
        self, records: Iterable[tuple[int, bytes | None, bytes | None]], wall_us: int
    ) -> tuple[list[Outbound], dict[str, tuple[int, ChainState]]]:
        """Process ``(partition, key, value)`` records of the chain-links topic: links,
        and the source partitions' watermarks."""
        pending = _Pending()
        dirty: dict[str, tuple[int, ChainState]] = {}
        late: Counter[tuple[str, str]] = Counter()
        detected = from_micros(wall_us)
        touched = set()
        for partition, key, value in records:
            touched.add(partition)
            if key == WATERMARK_KEY:
                mark = json.loads(value or b"{}")
                marks = self.link_marks.setdefault(partition, {})
                source = int(mark["source_partition"])
                marks[source] = max(marks.get(source, 0), int(mark["watermark_us"]))
                continue
            for link in links_from_json(value or b"[]"):
                # Every chain of an owned partition is in memory (restored at recovery).
                if link.producer_instance not in self.chains and (
                    self.chain_retirement.is_retired(partition, link.producer_instance)
                ):
                    late[(RETIRED_CHAIN, link.producer_instance)] += 1
                    continue
                state, out = observe_link(
                    self.chains.get(link.producer_instance),
                    link,
                    self.config,
                    detected,
                    self.chain_watermark(partition),
                )
                self._emit(out, pending)
                self.chains[link.producer_instance] = state
                self.chain_partitions.setdefault(partition, set()).add(link.producer_instance)
                dirty[link.producer_instance] = (partition, state)
        for link_partition, state in list(dirty.values()):
            watermark = self.chain_watermark(link_partition)
            if watermark is not None:
                _, out = expire_chain(state, watermark, self.config, detected)
                self._emit(out, pending)
        self._count_late(late, "producer instance")
        dirty.update(self._due_chains(touched, wall_us, pending))
        return self._outbound(pending), dirty

    def due(
        self, event_partitions: Iterable[int], link_partitions: Iterable[int], wall_us: int
    ) -> tuple[list[Outbound], TreeWrites, dict[str, tuple[int, ChainState]]]:
        """The timer's step: deadlines passed on idle partitions, the trees and chains
        whose retention has passed retired, and the source watermarks the chain check
        waits for."""
        pending = _Pending()
        event_partitions = set(event_partitions)
        link_partitions = set(link_partitions)
        trees = self._due_trees(event_partitions, wall_us, pending)
        trees.update(self._retire_trees(event_partitions, wall_us))
        chains = self._due_chains(link_partitions, wall_us, pending)
        chains.update(self._retire_chains(link_partitions))
        sends = self._outbound(pending) + self.source_watermarks(event_partitions, wall_us)
        return sends, trees, chains

    def _retire_trees(self, partitions: Iterable[int], wall_us: int) -> TreeWrites:
        """Retire the trees whose retention the watermark has passed: each leaves memory
        and the table (a delete), and is remembered as retired."""
        retired: TreeWrites = {}
        for partition in partitions:
            watermark = self.event_watermark(partition, wall_us)
            if watermark is None:
                continue
            for root in self.tree_retirement.due(partition, watermark):
                state = self.trees.get(root)
                if (state is not None and state.deadlines) or self._held(root, wall_us):
                    # A backfill is being held: it is judged first, retired after.
                    self.tree_retirement.keep(partition, root, watermark + 1)
                    continue
                self.trees.pop(root, None)
                self.tree_deadlines.get(partition, {}).pop(root, None)
                self.tree_retirement.retire(partition, root, watermark)
                retired[root] = (partition, None)
        return retired

    def _retire_chains(self, partitions: Iterable[int]) -> dict[str, tuple[int, ChainState]]:
        """Retire the chains silent for the chain retention: each leaves memory and the
        tables (its prefix and pending links deleted), and is remembered as retired."""
        retired: dict[str, tuple[int, ChainState]] = {}
        for partition in partitions:
            watermark = self.chain_watermark(partition)
            if watermark is None:
                continue
            for instance in self.chain_retirement.due(partition, watermark):
                chain = self.chains.pop(instance, None)
                if chain is None:
                    continue
                chain.retire()
                self.chain_partitions.get(partition, set()).discard(instance)
                self.chain_deadlines.get(partition, {}).pop(instance, None)
                self.chain_retirement.retire(partition, instance, watermark)
                retired[instance] = (partition, chain)
        return retired

    def retired_records(self) -> list[tuple[int, bytes, bytes | None]]:
        """``(partition, key, stored form)`` of the chunks of retired keys changed since
        the last call (None: delete); stored with the step's trees and chains."""
        writes: list[tuple[int, bytes, bytes | None]] = []
        for retirement in (self.tree_retirement, self.chain_retirement):
            for partition, bucket, chunk, value in retirement.changes():
                key = retired_key(retirement.kind, partition, bucket, chunk)
                writes.append((partition, key, value and stored_form(partition, value)))
        return writes

    def recovered_retired(self, items: Iterable[tuple[int, bytes]]) -> None:
        """After table recovery: the retired keys of the owned partitions, from their
        stored chunks."""
        restore_retired((self.tree_retirement, self.chain_retirement), items)

    def _due_trees(self, partitions: Iterable[int], wall_us: int, pending: _Pending) -> TreeWrites:
        detected = from_micros(wall_us)
        decided = decide_due(
            partitions,
            lambda partition: self.event_watermark(partition, wall_us),
            self.tree_deadlines,
            self.trees,
            lambda state, mark: expire(state, mark, self.config, detected),
            lambda out: self._emit(out, pending),
            lambda root: self._held(root, wall_us),
        )
        return dict(decided)  # as TreeWrites, whose None is a delete

    def _due_chains(
        self, partitions: Iterable[int], wall_us: int, pending: _Pending
    ) -> dict[str, tuple[int, ChainState]]:
        detected = from_micros(wall_us)
        return decide_due(
            partitions,
            self.chain_watermark,
            self.chain_deadlines,
            self.chains,
            lambda state, mark: expire_chain(state, mark, self.config, detected),
            lambda out: self._emit(out, pending),
            lambda _: False,
        )

    def written(
        self,
        trees: TreeWrites,
        chains: dict[str, tuple[int, ChainState]],
        ended_us: int,
    ) -> None:
        """Index the next deadline and the retirement of each stored tree and chain;
        forget settled ones (their stored form stays in the table). ``ended_us``: the wall
        time the step ended, once its outputs were delivered and its state stored.

        The partitions the step read count as idle, and the trees it held as waiting for
        the rest of their backfill, from then: a slow step (a heavy batch, a broker slow
        to acknowledge) must not use up the time in which the next records, already
        read and queued behind it, would have arrived. Otherwise the timer, running
        between the two steps, judges a tree without the half of it still queued.
        """
        for partition in self.step_partitions:
            mark = self.event_marks.get(partition)
            if mark is not None:
                mark.arrived(ended_us)
        for root in self.step_held:
            if root in self.held_until:
                self.held_until[root] = max(self.held_until[root], ended_us + self.lateness_us)
        self.step_partitions.clear()
        self.step_held.clear()
        for root, (partition, state) in trees.items():
            index = self.tree_deadlines.setdefault(partition, {})
            if state is not None and state.deadlines:
                index[root] = state.deadlines[0][0]
            else:
                index.pop(root, None)
                self.trees.pop(root, None)
                self.held_until.pop(root, None)
            if state is not None:
                at = tree_retire_at(state, self.tree_retirement.period_us)
                self.tree_retirement.keep(partition, root, at)
        for instance, (partition, chain) in chains.items():
            if chain.retired:
                continue
            index = self.chain_deadlines.setdefault(partition, {})
            if chain.deadlines:
                index[instance] = chain.deadlines[0][0]
            else:
                index.pop(instance, None)
            at = chain_retire_at(chain, self.chain_retirement.period_us)
            self.chain_retirement.keep(partition, instance, at)

    def recovered_trees(self, items: Iterable[tuple[int, bytes]], wall_us: int) -> None:
        """After table recovery: index the trees with pending deadlines and every tree's
        retirement, and start each partition's watermark from its newest event, so idle
        advancement decides them even if no new event ever arrives."""
        for partition, state_json in items:
            state = TreeState.from_json(state_json)
            self._mark(self.event_marks, partition).observe(state.last_event_us, wall_us)
            key = tree_key(state.tenant, state.root_task_id)
            self.tree_retirement.keep(
                partition, key, tree_retire_at(state, self.tree_retirement.period_us)
            )
            if state.deadlines:
                self.trees[key] = state
                self.tree_deadlines.setdefault(partition, {})[key] = state.deadlines[0][0]

    def recovered_chains(
        self, prefixes: Iterable[tuple[int, bytes]], pending: Iterable[bytes]
    ) -> None:
        """After table recovery: every chain of the owned partitions back in memory, with
        its pending links, and those with deadlines indexed (the source watermarks
        arrive again within a timer tick)."""
        links: dict[str, list[tuple[ChainLink, int | None]]] = {}
        for link_json in pending:
            link, due_us = pending_from_json(link_json)
            links.setdefault(link.producer_instance, []).append((link, due_us))
        for partition, prefix_json in prefixes:
            instance = json.loads(prefix_json)["producer_instance"]
            chain = ChainState.from_json(prefix_json, links.get(instance, []), self.config)
            self.chains[instance] = chain
            self.chain_partitions.setdefault(partition, set()).add(instance)
            self.chain_retirement.keep(
                partition, instance, chain_retire_at(chain, self.chain_retirement.period_us)
            )
            if chain.deadlines:
                self.chain_deadlines.setdefault(partition, {})[instance] = chain.deadlines[0][0]

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop what belongs to partitions this worker no longer owns."""
        for partition in partitions:
            for root in self.tree_deadlines.pop(partition, {}):
                self.trees.pop(root, None)
                self.held_until.pop(root, None)
            self.chain_deadlines.pop(partition, None)
            for instance in self.chain_partitions.pop(partition, set()):
                self.chains.pop(instance, None)
            self.event_marks.pop(partition, None)
            self.link_marks.pop(partition, None)
            self.silent_since.pop(partition, None)
            self.tree_retirement.forget(partition)
            self.chain_retirement.forget(partition)


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    error: DecodeError,
    topic: str,
    partition: int,
    offset: int,
) -> Outbound:
    """A DLQ record: the original bytes (secrets masked, cut if too big for a record, see
    :func:`processors.dead_letters.dlq_value`), and why and where from in its headers."""
    kept, cut = dlq_value(value)
    headers = dlq_headers(error.reason, str(error), "correlate", topic, partition, offset) + cut
    return Outbound(topics.DLQ, dlq_key(key) or b"", kept, headers)
