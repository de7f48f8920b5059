"""``custody demo`` on a real local stack: it starts the stack, and every alert stored is
one the simulation planted, and each planted one is there, except deadline-driven ones
(UNREVOKED_TOKEN, TOKEN_USED_AFTER_EXPIRY) that may still wait for a quiet partition's
watermark. A second demo on
the same stack must not turn the first's watermark into false alerts on its own trees."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.demo import DEADLINE_ALERTS
from producers.simulator import EXPECTED_ALERT, SimulationConfig, plan
from tests.support.alertmanager import alertmanager_with_receiver
from tests.support.broker import free_port, run_custody

pytestmark = pytest.mark.integration

ROOTS, RATE = 40, 0.5


def _planted(seed: int) -> Counter[str]:
    config = SimulationConfig(
        roots=ROOTS, misbehaviour_rate=RATE, seed=seed, start=datetime.now(UTC)
    )
    return Counter(str(EXPECTED_ALERT[t.misbehaviour]) for t in plan(config) if t.misbehaviour)


def _alerts(bootstrap: str, home: Path, env: dict[str, str]) -> Counter[str]:
    stored = run_custody(bootstrap, "alerts", "--json", cwd=home, env=env)
    return Counter(json.loads(line)["alert_type"] for line in stored.stdout.splitlines())


def _assert_planted(alerts: Counter[str], planted: Counter[str]) -> None:
    """Exactly the planted alerts, but deadline-driven ones may still be to come."""
    assert not alerts - planted, f"alerts nobody planted: {alerts - planted}"
    assert set(planted - alerts) <= DEADLINE_ALERTS, planted - alerts


def test_demo_reports_exactly_the_planted_alerts_twice(tmp_path: Path) -> None:
    """With an Alertmanager configured, as the README shows: the demo's alerts are there."""
    bootstrap = f"127.0.0.1:{free_port()}"
    manager_dir = tmp_path / "alertmanager"
    manager_dir.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    with alertmanager_with_receiver(manager_dir) as (manager, _):
        env = {"CUSTODY_KAFKA_PROFILE": "development", "CUSTODY_ALERTMANAGER_URL": manager.url}
        run_demo_twice(bootstrap, home, env)


def run_demo_twice(bootstrap: str, tmp_path: Path, env: dict[str, str]) -> None:
    args = ("demo", "--roots", str(ROOTS), "--misbehaviour-rate", str(RATE))
    try:
        first = run_custody(bootstrap, *args, "--seed", "4", cwd=tmp_path, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "Stored in ClickHouse" in first.stdout
        assert "Explorer: http://127.0.0.1:" in first.stdout.replace("\n", "")
        assert "custody tree" in first.stdout
        held = re.search(r"holds (\d+) of this run's (\d+) alerts", first.stdout.replace("\n", ""))
        assert held is not None, first.stdout
        assert int(held[1]) == int(held[2]) > 0
        _assert_planted(_alerts(bootstrap, tmp_path, env), _planted(4))

        second = run_custody(bootstrap, *args, "--seed", "9", cwd=tmp_path, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        _assert_planted(_alerts(bootstrap, tmp_path, env), _planted(4) + _planted(9))
    finally:
        run_custody(bootstrap, "down", cwd=tmp_path, env=env)
