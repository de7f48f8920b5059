"""The correlator's faust worker, built without a broker: it leaves logging to the
process (JSON lines), has no spinner, and says how far its start has come until ready."""

from __future__ import annotations

import asyncio
import inspect
import io
import logging

import faust
import pytest

from processors.correlator.app import CorrelatorWorker, build_app, start_phase
from producers.settings import Settings


def _worker() -> CorrelatorWorker:
    return CorrelatorWorker(build_app(Settings(kafka_bootstrap="127.0.0.1:9")))


def test_the_worker_leaves_logging_to_the_process_and_has_no_spinner() -> None:
    worker = _worker()
    assert worker.spinner is None
    assert worker.override_logging is False
    assert worker.quiet is True


def test_a_start_says_its_phase_with_the_changelog_records_left() -> None:
    app = build_app(Settings(kafka_bootstrap="127.0.0.1:9"))
    assert start_phase(app) == "joining the consumer group"
    app.in_recovery = True
    # faust's own count of what recovery has left (none: nothing was assigned).
    assert start_phase(app) == "recovering the tables, 0 changelog records left"


def test_a_start_is_reported_until_the_worker_is_ready(caplog: pytest.LogCaptureFixture) -> None:
    # The app tells its worker it is ready through this callback, set by the worker.
    assert "self.on_startup_finished()" in inspect.getsource(faust.App.on_started)

    async def start() -> None:
        worker = _worker()
        worker.stdout = io.StringIO()
        reporting = asyncio.ensure_future(worker._report_start())
        await asyncio.sleep(0.1)
        await worker.on_startup_finished()
        await asyncio.wait_for(reporting, timeout=10)

    with caplog.at_level(logging.INFO, logger="custody.correlate"):
        asyncio.run(start())
    assert [r.getMessage() for r in caplog.records if r.name == "custody.correlate"] == [
        "starting: joining the consumer group",
        "ready: correlating custody.events.v1",
    ]
