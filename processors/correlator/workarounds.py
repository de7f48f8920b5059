"""Every place the correlator works around faust-streaming (or the local broker under it).

Each one says which behaviour it corrects and which faust internal it relies on;
``tests/unit/test_faust_workarounds.py`` fails when that internal is gone or changed, and
when the behaviour corrected is gone (then the workaround may be dropped). Tested with
faust-streaming 0.15 and mode-streaming 0.7, the versions the project pins.

1. :func:`keep_queued_events_on_resume`: resuming a running flow dropped fetched events.
2. :func:`disable_gap_filling`: offsets skipped between two delivered records counted as
   acknowledged.
3. :class:`CommitFreezingWorker`: a graceful stop committed past queued events.
4. :class:`OffsetGuard`: records delivered past records never delivered (faust-streaming
   #216 and #221).
5. :func:`append_end_offset_markers`: a changelog's tail lost at recovery on the local
   broker (Tansu), whose end offsets are short.
6. :func:`write_state` and the other table helpers: state written under the Table API,
   whose writes go to the current event's partition and need one.
7. :func:`turn_off_spinner`: faust's spinner writes terminal control codes into a log.
8. :func:`crash_on_failure`: a table recovery callback's failure went unnoticed.
9. :func:`drop_stale_local_state`: a table's files on disk kept from a changelog that is
   gone (a broker started anew) crashed recovery, or would have been read as current.
10. :func:`shorten_fetch_wait`: faust's fixed 1.5 s fetch wait delayed every record by up
    to that long on the local broker (Tansu), which answers a waiting fetch only when the
    wait ends.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
import rocksdict
from faust.types import TP

from processors.group_offsets import first_offset, start_offsets
from processors.offset_order import OffsetOrder, Verdict

_log = logging.getLogger("custody.correlate")


# ---- 1. the resume replacement --------------------------------------------------------


def keep_queued_events_on_resume(app: faust.App) -> None:
    """Stop faust from dropping fetched events when it resumes a flow that is not paused.

    ``FlowControlEvent.resume`` (mode) empties every stream's queue. faust calls it at the
    end of table recovery (``Recovery.on_recovery_completed``) *after* resuming the source
    partitions, while the fetcher (started for the changelog replay) is already running:
    events fetched in between were thrown away, never acked, and the fetcher had moved
    past them, so the agent never saw them and the next commit skipped them (seen in about
    a third of the starts that follow another consumer group's run). Clearing belongs only
    after a suspension (a rebalance), when queued events are stale; a resume of a running
    flow now keeps them (at worst they are replayed after the seek, which the correlator
    absorbs). The same family of ordering faults as faust-streaming #216 (resuming before
    seeking), which its fix (#217) did not cover.

    Relies on: ``app.flow_control`` being a ``FlowControlEvent`` whose ``resume()`` clears
    the managed queues and whose ``is_active()`` tells a running flow.
    """
    flow = app.flow_control
    resume = flow.resume

    def resume_if_suspended() -> None:
        if not flow.is_active():
            resume()

    flow.resume = resume_if_suspended  # type: ignore[method-assign]


# ---- 2. gap filling off -----------------------------------------------------------------


def disable_gap_filling(consumer: Any) -> None:
    """Stop faust from counting the offsets between two delivered records as acknowledged.

    faust's consumer (``Consumer._drain_messages``) calls ``Consumer._add_gap`` when two
    records it delivers are not consecutive, and the offsets in between then count as
    acknowledged, so the next commit passes them. That suits compacted or transactional
    topics, whose logs have holes; the correlator's source topics have none (no
    compaction, no transactional producers), so there a jump means records skipped (see
    :class:`OffsetGuard`), never records absent. faust-streaming #312 and #606 are about
    the same gap bookkeeping committing past unprocessed records.

    Relies on: ``Consumer._add_gap(tp, offset_from, offset_to)``, a coroutine method
    called through the instance. Idempotent: applied on every assignment.
    """
    consumer._add_gap = _no_gap_filling


async def _no_gap_filling(tp: TP, offset_from: int, offset_to: int) -> None:
    """Replaces ``Consumer._add_gap``: the records between are not acknowledged."""


# ---- 3. the commit freeze ---------------------------------------------------------------


class CommitFreezingWorker(faust.Worker):
    """A worker that stops committing offsets the moment it is asked to stop.

    On a graceful stop faust suspends flow control and then acks (and commits past) the
    events still queued without handing them to the agent, losing them. Freezing commits
    at the signal keeps the last periodic commit, so a stop only causes replays, which
    the correlator absorbs (duplicates change nothing). No faust-streaming issue names it.

    Relies on: mode's ``Worker._on_sigterm``/``_on_sigint`` being the signal handlers, and
    faust's ``Consumer.commit``/``force_commit`` being called through the instance.
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


