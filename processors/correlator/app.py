"""``custody correlate``: the faust-streaming app around the worker step.

Per batch of events, one step (:meth:`Correlator.correlate`, the ``correlate`` agent):

0. keep only the records due next, each partition's in offset order (the offset guard,
   :class:`~processors.correlator.workarounds.OffsetGuard`);
1. compute (:meth:`processors.correlator.step.Correlation.on_events`: decode or
   dead-letter, redact, the engine, the outputs);
2. send the outputs and **wait until Kafka has them**;
3. only then write the trees to the table (its changelog).

At-least-once without transactions (Tansu's are unsafe): a crash before step 3 replays
the batch from the committed offset against the old trees, which re-derives the same
outputs with the same keys and ids, so downstream sees repeats, never holes. faust
commits an offset only after flushing its producer, so the table never trails the offsets.
A second agent checks the chain links the same way, and a timer decides deadlines on idle
partitions. Each step is counted in the worker's metrics (:mod:`.metrics`).

What faust gets wrong for this worker is corrected in
:mod:`processors.correlator.workarounds`, one place each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust
from faust.types import TP

from processors.correlation.chains import ChainState
from processors.correlator import workarounds
from processors.correlator.codec import pending_key, stored_form, stored_state
from processors.correlator.metrics import (
    EVENTS_STEP,
    LINKS_STEP,
    TIMER_STEP,
    CorrelatorMetrics,
    serve,
)
from processors.correlator.step import CHAIN_LINKS, Correlation, Outbound
from processors.stack import CORRELATE, METRICS_ADDRESS, data_path, heartbeat_path
from producers.admin import ensure_topics
from producers.settings import Settings
from schemas import topics

APP_ID = "custody-correlate"
_BATCH = 1000
_BATCH_WITHIN = 0.2
# How often a starting worker checks how far it has come, and says so when that changed
# (what `custody up` shows); it says it again at least every _PROGRESS_REPEAT seconds, so
# its log stops moving only when the worker is stuck.
_PROGRESS_INTERVAL = 2.0
_PROGRESS_REPEAT = 30.0

_log = logging.getLogger("custody.correlate")


def _wall_us() -> int:
    return time.time_ns() // 1000


def app_options(settings: Settings, name: str = CORRELATE) -> dict[str, Any]:
    """The settings of the worker's ``faust.App`` (the benchmark's bare-faust floor runs
    with the same); ``name``: the worker's, whose data directory it uses."""
    session_s = settings.kafka_consumer(APP_ID).get("session.timeout.ms", 45_000) / 1000
    datadir = data_path(settings, name)
    # faust makes only the last level of its data directory.
    datadir.mkdir(parents=True, exist_ok=True)
    return {
        "broker": [f"kafka://{s}" for s in settings.kafka_bootstrap.split(",")],
        # faust's RocksDB store (through rocksdict, see workarounds.raw_table): the tables
        # live on disk under datadir, and a restart reads only the changelog written since.
        "store": "rocksdb://",
        # One per worker: several workers may run on one host.
        "datadir": str(datadir),
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.event_partitions,
        "topic_disable_leader": True,
        "web_enabled": False,
        "broker_session_timeout": session_s,
        "broker_heartbeat_interval": session_s / 6,
        "broker_rebalance_timeout": session_s,
        "broker_commit_interval": 1.0,
        "broker_max_poll_records": 10_000,
        "stream_buffer_maxsize": 16_384,
        "consumer_auto_offset_reset": "earliest",
        "table_standby_replicas": 0,
        "producer_acks": -1,
        "producer_linger": 0.005,
        "stream_wait_empty": False,
        **_faust_security(settings),
    }


