"""Each faust workaround of the correlator (processors/correlator/workarounds.py) against
the installed faust-streaming: the internal it relies on is there with the expected
signature, the behaviour it corrects is still faust's, and applying it changes that on
real faust objects (an app built without a broker). A failure here after an upgrade says
which workaround to revisit."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import mode
import pytest
from faust.stores.rocksdb import Store as RocksStore
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import Producer
from faust.types import TP
from faust.types.tuples import Message
from faust.utils.terminal.spinners import Spinner
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from processors.correlator import workarounds

EVENTS = TP("custody.events.v1", 0)


def _app() -> faust.App:
    return faust.App(
        "custody-workarounds-test",
        broker="kafka://127.0.0.1:9",
        store="memory://",
        web_enabled=False,
    )


def _rocks_app(datadir: Path) -> faust.App:
    """An app with the correlator's store: RocksDB through rocksdict, under ``datadir``."""
    return faust.App(
        "custody-workarounds-test",
        broker="kafka://127.0.0.1:9",
        store="rocksdb://",
        datadir=str(datadir),
        web_enabled=False,
    )


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _message(offset: int) -> Message:
    return Message(EVENTS.topic, EVENTS.partition, offset, 0.0, 0, None, b"k", b"v", None)


def test_the_installed_faust_is_the_minor_version_the_workarounds_were_tested_with() -> None:
    assert version("faust-streaming").startswith("0.15.")
    assert version("mode-streaming").startswith("0.7.")


# ---- 1. the resume replacement ----------------------------------------------------------


def _queue_after_resume(flow: FlowControlEvent, suspend_first: bool) -> int:
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()
    queue.put_nowait(1)
    if suspend_first:
        flow.suspend()
    flow.resume()
    return queue.qsize()


def test_resume_of_a_running_flow_keeps_the_queued_events() -> None:
    assert _parameters(FlowControlEvent.resume) == ["self"]
    assert _parameters(FlowControlEvent.is_active) == ["self"]
    # What faust does: a resume empties the queues even if the flow was running.
    assert isinstance(_app().flow_control, FlowControlEvent)
    assert _queue_after_resume(_app().flow_control, suspend_first=False) == 0

    app = _app()
    workarounds.keep_queued_events_on_resume(app)
    assert _queue_after_resume(app.flow_control, suspend_first=False) == 1
    # After a suspension (a rebalance) the queued events are stale: still cleared.
    assert _queue_after_resume(app.flow_control, suspend_first=True) == 0


# ---- 2. gap filling off -----------------------------------------------------------------


def test_gap_filling_is_off() -> None:
    assert _parameters(Consumer._add_gap) == ["self", "tp", "offset_from", "offset_to"]
    assert inspect.iscoroutinefunction(Consumer._add_gap)
    # Called through the instance, so an instance attribute replaces it.
    assert "self._add_gap(" in inspect.getsource(Consumer._drain_messages)

    async def gaps(disable: bool) -> object:
        consumer: Any = _app().consumer
        if disable:
            workarounds.disable_gap_filling(consumer)
        await consumer._add_gap(EVENTS, 3, 7)
        return consumer._gap.get(EVENTS)

    assert asyncio.run(gaps(disable=False))  # faust counts offsets 3-7 as acknowledged
    assert not asyncio.run(gaps(disable=True))


# ---- 3. the commit freeze ---------------------------------------------------------------


def test_a_stop_signal_freezes_commits() -> None:
    handlers = inspect.getsource(mode.Worker._install_signal_handlers_unix)
    assert "self._on_sigterm" in handlers
    assert "self._on_sigint" in handlers
    for name in ("commit", "force_commit"):
        assert _parameters(getattr(Consumer, name)) == ["self", "topics", "start_new_transaction"]

    async def commits_after(signal_handler: str) -> list[bool]:
        app = _app()
        worker = workarounds.CommitFreezingWorker(app, quiet=True, stdout=io.StringIO())
        getattr(worker, signal_handler)()
        assert worker._signal_stop_future is not None
        worker._signal_stop_future.cancel()
        consumer: Any = app.consumer
        return [await consumer.commit({EVENTS}), await consumer.force_commit({EVENTS})]

    assert asyncio.run(commits_after("_on_sigterm")) == [False, False]
    assert asyncio.run(commits_after("_on_sigint")) == [False, False]


