"""``custody correlate``: the faust-streaming worker around the pure correlator.

Per batch of events (``take_events``):

0. keep only the records due next, each partition's in offset order (the offset guard,
   :mod:`processors.offset_order`: faust can deliver records past ones it skipped);
1. decode each record; what is not a valid contract event goes to ``custody.dlq.v1`` with
   the original bytes and the reason, topic, partition and offset in headers;
2. fold each event into its custody tree (:func:`processors.correlation.engine.observe`),
   then decide the deadlines the partition's watermark has passed;
3. send the alerts (key ``alert_id``), state changes (key ``root_task_id``) and chain links
   (key ``producer_instance``, to the chain agent) and **wait until Kafka has them**;
4. only then write the trees to the table (its changelog).

At-least-once without transactions (Tansu's are unsafe): a crash before step 4 replays
the batch from the committed offset against the old trees, which re-derives the same
outputs with the same keys and ids, so downstream sees repeats, never holes. faust
commits an offset only after flushing its producer, so the table never trails the offsets.
A timer decides deadlines on idle partitions the same way.

``EVIDENCE_GAP`` needs each producer instance's events in one place: the chain links are
repartitioned by ``producer_instance`` to ``custody.chain-links.v1`` and checked by a
second agent with its own table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from processors.correlation.alerts import from_micros
from processors.correlation.chains import (
    ChainLink,
    ChainState,
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
from processors.correlation.tree import TreeState
from processors.correlation.watermark import Watermark
from processors.dead_letters import dlq_headers, dlq_key, dlq_value
from processors.group_offsets import first_offset, start_offsets
from processors.offset_order import OffsetOrder, Verdict
from processors.redaction import redacted
from processors.stack import heartbeat_path
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas import topics
from schemas.codec import AvroCodec, DecodeError, body_bytes
from schemas.models import (
    Alert,
    StateChange,
)
from schemas.secrets import may_hold_secret

CHAIN_LINKS = "custody.chain-links.v1"
APP_ID = "custody-correlate"
# A single-record batch for this key is appended to each changelog partition before
# recovery, so the local broker's (Tansu's) end offsets are exact again; readers skip it.
RESERVED_KEY = b"\x00custody-end-offset-marker"
# Key of the source-partition watermark records on the chain-links topic.
WATERMARK_KEY = b"\x00custody-watermark"
_BATCH = 1000
_BATCH_WITHIN = 0.2

_log = logging.getLogger("custody.correlate")


@dataclass(frozen=True, slots=True)
class Outbound:
    """A record to send: where, with which key, value and headers."""

    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


def tree_key(tenant: str, root_task_id: str) -> str:
    """The key of a custody tree in the worker and its table: a root task id is unique
    within its tenant only, and two tenants' trees must never share state."""
    return json.dumps([tenant, root_task_id], separators=(",", ":"))


def _load_tree(
    load: Callable[[str], bytes | None], key: str, tenant: str, root_task_id: str
) -> TreeState | None:
    """A stored tree, by its key; a table written before trees were keyed by tenant holds
    it under the root task id alone, which counts only if the tenant matches."""
    stored = load(key)
    if stored:
        return TreeState.from_json(stored)
    legacy = load(root_task_id)
    state = TreeState.from_json(legacy) if legacy else None
    return state if state is not None and state.tenant == tenant else None


def dead_letter(
    value: bytes | None,
    key: bytes | None,
    error: DecodeError,
    topic: str,
    partition: int,
    offset: int,
) -> Outbound:
    """A DLQ record: the original bytes (secrets masked, cut if too big for a record, see
    :func:`dlq_value`), and why and where from in its headers."""
    kept, cut = dlq_value(value)
    headers = dlq_headers(error.reason, str(error), "correlate", topic, partition, offset) + cut
    return Outbound(topics.DLQ, dlq_key(key) or b"", kept, headers)


@dataclass(slots=True)
class _Pending:
    """Outputs gathered over one batch, turned into records at its end."""

    alerts: list[Alert] = field(default_factory=list)
    changes: dict[tuple[str, str], StateChange] = field(default_factory=dict)
    links: dict[str, list[ChainLink]] = field(default_factory=dict)