class Correlator:
    """The faust app (:attr:`app`; its id is also the consumer group's, and its tables'
    prefix) around the worker step: two agents, three tables, a timer, the workarounds,
    and the worker's metrics (:attr:`metrics`); chain links go through ``links_topic``;
    ``name`` is the worker's on this host (its heartbeat and data directory)."""

    def __init__(
        self,
        settings: Settings,
        app_id: str = APP_ID,
        links_topic: str = CHAIN_LINKS,
        name: str = CORRELATE,
    ) -> None:
        partitions = settings.event_partitions
        self.app = app = faust.App(app_id, **app_options(settings, name))
        workarounds.keep_queued_events_on_resume(app)
        workarounds.shorten_fetch_wait(app)
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.links_topic = links_topic
        self.partitions = partitions
        self.events = app.topic(topics.EVENTS, partitions=partitions, internal=False, **raw)
        self.links = app.topic(links_topic, partitions=partitions, internal=False, **raw)
        self.trees = workarounds.raw_table(app, "custody-trees", partitions)
        self.chains = workarounds.raw_table(app, "custody-chains", partitions)
        self.pending_links = workarounds.raw_table(app, "custody-chain-pending", partitions)
        # Digests of retired trees and chains (processors/correlation/retention.py).
        self.retired = workarounds.raw_table(app, "custody-retired", partitions)
        self.work = Correlation(settings, links_topic)
        self.metrics = CorrelatorMetrics(self.work)
        group_config = settings.kafka_consumer(app_id)
        self.guard = workarounds.OffsetGuard(app, group_config, (topics.EVENTS, links_topic))
        self.heartbeat = heartbeat_path(settings, name)
        self.step_lock = asyncio.Lock()
        # From a rebalance's start (its changelog end markers) until its tables are
        # recovered: no step may write state then (see on_revoked).
        self.rebalancing = False
        self._wire()

    def _wire(self) -> None:
        app = self.app
        app.agent(self.events, name="correlate")(self.correlate)
        app.agent(self.links, name="check_chains")(self.check_chains)
        # faust's timer decorator is untyped.
        timer: Any = app.timer
        timer(interval=1.0, name="deadlines")(self.deadlines)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]  # mode types receivers narrowly
        app.on_partitions_assigned.connect(self.on_assigned)  # type: ignore[arg-type]
        app.on_rebalance_complete.connect(self.on_rebalanced)  # type: ignore[arg-type]
        self.trees.on_recover(workarounds.crash_on_failure(app, self.index_trees))
        self.pending_links.on_recover(workarounds.crash_on_failure(app, self.index_chains))
        self.retired.on_recover(workarounds.crash_on_failure(app, self.index_retired))

    # ---- the steps -----------------------------------------------------------------------

    async def correlate(self, stream: Any) -> None:
        """The events agent: one step per batch."""
        await self._steps(stream, topics.EVENTS, EVENTS_STEP, self._events_step)

    async def check_chains(self, stream: Any) -> None:
        """The chain-links agent: one step per batch."""
        await self._steps(stream, self.links_topic, LINKS_STEP, self._links_step)

    async def _steps(
        self,
        stream: Any,
        topic: str,
        kind: str,
        step: Callable[[list[Any]], Awaitable[tuple[int, list[Outbound]]]],
    ) -> None:
        """An agent's loop: each batch's admitted records (none: no step) go through
        ``step``, which returns how many source records it took and what it sent."""
        async for batch in stream.take_events(_BATCH, within=_BATCH_WITHIN):
            async with self.one_step_at_a_time():
                messages = await self.guard.admitted(topic, batch)
                if not messages:
                    continue
                started = time.perf_counter()
                records, sends = await step(messages)
                self.metrics.stepped(kind, records, sends, time.perf_counter() - started)

    async def _events_step(self, messages: list[Any]) -> tuple[int, list[Outbound]]:
        records = [(m.partition, m.offset, m.key, m.value) for m in messages]
        sends, dirty = self.work.on_events(records, self.load_tree, _wall_us())
        await self.deliver(sends)
        self.store(self.trees, dirty)
        self.work.written(dirty, {}, _wall_us())
        return len(records), sends

    async def _links_step(self, messages: list[Any]) -> tuple[int, list[Outbound]]:
        # Links are not source records: the events step counted their events.
        sends, dirty = self.work.on_links(
            [(m.partition, m.key, m.value) for m in messages], _wall_us()
        )
        await self.deliver(sends)
        self.store_chains(dirty)
        self.work.written({}, dirty, _wall_us())
        return 0, sends

    async def deadlines(self) -> None:
        """The timer's step, every second: deadlines on idle partitions, the source
        watermarks, the consumer lag, and the heartbeat."""
        # Proof of life for `custody status`: the timer runs only while the worker does.
        self.heartbeat.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat.touch()
        self.measure_lag()
        async with self.one_step_at_a_time():
            if self.rebalancing:
                return
            started = time.perf_counter()
            self.work.reading_behind(self.backlogged(), _wall_us())
            sends, tree_dirty, chain_dirty = self.work.due(
                self.owned(topics.EVENTS), self.owned(self.links_topic), _wall_us()
            )
            await self.deliver(sends)
            self.store(self.trees, tree_dirty)
            self.store_chains(chain_dirty)
            for partition, key, value in self.work.retired_records():
                workarounds.write_state(self.retired, partition, key, value)
            self.work.written(tree_dirty, chain_dirty, _wall_us())
            self.metrics.stepped(TIMER_STEP, 0, sends, time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def one_step_at_a_time(self) -> AsyncIterator[None]:
        """Compute, deliver and store as one step. The agents and the timer share the
        in-memory trees and chains; interleaved at ``await deliver``, one could store a
        state whose alerts the other has not delivered yet, and a crash would lose them.
        Any failure crashes the worker: memory may be ahead of Kafka, and faust would
        otherwise ack the batch. A restart rebuilds memory from the tables."""
        async with self.step_lock:
            try:
                yield
            except Exception as exc:
                await self.app.crash(exc)
                raise

    # ---- outputs and state -----------------------------------------------------------------

    async def deliver(self, sends: list[Outbound]) -> None:
        """Send every output and wait until Kafka has them all."""
        producer = self.app.producer
        pending: list[Awaitable[Any]] = [
            await producer.send(s.topic, s.key, s.value, s.partition, None, s.headers)
            for s in sends
        ]
        for fut in pending:
            await fut

    def store(self, table: Any, dirty: dict[str, tuple[int, Any]]) -> None:
        """Write the states ``dirty`` to ``table``, each to its partition; a state of None
        (a retired tree) deletes its key, a tombstone in the changelog."""
        for key, (partition, state) in dirty.items():
            value = None if state is None else stored_form(partition, state.to_json())
            workarounds.write_state(table, partition, key.encode(), value)

    def store_chains(self, dirty: dict[str, tuple[int, ChainState]]) -> None:
        """Write the chains ``dirty`` and their pending links added or removed (a retired
        chain: delete its prefix and every pending link)."""
        self.store(self.chains, {i: (p, None if c.retired else c) for i, (p, c) in dirty.items()})
        for instance, (partition, chain) in dirty.items():
            for seq in chain.added:
                workarounds.write_state(
                    self.pending_links,
                    partition,
                    pending_key(instance, seq),
                    stored_form(partition, chain.pending_json(seq)),
                )
            for seq in chain.removed:
                workarounds.write_state(
                    self.pending_links, partition, pending_key(instance, seq), None
                )
            chain.added.clear()
            chain.removed.clear()

    def load_tree(self, key: str) -> bytes | None:
        """A tree's stored JSON, if the table has it."""
        value = workarounds.read_state(self.trees, key.encode())
        return stored_state(value)[1] if value else None

    # ---- partitions --------------------------------------------------------------------------

    def owned(self, topic: str) -> set[int]:
        """The partitions of ``topic`` this worker owns now."""
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def measure_lag(self) -> None:
        """Each owned partition's records not processed yet: its highwater as the last
        fetch response gave it (no request of its own) minus the next offset to process.
        Partitions not started or not fetched yet are left out."""
        consumer = self.app.consumer
        assigned = consumer.assignment()
        for topic in (topics.EVENTS, self.links_topic):
            for partition in self.owned(topic):
                tp = TP(topic, partition)
                next_offset = self.guard.next_offset(topic, partition)
                highwater = consumer.highwater(tp) if tp in assigned else None
                if next_offset is not None and highwater is not None:
                    self.metrics.lagging(topic, partition, highwater - next_offset)

    def backlogged(self) -> set[int]:
        """The owned event partitions with records not processed yet, or whose end is not
        known yet (no fetch response so far)."""
        consumer = self.app.consumer
        assigned = consumer.assignment()
        behind = set()
        for partition in self.owned(topics.EVENTS):
            tp = TP(topics.EVENTS, partition)
            next_offset = self.guard.next_offset(topics.EVENTS, partition)
            highwater = consumer.highwater(tp) if tp in assigned else None
            if next_offset is None or highwater is None or highwater > next_offset:
                behind.add(partition)
        return behind

    async def on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """Before a rebalance: the changelog markers, then forget the revoked partitions."""
        revoked = args[0] if args else kwargs.get("revoked", set())
        tables = (self.trees, self.chains, self.pending_links, self.retired)
        # After any step in flight: it cannot put back what is forgotten here, nor write to
        # a changelog after its end marker (recovery would then find a table's stored
        # offset past the end it reads, and crash). Until the tables are recovered, the
        # agents' records of revoked partitions are left for their owner (the offset
        # guard) and the timer steps not.
        async with self.step_lock:
            self.rebalancing = True
            # Runs before recovery on every rebalance, the first join included.
            ends = await workarounds.append_end_offset_markers(self.app, tables, self.partitions)
            workarounds.drop_stale_local_state(tables, ends)
            self.work.forget_partitions({tp.partition for tp in revoked})
            self.guard.revoked(revoked)
        for topic in (topics.EVENTS, self.links_topic):
            self.metrics.forget({(topic, tp.partition) for tp in revoked if tp.topic == topic})

    async def on_rebalanced(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """The rebalance is over, its tables recovered (faust sends this before it resumes
        the streams): the timer may step again."""
        self.rebalancing = False

    async def on_assigned(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        """After a rebalance: gap filling off, each partition starts anew."""
        assigned = args[0] if args else kwargs.get("assigned", set())
        workarounds.disable_gap_filling(self.app.consumer)
        self.guard.assigned(assigned)

    # A stored value names its partition: keep those of the partitions owned now.
    async def index_trees(self) -> None:
        """After the trees' recovery: index those of the owned partitions."""
        mine = self.owned(topics.EVENTS)
        items = [stored_state(value) for value in workarounds.stored_values(self.trees)]
        self.work.recovered_trees([(p, state) for p, state in items if p in mine], _wall_us())

    # One callback for both chain tables: it needs the prefixes and the pending links.
    async def index_chains(self) -> None:
        """After the chain tables' recovery: the chains of the owned partitions."""
        mine = self.owned(self.links_topic)
        prefixes = [stored_state(value) for value in workarounds.stored_values(self.chains)]
        links = [stored_state(value) for value in workarounds.stored_values(self.pending_links)]
        self.work.recovered_chains(
            [(p, prefix) for p, prefix in prefixes if p in mine],
            [link for p, link in links if p in mine],
        )

    async def index_retired(self) -> None:
        """After the retired keys' recovery: those of the owned partitions (a chunk of
        retired chains belongs to a chain-links partition, whose number it shares)."""
        mine = self.owned(topics.EVENTS) | self.owned(self.links_topic)
        items = [stored_state(value) for value in workarounds.stored_values(self.retired)]
        self.work.recovered_retired([(p, chunk) for p, chunk in items if p in mine])


def build_app(
    settings: Settings,
    app_id: str = APP_ID,
    links_topic: str = CHAIN_LINKS,
    name: str = CORRELATE,
) -> faust.App:
    """The worker's faust app (see :class:`Correlator`)."""
    return Correlator(settings, app_id, links_topic, name).app


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
        if password is None or settings.kafka_sasl_username is None:
            # Settings refuses a mechanism without both; this tells the type checker.
            raise ValueError("SASL needs CUSTODY_KAFKA_SASL_USERNAME and _PASSWORD")
        credentials: Any = faust.auth.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    else:
        credentials = faust.auth.SSLCredentials(context)
    return {"broker_credentials": credentials}


class CorrelatorWorker(workarounds.CommitFreezingWorker):
    """The correlator's faust worker: logs through the process's own logging (JSON
    lines, :mod:`processors.logs`), never a spinner, and says how far its start has come
    until it is ready."""

    def __init__(self, app: faust.App) -> None:
        super().__init__(app, quiet=True, override_logging=False)
        workarounds.turn_off_spinner(self)
        self._ready = False

    async def on_first_start(self) -> None:
        """Start reporting the start's progress (mode calls this once, before the app
        starts)."""
        await super().on_first_start()
        self.add_future(self._report_start())

    async def on_startup_finished(self) -> None:
        """The tables are recovered and the agents run."""
        await super().on_startup_finished()
        self._ready = True
        _log.info("ready: correlating %s", topics.EVENTS)

    def stop_and_shutdown(self) -> None:
        """Stop; after a crash, log its reason last, with its exception. What failed
        while the services stopped (a consumer thread whose loop is closed, say) is logged
        after the crash, and the last error is what ``custody up`` reports."""
        try:
            super().stop_and_shutdown()
        finally:
            if self.crash_reason is not None:
                _log.error("crashed: %s", self.crash_reason, exc_info=self.crash_reason)

    async def _report_start(self) -> None:
        """Log the start's phase when it changes, and at least every
        :data:`_PROGRESS_REPEAT` seconds, until the worker is ready: a start whose log
        stops moving is stuck (``custody up`` reads it so)."""
        said, said_at = "", 0.0
        while not self._ready:
            phase = start_phase(self.app)
            if phase != said or time.monotonic() - said_at >= _PROGRESS_REPEAT:
                _log.info("starting: %s", phase)
                said, said_at = phase, time.monotonic()
            await asyncio.sleep(_PROGRESS_INTERVAL)


def start_phase(app: Any) -> str:
    """Where a start is: joining the group, or recovering the tables (with how many
    changelog records are left)."""
    if not app.in_recovery:
        return "joining the consumer group"
    left = app.tables.recovery.active_remaining_total()
    return f"recovering the tables, {left:,} changelog records left"


def run_worker(
    settings: Settings,
    app_id: str = APP_ID,
    links_topic: str = CHAIN_LINKS,
    name: str = CORRELATE,
    metrics_address: str = METRICS_ADDRESS,
) -> None:
    """Serve the worker's metrics on ``metrics_address`` (``HOST:PORT``; a
    :class:`~.metrics.MetricsError` at once if it cannot be), create the topics it reads,
    then run it until SIGTERM/SIGINT (``app_id``, ``links_topic`` and ``name``: see
    :class:`Correlator`)."""
    # aiokafka logs every send at debug level, which costs a few percent even unseen;
    # faust's and mode's info records are multi-line tables.
    for logger in ("aiokafka", "faust", "mode"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    correlator = Correlator(settings, app_id, links_topic, name)
    serve(correlator.metrics, metrics_address)
    ensure_topics(
        settings.kafka_admin(),
        {**settings.event_topic_partitions(), links_topic: settings.event_partitions},
        settings.topic_replication,
    )
    CorrelatorWorker(correlator.app).execute_from_commandline()