# ---- 4. the offset guard ----------------------------------------------------------------


def test_a_record_marked_acknowledged_is_left_out_of_what_faust_commits() -> None:
    assert _parameters(Consumer.seek) == ["self", "partition", "offset"]
    assert _parameters(Consumer.assignment) == ["self"]
    consumer: Any = _app().consumer
    ahead = _message(5)
    ahead.acked = True  # what OffsetGuard does to a record delivered ahead of its turn
    assert consumer.ack(ahead) is False
    assert not consumer._acked.get(EVENTS)


def test_records_of_a_revoked_partition_are_left_for_its_next_owner() -> None:
    guard = workarounds.OffsetGuard(_app(), {}, [EVENTS.topic])
    guard.revoked([EVENTS])
    fetched = _message(5)
    # What faust had fetched before the rebalance, handed over while it is under way.
    admitted = asyncio.run(guard.admitted(EVENTS.topic, [SimpleNamespace(message=fetched)]))
    assert admitted == []
    assert fetched.acked  # so no commit passes it
    assert guard.next_offset(EVENTS.topic, EVENTS.partition) is None


# ---- 5. the changelog end-offset markers ------------------------------------------------


def test_end_offset_markers_are_sent_before_recovery_and_skipped_when_read(
    tmp_path: Path,
) -> None:
    assert _parameters(Producer.send)[:7] == [
        "self",
        "topic",
        "key",
        "value",
        "partition",
        "timestamp",
        "headers",
    ]
    assert "on_partitions_revoked.send" in inspect.getsource(faust.App._on_partitions_revoked)
    assert "tables.on_rebalance" in inspect.getsource(faust.App._on_partitions_assigned)
    # What the markers correct: recovery reads up to the end offsets the broker reports.
    assert "consumer.highwaters(" in inspect.getsource(Recovery._build_highwaters)

    table = workarounds.raw_table(_rocks_app(tmp_path), "custody-trees", 3)
    assert (
        table.changelog_topic.get_topic_name() == "custody-workarounds-test-custody-trees-changelog"
    )
    db = table.data._db_for_partition(1)
    db.put(workarounds.RESERVED_KEY, b"")
    db.put(b"tree", b"1\n{}")
    table.data.set_persisted_offset(TP(table.changelog_topic.get_topic_name(), 1), 7)
    assert workarounds.stored_values(table) == [b"1\n{}"]


# ---- 6. state written under the Table API -----------------------------------------------


def test_state_is_written_to_the_store_and_the_changelog_partition_given(tmp_path: Path) -> None:
    assert _parameters(Collection.send_changelog) == [
        "self",
        "partition",
        "key",
        "value",
        "key_serializer",
        "value_serializer",
    ]
    sent: list[tuple[int | None, bytes, bytes | None]] = []

    assert _parameters(RocksStore._db_for_partition) == ["self", "partition"]
    assert "current_event()" in inspect.getsource(RocksStore._set)

    async def write() -> None:
        table = workarounds.raw_table(_rocks_app(tmp_path), "custody-trees", 3)
        assert isinstance(table.data, RocksStore)
        assert table.data.use_rocksdict
        # What faust does: a write through the Table API needs an event being processed.
        with pytest.raises(TypeError, match="outside of stream iteration"):
            table[b"tree"] = b"0\n{}"
        send_changelog = table.send_changelog

        def recording(partition: int | None, key: bytes, value: bytes | None) -> object:
            sent.append((partition, key, value))
            return send_changelog(partition, key, value)

        table.send_changelog = recording
        workarounds.write_state(table, 2, b"tree", b"2\n{}")
        assert workarounds.read_state(table, b"tree") == b"2\n{}"
        # In partition 2's database, the one the changelog partition restores.
        assert table.data._db_for_partition(2).get(b"tree") == b"2\n{}"
        assert table.data._db_for_partition(1).get(b"tree") is None
        workarounds.write_state(table, 2, b"tree", None)
        assert workarounds.read_state(table, b"tree") is None

    asyncio.run(write())
    assert sent == [(2, b"tree", b"2\n{}"), (2, b"tree", None)]


