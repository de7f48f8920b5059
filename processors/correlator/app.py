"""``custody correlate``: the faust-streaming app around the worker step.

Per batch of events, one step (:func:`build_app`'s ``correlate`` agent):

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
partitions.

What faust gets wrong for this worker is corrected in
:mod:`processors.correlator.workarounds`, one place each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import faust

from processors.correlation.chains import ChainState
from processors.correlator import workarounds
from processors.correlator.codec import pending_key, stored_form, stored_state
from processors.correlator.step import CHAIN_LINKS, Correlation, Outbound
from processors.stack import heartbeat_path
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


def build_app(
    settings: Settings, app_id: str = APP_ID, links_topic: str = CHAIN_LINKS
) -> faust.App:
    """The faust app (its id is also the consumer group's, and its tables' prefix): two
    agents, three tables, a timer, and the workarounds; chain links go through
    ``links_topic``."""
    partitions = settings.event_partitions
    group_config = settings.kafka_consumer(app_id)
    session_s = group_config.get("session.timeout.ms", 45_000) / 1000
    app = faust.App(
        app_id,
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
    workarounds.keep_queued_events_on_resume(app)
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(topics.EVENTS, partitions=partitions, internal=False, **raw)
    links = app.topic(links_topic, partitions=partitions, internal=False, **raw)
    trees = workarounds.raw_table(app, "custody-trees", partitions)
    chains = workarounds.raw_table(app, "custody-chains", partitions)
    pending_links = workarounds.raw_table(app, "custody-chain-pending", partitions)
    work = Correlation(settings, links_topic)
    guard = workarounds.OffsetGuard(app, group_config, (topics.EVENTS, links_topic))

    async def deliver(sends: list[Outbound]) -> None:
        pending: list[Awaitable[Any]] = [
            await app.producer.send(s.topic, s.key, s.value, s.partition, None, s.headers)
            for s in sends
        ]
        for fut in pending:
            await fut

    def store(table: Any, dirty: dict[str, tuple[int, Any]]) -> None:
        for key, (partition, state) in dirty.items():
            workarounds.write_state(
                table, partition, key.encode(), stored_form(partition, state.to_json())
            )

    def store_chains(dirty: dict[str, tuple[int, ChainState]]) -> None:
        store(chains, dirty)
        for instance, (partition, chain) in dirty.items():
            for seq in chain.added:
                workarounds.write_state(
                    pending_links,
                    partition,
                    pending_key(instance, seq),
                    stored_form(partition, chain.pending_json(seq)),
                )
            for seq in chain.removed:
                workarounds.write_state(pending_links, partition, pending_key(instance, seq), None)
            chain.added.clear()
            chain.removed.clear()

    def load_tree(key: str) -> bytes | None:
        value = workarounds.read_state(trees, key.encode())
        return stored_state(value)[1] if value else None

    @app.agent(events_topic)
    async def correlate(stream: Any) -> None:
        async for batch in stream.take_events(_BATCH, within=_BATCH_WITHIN):
            async with one_step_at_a_time():
                messages = await guard.admitted(topics.EVENTS, batch)
                if not messages:
                    continue
                records = [(m.partition, m.offset, m.key, m.value) for m in messages]
                sends, dirty = work.on_events(records, load_tree, _wall_us())
                await deliver(sends)
                store(trees, dirty)
                work.written(dirty, {}, _wall_us())

    @app.agent(links)
    async def check_chains(stream: Any) -> None:
        async for batch in stream.take_events(_BATCH, within=_BATCH_WITHIN):
            async with one_step_at_a_time():
                messages = await guard.admitted(links_topic, batch)
                if not messages:
                    continue
                records = [(m.partition, m.key, m.value) for m in messages]
                sends, dirty = work.on_links(records, _wall_us())
                await deliver(sends)
                store_chains(dirty)
                work.written({}, dirty, _wall_us())

    heartbeat = heartbeat_path(settings)

    async def deadlines() -> None:
        # Proof of life for `custody status`: the timer runs only while the worker does.
        heartbeat.parent.mkdir(parents=True, exist_ok=True)
        heartbeat.touch()
        async with one_step_at_a_time():
            sends, tree_dirty, chain_dirty = work.due(
                owned(topics.EVENTS), owned(links_topic), _wall_us()
            )
            await deliver(sends)
            store(trees, tree_dirty)
            store_chains(chain_dirty)
            work.written(tree_dirty, chain_dirty, _wall_us())

    # faust's timer decorator is untyped.
    timer: Any = app.timer
    timer(interval=1.0)(deadlines)

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
    async def on_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", set())
        # Runs before recovery on every rebalance, the first join included.
        await workarounds.append_end_offset_markers(app, (trees, chains, pending_links), partitions)
        # After any step in flight, so it cannot put back what is forgotten here.
        async with step_lock:
            work.forget_partitions({tp.partition for tp in revoked})
            guard.revoked(revoked)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", set())
        workarounds.disable_gap_filling(app.consumer)
        guard.assigned(assigned)

    def owned(topic: str) -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic}

    # The memory store keeps keys of partitions this worker no longer owns: keep only ours.
    async def index_trees() -> None:
        mine = owned(topics.EVENTS)
        items = [stored_state(value) for value in workarounds.stored_values(trees)]
        work.recovered_trees([(p, state) for p, state in items if p in mine], _wall_us())

    # One callback for both chain tables: it needs the prefixes and the pending links.
    async def index_chains() -> None:
        mine = owned(links_topic)
        prefixes = [stored_state(value) for value in workarounds.stored_values(chains)]
        links = [stored_state(value) for value in workarounds.stored_values(pending_links)]
        work.recovered_chains(
            [(p, prefix) for p, prefix in prefixes if p in mine],
            [link for p, link in links if p in mine],
        )

    trees.on_recover(workarounds.crash_on_failure(app, index_trees))
    pending_links.on_recover(workarounds.crash_on_failure(app, index_chains))
    return app


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


def run_worker(settings: Settings, app_id: str = APP_ID, links_topic: str = CHAIN_LINKS) -> None:
    """Create the topics the worker reads, then run it until SIGTERM/SIGINT (``app_id``
    and ``links_topic``: see :func:`build_app`)."""
    ensure_topics(
        settings.kafka_admin(),
        {**settings.event_topic_partitions(), links_topic: settings.event_partitions},
        settings.topic_replication,
    )
    # aiokafka logs every send at debug level, which costs a few percent even unseen;
    # faust's and mode's info records are multi-line tables.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    CorrelatorWorker(build_app(settings, app_id, links_topic)).execute_from_commandline()