class Correlation:
    """The worker's state and steps, without faust: trees per root task, chains per
    producer instance, watermarks per partition, and the outputs of each step."""

    def __init__(self, settings: Settings) -> None:
        self.config = CorrelationConfig.of(
            settings.grace_seconds, settings.max_credential_ttl_seconds
        )
        self.lateness_us = int(settings.allowed_lateness_seconds * 1_000_000)
        self.idle_advance = settings.idle_advance
        self.partitions = settings.event_partitions
        self.codec = AvroCodec()
        self.trees: dict[str, TreeState] = {}
        self.chains: dict[str, ChainState] = {}
        self.chain_partitions: dict[int, set[str]] = {}
        # source partition -> wall time it was first seen without any event
        self.silent_since: dict[int, int] = {}
        # Trees by tree_key(tenant, root_task_id): root task ids are unique per tenant only.
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
            Outbound(CHAIN_LINKS, instance.encode(), links_to_json(links))
            for instance, links in pending.links.items()
        ]
        return sends

    def on_events(
        self,
        records: Sequence[tuple[int, int, bytes | None, bytes | None]],
        load: Any,
        wall_us: int,
    ) -> tuple[list[Outbound], dict[str, tuple[int, TreeState]]]:
        """Process ``(partition, offset, key, value)`` records; ``load(tree key)`` returns a
        tree's stored JSON. Returns what to send and the trees to write afterwards; the
        trees of these partitions whose deadlines the batch passed are decided too."""
        pending = _Pending()
        letters: list[Outbound] = []
        dirty: dict[str, tuple[int, TreeState]] = {}
        detected = from_micros(wall_us)
        for partition, offset, key, value in records:
            try:
                event = self.codec.decode_event(value or b"")
            except DecodeError as exc:
                letters.append(dead_letter(value, key, exc, topics.EVENTS, partition, offset))
                continue
            if may_hold_secret(value or b""):
                try:
                    event = redacted(event)
                except DecodeError as exc:
                    letters.append(dead_letter(value, key, exc, topics.EVENTS, partition, offset))
                    continue
            assert value is not None and event.producer_instance and event.seq
            event_us = to_micros(event.event_time)
            pending.links.setdefault(event.producer_instance, []).append(
                ChainLink(
                    event.event_id,
                    event.tenant,
                    event.root_task_id,
                    event.producer_instance,
                    event.seq,
                    event.prev_hash,
                    hashlib.sha256(body_bytes(value)).hexdigest(),
                    event_us,
                )
            )
            root = tree_key(event.tenant, event.root_task_id)
            state = self.trees.get(root)
            if state is None:
                state = _load_tree(load, root, event.tenant, event.root_task_id)
            mark = self._mark(self.event_marks, partition)
            mark.observe(event_us, wall_us)
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
        touched = {record[0] for record in records}
        self.step_partitions |= touched
        dirty.update(self._due_trees(touched, wall_us, pending))
        # The watermark records go after the batch's links, so that every link partition
        # sees an instance's links before the mark that covers them.
        sends = letters + self._outbound(pending) + self.source_watermarks(touched, wall_us)
        return sends, dirty

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
            mark = self.event_marks.get(partition)
            watermark = mark.current(wall_us) if mark else None
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
                    Outbound(CHAIN_LINKS, WATERMARK_KEY, value.encode(), partition=link_partition)
                )
        return sends

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
        dirty.update(self._due_chains(touched, wall_us, pending))
        return self._outbound(pending), dirty

    def due(
        self, event_partitions: Iterable[int], link_partitions: Iterable[int], wall_us: int
    ) -> tuple[list[Outbound], dict[str, tuple[int, TreeState]], dict[str, tuple[int, ChainState]]]:
        """The timer's step: deadlines passed on idle partitions, and the source
        watermarks the chain check waits for."""
        pending = _Pending()
        event_partitions = set(event_partitions)
        trees = self._due_trees(event_partitions, wall_us, pending)
        chains = self._due_chains(link_partitions, wall_us, pending)
        sends = self._outbound(pending) + self.source_watermarks(event_partitions, wall_us)
        return sends, trees, chains

    def _due_trees(
        self, partitions: Iterable[int], wall_us: int, pending: _Pending
    ) -> dict[str, tuple[int, TreeState]]:
        dirty: dict[str, tuple[int, TreeState]] = {}
        detected = from_micros(wall_us)
        for partition in partitions:
            mark = self.event_marks.get(partition)
            watermark = mark.current(wall_us) if mark else None
            if watermark is None:
                continue
            index = self.tree_deadlines.get(partition, {})
            for root, due in list(index.items()):
                if due > watermark or root not in self.trees or self._held(root, wall_us):
                    continue
                state, out = expire(self.trees[root], watermark, self.config, detected)
                self._emit(out, pending)
                dirty[root] = (partition, state)
        return dirty

    def _due_chains(
        self, partitions: Iterable[int], wall_us: int, pending: _Pending
    ) -> dict[str, tuple[int, ChainState]]:
        dirty: dict[str, tuple[int, ChainState]] = {}
        detected = from_micros(wall_us)
        for partition in partitions:
            watermark = self.chain_watermark(partition)
            if watermark is None:
                continue
            index = self.chain_deadlines.get(partition, {})
            for instance, due in list(index.items()):
                if due > watermark or instance not in self.chains:
                    continue
                state, out = expire_chain(self.chains[instance], watermark, self.config, detected)
                self._emit(out, pending)
                dirty[instance] = (partition, state)
        return dirty

    def written(
        self,
        trees: dict[str, tuple[int, TreeState]],
        chains: dict[str, tuple[int, ChainState]],
        ended_us: int,
    ) -> None:
        """Index the next deadline of each stored tree and chain; forget settled ones
        (their stored form stays in the table). ``ended_us``: the wall time the step
        ended, once its outputs were delivered and its state stored.

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
            if state.deadlines:
                index[root] = state.deadlines[0][0]
            else:
                index.pop(root, None)
                self.trees.pop(root, None)
                self.held_until.pop(root, None)
        for instance, (partition, chain) in chains.items():
            index = self.chain_deadlines.setdefault(partition, {})
            if chain.deadlines:
                index[instance] = chain.deadlines[0][0]
            else:
                index.pop(instance, None)

    def recovered_trees(self, items: Iterable[tuple[int, bytes]], wall_us: int) -> None:
        """After table recovery: index the trees with pending deadlines, and start each
        partition's watermark from its newest event, so idle advancement decides them
        even if no new event ever arrives."""
        for partition, state_json in items:
            state = TreeState.from_json(state_json)
            self._mark(self.event_marks, partition).observe(state.last_event_us, wall_us)
            if state.deadlines:
                key = tree_key(state.tenant, state.root_task_id)
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


def _wall_us() -> int:
    return time.time_ns() // 1000


def build_app(settings: Settings) -> faust.App:
    """The faust app: two agents, two tables, a timer, the changelog end-offset fix."""
    partitions = settings.event_partitions
    group_config = settings.kafka_consumer(APP_ID)
    session_s = group_config.get("session.timeout.ms", 45_000) / 1000
    app = faust.App(
        APP_ID,
        broker=[f"kafka://{s}" for s in settings.kafka_bootstrap.split(",")],
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=partitions,
        topic_disable_leader=True,
        web_enabled=False,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=session_s / 6,
        broker_rebalance_timeout=session_s,
        broker_commit_interval=1.0,
        broker_max_poll_records=10_000,
        stream_buffer_maxsize=16_384,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_acks=-1,
        producer_linger=0.005,
        stream_wait_empty=False,
        **_faust_security(settings),
    )
    _keep_queued_events_on_resume(app)
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(topics.EVENTS, partitions=partitions, internal=False, **raw)
    links_topic = app.topic(CHAIN_LINKS, partitions=partitions, internal=False, **raw)
    schema: Any = faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    def raw_table(name: str) -> Any:
        # The types (not only the schema) pick the changelog's serializers.
        return app.Table(
            name,
            partitions=partitions,
            default=None,
            schema=schema,
            key_type=bytes,
            value_type=bytes,
        )

    trees = raw_table("custody-trees")
    chains = raw_table("custody-chains")
    pending_links = raw_table("custody-chain-pending")
    work = Correlation(settings)

    async def deliver(sends: list[Outbound]) -> None:
        pending: list[Awaitable[Any]] = [
            await app.producer.send(s.topic, s.key, s.value, s.partition, None, s.headers)
            for s in sends
        ]
        for fut in pending:
            await fut

    def store(table: Any, dirty: dict[str, tuple[int, Any]]) -> None:
        for key, (partition, state) in dirty.items():
            raw_key = key.encode()
            value = stored_form(partition, state.to_json())
            table.data[raw_key] = value
            table.send_changelog(partition, raw_key, value)

    def store_chains(dirty: dict[str, tuple[int, ChainState]]) -> None:
        store(chains, dirty)
        for instance, (partition, chain) in dirty.items():
            for seq in chain.added:
                key = pending_key(instance, seq)
                value = stored_form(partition, chain.pending_json(seq))
                pending_links.data[key] = value
                pending_links.send_changelog(partition, key, value)
            for seq in chain.removed:
                key = pending_key(instance, seq)
                pending_links.data.pop(key, None)
                pending_links.send_changelog(partition, key, None)
            chain.added.clear()
            chain.removed.clear()

    def loader(table: Any) -> Any:
        def load(key: str) -> bytes | None:
            value = table.data.get(key.encode())
            return stored_state(value)[1] if value else None

        return load

    orders = {topics.EVENTS: OffsetOrder(), CHAIN_LINKS: OffsetOrder()}

    async def in_order(topic: str, batch: list[Any]) -> list[Any]:
        """The batch's messages this worker has not processed yet, each partition's in
        offset order. A partition whose records came ahead of its next offset is sought
        back to it; those records are left unacknowledged, so no commit passes them.
        Runs inside the step: a broker that cannot answer crashes the worker, as a
        failed step does, rather than leaving the agent dead in a running worker."""
        order = orders[topic]
        # A loop: a rebalance may assign partitions again while the offsets are read.
        while order.unstarted:
            starts = await asyncio.to_thread(
                start_offsets, group_config, topic, sorted(order.unstarted)
            )
            for partition, offset in starts.items():
                order.start(partition, offset)
        admitted: list[Any] = []
        behind: set[int] = set()
        for event in batch:
            message = event.message
            verdict = order.admit(message.partition, message.offset)
            if verdict is Verdict.PROCESS:
                admitted.append(message)
            elif verdict is Verdict.AHEAD:
                # Marked as acknowledged so faust's ack leaves it out of what it commits.
                message.acked = True
                behind.add(message.partition)
        for partition in sorted(behind):
            await rewind(topic, partition)
        return admitted

    async def rewind(topic: str, partition: int) -> None:
        order = orders[topic]
        offset = order.next_offset(partition)
        if offset is None:
            return  # assigned again since the batch was judged: its next batch starts anew
        first = await asyncio.to_thread(first_offset, group_config, topic, partition)
        if order.next_offset(partition) != offset:
            return  # revoked or assigned again while the log start was read
        if offset < first:
            _log.error(
                "%s[%d] offsets %d-%d expired before they were correlated; going on from %d",
                topic,
                partition,
                offset,
                first - 1,
                first,
            )
            offset = first
            order.start(partition, offset)
        _log.warning(
            "%s[%d] delivered records past offset %d; seeking back to it",
            topic,
            partition,
            offset,
        )
        tp = TP(topic, partition)
        if tp in app.consumer.assignment():
            await app.consumer.seek(tp, offset)

    @app.agent(events_topic)
    async def correlate(stream: Any) -> None:
        async for batch in stream.take_events(_BATCH, within=_BATCH_WITHIN):
            async with one_step_at_a_time():
                messages = await in_order(topics.EVENTS, batch)
                if not messages:
                    continue
                records = [(m.partition, m.offset, m.key, m.value) for m in messages]
                sends, dirty = work.on_events(records, loader(trees), _wall_us())
                await deliver(sends)
                store(trees, dirty)
                work.written(dirty, {}, _wall_us())

    @app.agent(links_topic)
    async def check_chains(stream: Any) -> None:
        async for batch in stream.take_events(_BATCH, within=_BATCH_WITHIN):
            async with one_step_at_a_time():
                messages = await in_order(CHAIN_LINKS, batch)
                if not messages:
                    continue
                records = [(m.partition, m.key, m.value) for m in messages]
                sends, dirty = work.on_links(records, _wall_us())
                await deliver(sends)
                store_chains(dirty)
                work.written({}, dirty, _wall_us())

    heartbeat = heartbeat_path(settings)

    @app.timer(interval=1.0)
    async def deadlines() -> None:
        # Proof of life for `custody status`: the timer runs only while the worker does.
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        heartbeat.touch()
        async with one_step_at_a_time():
            sends, tree_dirty, chain_dirty = work.due(
                owned(topics.EVENTS), owned(CHAIN_LINKS), _wall_us()
            )
            await deliver(sends)
            store(trees, tree_dirty)
            store_chains(chain_dirty)
            work.written(tree_dirty, chain_dirty, _wall_us())

    step_lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def one_step_at_a_time() -> AsyncIterator[None]:
        """Compute, deliver and store as one step. The agents and the timer share the
        in-memory trees and chains; interleaved at ``await deliver``, one could store a
        state whose alerts the other has not delivered yet, and a crash would lose them.
        Any failure crashes the worker: memory may be ahead of Kafka, and faust would
        otherwise ack the batch. A restart rebuilds memory from the tables."""
        async with step_lock:
            try:
                yield
            except Exception as exc:
                await app.crash(exc)
                raise

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types receivers narrowly
    async def exact_end_offsets(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        # Runs before recovery on every rebalance, the first join included.
        sent = []
        for table in (trees, chains, pending_links):
            name = table.changelog_topic.get_topic_name()
            for partition in range(partitions):
                sent.append(
                    await app.producer.send(name, RESERVED_KEY, None, partition, None, None)
                )
        for fut in sent:
            await fut
        # After any step in flight, so it cannot put back what is forgotten here.
        async with step_lock:
            work.forget_partitions({tp.partition for tp in revoked})
            for tp in revoked:
                if tp.topic in orders:
                    orders[tp.topic].forget(tp.partition)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def start_in_order(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        # faust counts the offsets between two delivered records as acknowledged when
        # they are not consecutive; the source topics have no such holes (no compaction,
        # no transactions), so a jump means records skipped, never records absent.
        app.consumer._add_gap = _no_gap_filling  # type: ignore[attr-defined]
        # No I/O here: faust's consumer thread waits for this callback. Each agent reads
        # the committed offsets before its next batch.
        for topic, order in orders.items():
            order.assign({tp.partition for tp in assigned if tp.topic == topic})

    def owned(topic: str) -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}

    # The memory store keeps keys of partitions this worker no longer owns: keep only ours.
    @trees.on_recover
    async def index_trees() -> None:
        mine = owned(topics.EVENTS)
        items = [(p, state) for p, state in _stored_items(trees) if p in mine]
        work.recovered_trees(items, _wall_us())

    # One callback for both chain tables: it needs the prefixes and the pending links.
    @pending_links.on_recover
    async def index_chains() -> None:
        mine = owned(CHAIN_LINKS)
        prefixes = [(p, state) for p, state in _stored_items(chains) if p in mine]
        links = [link for p, link in _stored_items(pending_links) if p in mine]
        work.recovered_chains(prefixes, links)

    return app


async def _no_gap_filling(tp: TP, offset_from: int, offset_to: int) -> None:
    """Replaces faust's ``Consumer._add_gap``: the records between are not acknowledged."""


