"""The auditor's report on the embedded engine holding a simulation and mixed misbehaving
traffic: every alert is an exception of exactly its control, the identity inventory is
what the simulator created, the counts are the events', and ``custody report verify``
holds for an untouched report, and catches a number changed in the file and evidence
changed in ClickHouse."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from processors.reporting.controls import CONTROL_OF
from processors.reporting.frameworks import load_mapping
from processors.reporting.integrity import differences
from processors.reporting.report import build
from processors.serving.reader import BackendReader
from schemas.models import CredentialIssuedEvent
from tests.support.broker import CUSTODY
from tests.support.reporting import TENANT, StoredPeriod, stored_period

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> StoredPeriod:
    return stored_period(tmp_path_factory.mktemp("report") / "chdb", 24, 40, 21)


def report_of(stored: StoredPeriod) -> dict[str, Any]:
    backend = stored.open()
    try:
        report, _ = build(BackendReader(backend), stored.period, load_mapping(), "http://x.test")
    finally:
        backend.close()
    return report


def test_every_alert_is_an_exception_of_exactly_its_control(stored: StoredPeriod) -> None:
    report = report_of(stored)
    assert len({a.alert_type for a in stored.alerts}) >= 8
    placed: dict[str, str] = {}
    for control in report["controls"]:
        for exception in control["exceptions"]:
            assert exception["alert_id"] not in placed
            placed[exception["alert_id"]] = control["id"]
        expected = "EXCEPTIONS" if control["exceptions"] else control["status"]
        assert control["status"] == expected
    assert placed == {a.alert_id: CONTROL_OF[a.alert_type] for a in stored.alerts}
    assert report["counts"]["events"] == len(stored.events)
    assert report["counts"]["alerts"] == len(stored.alerts)


def test_the_inventory_is_every_identity_the_simulation_created(stored: StoredPeriod) -> None:
    report = report_of(stored)
    acting = {e.actor.workload_id for e in stored.events}
    holding = {e.body.token_subject for e in stored.events if isinstance(e, CredentialIssuedEvent)}
    inventory = {i["workload_id"]: i for i in report["inventory"]}
    assert set(inventory) == acting | holding
    for event in stored.events:
        identity = inventory[event.actor.workload_id]
        if event.actor.on_behalf_of:
            assert event.actor.on_behalf_of in identity["humans"]
    issued: dict[str, int] = {}
    for event in stored.events:
        if isinstance(event, CredentialIssuedEvent):
            issued[event.body.token_subject] = issued.get(event.body.token_subject, 0) + 1
    assert {
        w: i["credentials"]["count"] for w, i in inventory.items() if i["credentials"]["count"]
    } == issued
    # Standing access first.
    standing = [i["standing_access"] for i in report["inventory"]]
    assert standing == sorted(standing, reverse=True)


def test_the_command_writes_a_report_that_verifies(stored: StoredPeriod, tmp_path: Path) -> None:
    env = {**os.environ, "CUSTODY_CLICKHOUSE_URL": f"chdb://{stored.directory}"}
    period = ["--tenant", TENANT, "--from", stored.period.start.isoformat()]
    period += ["--to", stored.period.end.isoformat()]
    for fmt in ("json", "html"):
        path = tmp_path / f"report.{fmt}"
        made = custody(env, "report", *period, "--format", fmt, "--out", str(path))
        assert made.returncode == 0, made.stderr
        checked = custody(env, "report", "verify", str(path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "holds" in checked.stdout
    edited = json.loads((tmp_path / "report.json").read_text())
    edited["controls"][0]["measure"] = {"changed": 1}
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    refused = custody(env, "report", "verify", str(tmp_path / "edited.json"))
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "report_sha256" in refused.stdout


def custody(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUSTODY, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_report_holds_until_its_file_or_its_evidence_changes(stored: StoredPeriod) -> None:
    report = report_of(stored)
    assert differences(report, report_of(stored)) == []

    edited = json.loads(json.dumps(report))
    edited["counts"]["accesses"] += 1
    assert any(d.startswith("report_sha256") for d in differences(edited, report_of(stored)))

    # Evidence changed in ClickHouse: one more alert in the period.
    stored.add_alert(stored.alerts[0].model_copy(update={"alert_id": "planted-after-the-report"}))
    found = differences(report, report_of(stored))
    assert "counts: ClickHouse now gives other figures" in found
    assert "controls: ClickHouse now gives other figures" in found
    assert not any(d.startswith("report_sha256") for d in found)