# ---- 4. the offset guard ----------------------------------------------------------------


class OffsetGuard:
    """The faust side of :mod:`processors.offset_order`: each source partition's records
    reach the worker step once each, in offset order, from the group's committed offset.

    After a restart or a rebalance faust can deliver records fetched at a stale position
    before it seeks back to the committed offsets (faust-streaming #216 and #221; their
    fixes, #217 and #223, leave a restart with a backlog exposed), and a record past ones
    never delivered would let the next commit skip evidence the correlator never saw.

    Relies on: ``Message.acked`` (a message marked acknowledged is left out of what
    ``Consumer.ack`` counts, so no commit passes it), ``Consumer.seek(tp, offset)`` and
    ``Consumer.assignment()``.
    """

    def __init__(self, app: faust.App, group_config: dict[str, Any], topics: Iterable[str]) -> None:
        self._app = app
        self._group_config = group_config
        self._orders = {topic: OffsetOrder() for topic in topics}

    def assigned(self, assigned: Iterable[TP]) -> None:
        """Partitions were (re)assigned: each starts anew at its committed offset. No I/O
        here: faust's consumer thread waits for the callback that calls this; each agent
        reads the committed offsets before its next batch."""
        assigned = set(assigned)
        for topic, order in self._orders.items():
            order.assign({tp.partition for tp in assigned if tp.topic == topic})

    def revoked(self, revoked: Iterable[TP]) -> None:
        """Partitions are no longer this worker's."""
        for tp in revoked:
            order = self._orders.get(tp.topic)
            if order is not None:
                order.forget(tp.partition)

    def next_offset(self, topic: str, partition: int) -> int | None:
        """The offset of the partition's next record to process (None until started)."""
        return self._orders[topic].next_offset(partition)

    async def admitted(self, topic: str, batch: list[Any]) -> list[Any]:
        """The batch's messages this worker has not processed yet, each partition's in
        offset order. A partition whose records came ahead of its next offset is sought
        back to it; those records are left unacknowledged, so no commit passes them.
        Runs inside the step: a broker that cannot answer crashes the worker, as a
        failed step does, rather than leaving the agent dead in a running worker."""
        order = self._orders[topic]
        # A loop: a rebalance may assign partitions again while the offsets are read.
        while order.unstarted:
            starts = await asyncio.to_thread(
                start_offsets, self._group_config, topic, sorted(order.unstarted)
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
            elif verdict is Verdict.REVOKED:
                # Not this worker's until it is assigned again: left for its owner.
                message.acked = True
        for partition in sorted(behind):
            await self._rewind(topic, partition)
        return admitted

    async def _rewind(self, topic: str, partition: int) -> None:
        order = self._orders[topic]
        offset = order.next_offset(partition)
        if offset is None:
            return  # assigned again since the batch was judged: its next batch starts anew
        first = await asyncio.to_thread(first_offset, self._group_config, topic, partition)
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
        consumer = self._app.consumer
        if tp in consumer.assignment():
            await consumer.seek(tp, offset)


# ---- 5. the changelog end-offset markers ------------------------------------------------

# A single-record batch for this key is appended to each changelog partition before
# recovery; readers skip it (see stored_values).
RESERVED_KEY = b"\x00custody-end-offset-marker"


async def append_end_offset_markers(
    app: faust.App, tables: Iterable[Any], partitions: int
) -> dict[TP, int]:
    """Append one tombstone for :data:`RESERVED_KEY` to every partition of each table's
    changelog, wait until the broker has them, and return the offset of each (the end of
    its changelog partition, see :func:`drop_stale_local_state`).

    faust's recovery reads a changelog up to the end offset the broker reports
    (``Recovery._build_highwaters``: highwater minus one is taken as the last record).
    The local broker (Tansu 0.6) answers ListOffsets after a multi-record batch with the
    base offset of the partition's last batch + 1, short of its last records, so a restart
    lost the tail of a table; after a single-record batch that answer is exact again.
    Call it when partitions are revoked: faust sends that signal on every rebalance, the
    first join included, before it recovers the tables.

    Relies on: ``Producer.send(topic, key, value, partition, timestamp, headers)``,
    ``Table.changelog_topic.get_topic_name()``, and ``App.on_partitions_revoked`` being
    sent before recovery.
    """
    sent = []
    for table in tables:
        name = table.changelog_topic.get_topic_name()
        for partition in range(partitions):
            fut = await app.producer.send(name, RESERVED_KEY, None, partition, None, None)
            sent.append((TP(name, partition), fut))
    return {tp: (await fut).offset for tp, fut in sent}


# ---- 6. state written under the Table API -----------------------------------------------


# The RocksDB store's options per partition database (faust's defaults are sized for a
# host of its own: 3 x 64 MiB of write buffers and a 2 GiB block cache per database, and a
# worker has one database per table and partition). The worker reads a tree at most once
# per batch and keeps the busy ones in memory, so a small cache costs little.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 1024 * 1024,
}