def _keep_queued_events_on_resume(app: faust.App) -> None:
    """Stop faust from dropping fetched events when it resumes a flow that is not paused.

    ``FlowControlEvent.resume`` empties every stream's queue. faust calls it at the end of
    table recovery (``Recovery.on_recovery_completed``) *after* resuming the source
    partitions, while the fetcher (started for the changelog replay) is already running:
    events fetched in between were thrown away, never acked, and the fetcher had moved
    past them, so the agent never saw them and the next commit skipped them (seen in about
    a third of the starts that follow another consumer group's run). Clearing belongs only
    after a suspension (a rebalance), when queued events are stale; a resume of a running
    flow now keeps them (at worst they are replayed after the seek, which the correlator
    absorbs).
    """
    flow = app.flow_control
    resume = flow.resume

    def resume_if_suspended() -> None:
        if not flow.is_active():
            resume()

    flow.resume = resume_if_suspended  # type: ignore[method-assign]


# A state's JSON longer than this is stored zlib-compressed. A tree's state grows with its
# tasks, tokens and scopes (a 1,000-level delegation chain is ~420 KB of JSON), and a
# changelog record over the Kafka client's 1 MB limit would fail to send and crash the
# worker on every restart; compressed, the same tree is a tenth of that.
_COMPRESS_OVER = 4096
# zlib's first byte at any level; a state's JSON starts with "{".
_ZLIB = b"\x78"