# ---- 7. the spinner ---------------------------------------------------------------------


def test_the_spinner_writes_nothing_into_a_log() -> None:
    # What faust does: the spinner writes cursor codes even where there is no terminal.
    log = io.StringIO()
    Spinner(file=log).update()
    assert "\x1b[" in log.getvalue()

    log = io.StringIO()
    worker = faust.Worker(_app(), quiet=True, stdout=log)
    assert isinstance(worker.spinner, Spinner)
    workarounds.turn_off_spinner(worker)
    assert worker.spinner is None
    worker._on_startup_end_spinner()
    worker.on_worker_shutdown()
    assert log.getvalue() == ""


# ---- 8. recovery callbacks that fail ----------------------------------------------------


def test_a_recovery_callback_that_fails_crashes_the_worker() -> None:
    # What faust does: it waits for the callbacks' tasks without retrieving their errors.
    assert "asyncio.wait(" in inspect.getsource(Recovery.on_recovery_completed)
    assert _parameters(faust.App.crash) == ["self", "reason"]

    async def crash_reason() -> BaseException | None:
        app = _app()

        async def index() -> None:
            raise ValueError("saved state of an unknown format")

        await workarounds.crash_on_failure(app, index)()
        return app.crash_reason

    reason = asyncio.run(crash_reason())
    assert isinstance(reason, ValueError)
    assert "unknown format" in str(reason)


# ---- 9. local state of a changelog that is gone -----------------------------------------


def test_local_state_ahead_of_its_changelog_is_dropped_before_recovery(tmp_path: Path) -> None:
    # What faust does: recovery fails when a database claims more than the changelog has.
    assert "ConsistencyError(" in inspect.getsource(Recovery._restart_recovery.fun)
    assert RocksStore.offset_key == b"__faust\x00offset__"
    assert _parameters(RocksStore.partition_path) == ["self", "partition"]

    table = workarounds.raw_table(_rocks_app(tmp_path), "custody-trees", 3)
    changelog = table.changelog_topic.get_topic_name()
    for partition in (0, 1):
        table.data._db_for_partition(partition).put(b"tree", b"x")
        table.data.set_persisted_offset(TP(changelog, partition), 10)
    for db in table.data._dbs.values():
        db.close()

    # A new process: partition 0's changelog ends before what its database holds.
    restarted = workarounds.raw_table(_rocks_app(tmp_path), "custody-trees", 3)
    ends = {TP(changelog, 0): 4, TP(changelog, 1): 11, TP(changelog, 2): 0}
    assert workarounds.drop_stale_local_state([restarted], ends) == [TP(changelog, 0)]
    assert not restarted.data.partition_path(0).exists()
    assert restarted.data.persisted_offset(TP(changelog, 1)) == 10
    assert restarted.data._db_for_partition(1).get(b"tree") == b"x"
    # A database this process has opened is its own: never checked.
    assert workarounds.drop_stale_local_state([restarted], {TP(changelog, 1): 0}) == []


# ---- 10. the fetch wait ------------------------------------------------------------------


def test_the_consumer_waits_less_for_records_per_fetch() -> None:
    # What faust does: a fixed wait, and aiokafka hands the consumer's to its fetcher.
    create = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    # aiokafka ships no type hints (the project's mypy settings ignore faust's only).
    client: Any = importlib.import_module("aiokafka")
    start = client.AIOKafkaConsumer.start
    assert "fetch_max_wait_ms=1500" in inspect.getsource(create)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(start)

    async def created(app: faust.App) -> int:
        thread: Any = app.consumer
        consumer = thread._thread._create_consumer(loop=asyncio.get_running_loop())
        try:
            wait: int = consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()
        return wait

    assert asyncio.run(created(_app())) == 1500
    shortened = _app()
    workarounds.shorten_fetch_wait(shortened, 50)
    assert asyncio.run(created(shortened)) == 50
