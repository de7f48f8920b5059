"""``custody simulate`` against a real broker: what it publishes is exactly what the pure
generator yields for the same arguments, and its summary says so."""

from __future__ import annotations

import json

import pytest

from producers.settings import Settings
from producers.simulator import SimulationConfig, plan, simulate
from schemas.codec import AvroCodec
from tests.support.broker import RunningBroker, payload, read_to_end, run_custody

pytestmark = pytest.mark.integration


def test_simulate_publishes_the_generated_events(broker: RunningBroker, settings: Settings) -> None:
    result = run_custody(broker.bootstrap, "simulate", "--roots", "20", "--seed", "7", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    config = SimulationConfig(roots=20, seed=7, misbehaviour_rate=0.1, tenant=settings.tenant)
    expected = [event.event_id for event in simulate(config)]
    codec = AvroCodec()
    stored = [codec.decode_event(payload(m)) for m in read_to_end(settings)]

    assert len(stored) == len(expected) == summary["events"] == summary["planned_events"]
    assert sorted(e.event_id for e in stored) == sorted(expected)
    assert summary["trees"] == 20
    planned = [str(t.misbehaviour) for t in plan(config) if t.misbehaviour]
    assert sum(summary["misbehaviours"].values()) == len(planned)
    # One producer instance, its hash chain numbered without gaps in publish order.
    assert {e.producer_instance for e in stored} == {summary["producer_instance"]}
    by_seq = sorted(stored, key=lambda e: e.seq or 0)
    assert [e.seq for e in by_seq] == list(range(1, len(stored) + 1))
    assert [e.event_id for e in by_seq] == expected


def test_simulate_duration_stops_early(broker: RunningBroker, settings: Settings) -> None:
    result = run_custody(
        broker.bootstrap,
        "simulate",
        "--roots", "20", "--rate", "50", "--duration", "1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert 0 < summary["events"] < summary["planned_events"]
    assert 1.0 <= summary["elapsed_seconds"] < 3.0
    assert len(read_to_end(settings)) == summary["events"]