def stored_form(partition: int, state_json: bytes) -> bytes:
    """A table value: the partition it belongs to, a newline, the state's JSON (compressed
    when long). The partition is kept so recovery can index deadlines per partition
    without assuming which partitioner the producers used."""
    if len(state_json) > _COMPRESS_OVER:
        state_json = zlib.compress(state_json, 1)
    return b"%d\n%s" % (partition, state_json)


def stored_state(value: bytes) -> tuple[int, bytes]:
    """The partition and the state's JSON of a table value."""
    partition, _, state_json = value.partition(b"\n")
    if state_json[:1] == _ZLIB:
        state_json = zlib.decompress(state_json)
    return int(partition), state_json


def pending_key(instance: str, seq: int) -> bytes:
    return f"{instance}\x1f{seq}".encode()


def _stored_items(table: Any) -> list[tuple[int, bytes]]:
    return [
        stored_state(value)
        for key, value in list(table.data.items())
        if key != RESERVED_KEY and value
    ]


def _faust_security(settings: Settings) -> dict[str, Any]:
    """faust's (aiokafka's) form of the SASL/TLS settings."""
    protocol = settings.security_protocol()
    if protocol == "PLAINTEXT":
        return {}
    context = None
    if "SSL" in protocol:
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_ca_location) if settings.kafka_ssl_ca_location else None
        )
        if settings.kafka_ssl_certificate_location and settings.kafka_ssl_key_location:
            context.load_cert_chain(
                str(settings.kafka_ssl_certificate_location),
                str(settings.kafka_ssl_key_location),
                settings.kafka_ssl_key_password.get_secret_value()
                if settings.kafka_ssl_key_password
                else None,
            )
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        assert password is not None and settings.kafka_sasl_username is not None
        credentials: Any = faust.auth.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    else:
        credentials = faust.auth.SSLCredentials(context)
    return {"broker_credentials": credentials}


def run_worker(settings: Settings) -> None:
    """Create the topics the worker reads, then run it until SIGTERM/SIGINT."""
    ensure_topics(
        settings.kafka_admin(),
        {**settings.event_topic_partitions(), CHAIN_LINKS: settings.event_partitions},
        settings.topic_replication,
    )
    app = build_app(settings)
    worker = _CommitFreezingWorker(app, loglevel="warn", quiet=True)
    # aiokafka logs every send at debug level, which costs a few percent even unseen.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()


class _CommitFreezingWorker(faust.Worker):
    """A worker that stops committing offsets the moment it is asked to stop.

    On a graceful stop faust suspends flow control and then acks (and commits past) the
    events still queued without handing them to the agent, losing them. Freezing commits
    at the signal keeps the last periodic commit, so a stop only causes replays, which
    the correlator absorbs (duplicates change nothing).
    """

    def _freeze_commits(self) -> None:
        async def no_commit(*args: Any, **kwargs: Any) -> bool:
            return False

        consumer: Any = self.app.consumer
        consumer.commit = no_commit
        consumer.force_commit = no_commit

    def _on_sigterm(self) -> None:
        self._freeze_commits()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._freeze_commits()
        super()._on_sigint()
