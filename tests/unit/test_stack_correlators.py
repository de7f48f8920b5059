"""The local stack's correlator workers: their names, the count ``up`` keeps, each one's
metrics port, what ``status`` shows of them and that ``down`` stops every one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from processors import stack, starting
from processors.processes import running
from producers.settings import Settings
from tests.support.polling import poll

# A process that runs until it is signalled.
WAITER = [sys.executable, "-c", "import signal; signal.pause()"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # A port nothing listens on: status never finds a broker there.
    return Settings(home=tmp_path / ".custody", kafka_bootstrap="127.0.0.1:9")


def _by_name(settings: Settings) -> dict[str, stack.ProcessStatus]:
    return {s.name: s for s in stack.status(settings)}


def test_workers_are_named_from_the_first_one_on() -> None:
    assert stack.correlator_names(1) == ["correlate"]
    assert stack.correlator_names(3) == ["correlate", "correlate-2", "correlate-3"]


def test_status_lists_as_many_correlators_as_up_was_given(settings: Settings) -> None:
    assert [s.name for s in stack.status(settings)] == ["broker", "correlate", "ingest", "collect"]
    run = settings.home / "run"
    run.mkdir(parents=True)
    (run / "stack.json").write_text(json.dumps({"correlators": 3}))
    statuses = stack.status(settings)
    assert [s.name for s in statuses] == [
        "broker",
        "correlate",
        "correlate-2",
        "correlate-3",
        "ingest",
        "collect",
    ]
    assert not any(s.running or s.healthy or s.metrics for s in statuses)
    assert stack.correlator_count(settings) == 3


def test_a_running_worker_shows_its_metrics_and_down_stops_every_one(
    settings: Settings,
) -> None:
    url = "http://127.0.0.1:9475/metrics"
    started = [
        stack.start_process(settings, "correlate-2", WAITER, metrics=url),
        # Beyond the count (1): still listed while recorded, and stopped by down.
        stack.start_process(settings, "correlate-7", WAITER, metrics=None),
    ]
    try:
        statuses = _by_name(settings)
        assert list(statuses) == [
            "broker",
            "correlate",
            "correlate-2",
            "correlate-7",
            "ingest",
            "collect",
        ]
        second = statuses["correlate-2"]
        assert second.running
        assert second.pid == started[0].process.pid
        assert second.metrics == url
        assert not second.healthy  # it never beat
        assert second.as_dict()["metrics"] == url
        assert statuses["correlate"].metrics is None
        assert stack.down(settings, timeout=5) == ["correlate-7", "correlate-2"]
        for process in started:
            process.process.wait(timeout=10)
        assert poll(lambda: not any(running(p.process.pid) for p in started), 10, 0.05)
        assert [s.name for s in stack.status(settings)] == [
            "broker",
            "correlate",
            "ingest",
            "collect",
        ]
    finally:
        for process in started:
            process.process.kill()
            process.process.wait()


def test_each_worker_gets_a_metrics_port_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stack.METRICS_ADDRESS_VARIABLE, raising=False)
    free = {stack.metrics_address(index) for index in (1, 2, 3)}
    assert len(free) == 3
    assert all(address.startswith("127.0.0.1:") for address in free)
    monkeypatch.setenv(stack.METRICS_ADDRESS_VARIABLE, "127.0.0.1:9500")
    assert [stack.metrics_address(index) for index in (1, 2, 3)] == [
        "127.0.0.1:9500",
        "127.0.0.1:9501",
        "127.0.0.1:9502",
    ]
    monkeypatch.setenv(stack.METRICS_ADDRESS_VARIABLE, "[::1]:9600")
    assert stack.metrics_address(2) == "[::1]:9601"
    assert stack.metrics_url(*stack.split_address("[::1]:9601")) == "http://[::1]:9601/metrics"
    monkeypatch.setenv(stack.METRICS_ADDRESS_VARIABLE, "no port")
    with pytest.raises(starting.StackError, match=stack.METRICS_ADDRESS_VARIABLE):
        stack.metrics_address(1)