def raw_table(app: faust.App, name: str, partitions: int) -> Any:
    """A table of bytes keys and values (serialized by :mod:`processors.correlator.codec`)
    in faust's RocksDB store (one database per partition under the app's data directory),
    written only through :func:`write_state`."""
    schema: Any = faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    # The types (not only the schema) pick the changelog's serializers.
    return app.Table(
        name,
        partitions=partitions,
        default=None,
        schema=schema,
        key_type=bytes,
        value_type=bytes,
        # A copy: faust's store pops its keys from the mapping it is given.
        options=dict(ROCKSDB_OPTIONS),
    )


def write_state(table: Any, partition: int, key: bytes, value: bytes | None) -> None:
    """Store ``value`` under ``key`` (``None``: delete it) in the database of partition
    ``partition`` and send it to that changelog partition.

    faust's ``Table.__setitem__`` sends a write to the partition of the event being
    processed (``Collection.partition_for_key`` reads ``current_event()``) and refuses a
    write outside a stream, and the RocksDB store writes to that event's partition's
    database (``Store._set`` asserts there is one). The worker writes a batch's states
    after the batch, each to the partition its record came from, and the timer writes
    with no event at all; so the database and the changelog are written directly. The
    changelog write, once acknowledged, records its offset in the database
    (``Collection._on_changelog_sent``), from which a restart reads the changelog.

    Relies on: ``Store._db_for_partition(partition)`` (rocksdict's ``Rdict``, opened on
    first use) and ``Collection.send_changelog(partition, key, value)``.
    """
    db = table.data._db_for_partition(partition)
    if value is None:
        db.delete(key)
    else:
        db.put(key, value)
    table.send_changelog(partition, key, value)


def read_state(table: Any, key: bytes) -> bytes | None:
    """The stored value of ``key`` in any of the owned partitions' databases, read as
    :func:`write_state` wrote it (``Store.__getitem__`` would read only the current
    event's partition).

    Relies on: ``Store._dbs`` (partition -> open database).
    """
    for db in list(table.data._dbs.values()):
        value: bytes | None = db.get(key)
        if value is not None:
            return value
    return None


def stored_values(table: Any) -> list[bytes]:
    """Every value in the assigned partitions' databases (read from disk), without the
    end-offset markers, the store's own offset record and empty values.

    Relies on: ``Store._dbs`` (the databases of the partitions assigned, revoked ones
    taken out) and ``Store.offset_key``.
    """
    store = table.data
    skipped = {RESERVED_KEY, store.offset_key}
    return [
        value
        for db in list(store._dbs.values())
        for key, value in db.items()
        if key not in skipped and value
    ]


# ---- 7. the spinner ---------------------------------------------------------------------


def turn_off_spinner(worker: faust.Worker) -> None:
    """Stop faust's terminal spinner from writing into the worker's output.

    ``faust.Worker`` always makes a ``Spinner`` on its stdout, and the spinner writes its
    cursor codes (``begin``/``finish``) whether or not that is a terminal: a worker whose
    output is a log file filled it with escape codes, and nothing else (the log is JSON
    lines, see :mod:`processors.logs`).

    Relies on: ``Worker.spinner``, which faust checks (``if self.spinner``) before every
    use.
    """
    worker.spinner = None


# ---- 8. recovery callbacks that fail ----------------------------------------------------


def crash_on_failure(app: faust.App, callback: Callable[[], Awaitable[None]]) -> Any:
    """``callback`` as a table recovery callback (``Table.on_recover``) whose failure
    crashes the worker, the exception its crash reason (logged, the exit status 1).

    faust runs the tables' recovery callbacks in tasks it waits for with ``asyncio.wait``
    (``Recovery.on_recovery_completed``), which never retrieves their exceptions: a
    callback that failed (saved state this worker cannot read, say) left the worker
    running without the state it was to load, said only by asyncio's "Task exception was
    never retrieved" when the task was collected.

    Relies on: ``App.crash(exc)`` (mode's ``Service.crash``) stopping the worker.
    """

    async def recover() -> None:
        try:
            await callback()
        except Exception as exc:
            await app.crash(exc)

    return recover


# ---- 9. local state of a changelog that is gone -----------------------------------------


def drop_stale_local_state(tables: Iterable[Any], ends: Mapping[TP, int]) -> list[TP]:
    """Delete a partition's database that claims more of its changelog than the
    changelog has: it was written against a changelog that is gone (the local broker
    keeps topics in memory, so ``custody down`` and ``up`` start them anew). Returns the
    changelog partitions whose database was deleted; their recovery reads the changelog
    from its start.

    The RocksDB store keeps, in each partition's database, the offset of the last
    changelog record it holds, and recovery reads the changelog after it. faust checks
    that offset against the changelog's end only to fail (``ConsistencyError``: the
    worker could not start), and a changelog started anew that has grown past it would be
    read from the middle into another changelog's state. ``ends`` are the offsets of the
    end-offset markers just appended (:func:`append_end_offset_markers`): in the
    changelog the database was written from, every record it holds is before them. Only
    databases this process has not opened yet are checked: an open one is its own.

    Relies on: ``Store._dbs``, ``Store.partition_path(partition)``, ``Store.offset_key``
    and its value (the offset as decimal digits), and rocksdict's read-only access.
    """
    dropped = []
    for table in tables:
        store = table.data
        name = table.changelog_topic.get_topic_name()
        for tp, end in ends.items():
            path = store.partition_path(tp.partition)
            if tp.topic != name or tp.partition in store._dbs or not path.exists():
                continue
            db = rocksdict.Rdict(
                str(path),
                options=rocksdict.Options(raw_mode=True),
                access_type=rocksdict.AccessType.read_only(),
            )
            try:
                held = db.get(store.offset_key)
            finally:
                db.close()
            if held is not None and int(held) >= end:
                _log.warning(
                    "%s[%d]: local state holds offset %d, the changelog ends at %d: "
                    "it was written against another changelog; rebuilding from this one",
                    tp.topic,
                    tp.partition,
                    int(held),
                    end,
                )
                shutil.rmtree(path)
                dropped.append(tp)
    return dropped


# ---- 10. the fetch wait -------------------------------------------------------------------

# How long a fetch may wait at the broker for records: about the longest the wait adds to
# an event's way to its alerts on the local broker. Shorter waits cost throughput there
# (50 ms: about a tenth in the correlator benchmark, from the extra fetch round trips).
FETCH_WAIT_MS = 200


def shorten_fetch_wait(app: faust.App, wait_ms: int = FETCH_WAIT_MS) -> None:
    """Make the worker's consumer wait at most ``wait_ms`` for records per fetch.

    faust's aiokafka consumer is created with ``fetch_max_wait_ms=1500``, fixed in
    ``AIOKafkaConsumerThread._create_worker_consumer`` with no setting to change it. A
    broker answers a fetch as soon as records are there; the local broker (Tansu 0.6)
    answers only when the wait ends, so a record that arrived just after a fetch waited up
    to 1.5 s (a consumer with a 1.5 s wait saw 0.4 s median latency on it, one with 10 ms
    30 ms; the correlator's alert latency p99 went from about 1 s to half that). A short
    wait costs an idle worker a fetch request per wait.

    Relies on: ``Consumer._thread`` (the consumer thread) creating its aiokafka consumer
    through ``_create_consumer(loop=...)``, and ``AIOKafkaConsumer._fetch_max_wait_ms``,
    read when it starts its fetcher.
    """
    consumer: Any = app.consumer
    thread = consumer._thread
    create = thread._create_consumer

    def create_waiting_less(loop: asyncio.AbstractEventLoop) -> Any:
        created = create(loop=loop)
        created._fetch_max_wait_ms = wait_ms
        return created

    thread._create_consumer = create_waiting_less
