"""The local stack with an Alertmanager configured, watched by a real Prometheus running
the shipped scrape jobs and rules: ``custody up`` starts notify, ``custody status --json``
shows every process's metrics, Prometheus scrapes each of them and loads every rule, the
pipeline dashboard's queries run, and a misbehaving tree's alerts reach the receiver."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.alertmanager import (
    RunningAlertmanager,
    WebhookReceiver,
    alertmanager_with_receiver,
)
from tests.support.broker import free_port
from tests.support.polling import until
from tests.support.stack import Stack
from tests.support.stored import correlate
from tests.support.trees import mischievous

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
RULES = ROOT / "infra" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "dashboards" / "grafana" / "pipeline.json"
# The local stack's processes by the shipped job that scrapes each (serve runs inside
# ingest there, so its metrics are on ingest's endpoint).
JOBS = {
    "custody-correlate": "correlate",
    "custody-ingest": "ingest",
    "custody-notify": "notify",
    "custody-collect": "collect",
}


def _family(sample: str) -> str:
    """The family a sample name belongs to (``x_bucket``, ``x_total`` -> ``x``)."""
    return re.sub(r"_(bucket|count|sum|total)$", "", sample)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


class RunningPrometheus:
    """Debian's Prometheus on a free port, with ``config`` and the shipped rules."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("prometheus is not installed (make system-deps)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.argv = [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={directory / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = get_json(f"{self.url}/api/v1/{path}{query}")
        assert answer["status"] == "success", answer
        return answer["data"]

    def answers(self) -> bool:
        try:
            get_json(f"{self.url}/api/v1/status/buildinfo")
        except OSError:
            return False
        return True

    def value(self, expression: str) -> float:
        """The one value of an instant query (0 when it selects nothing)."""
        result = self.api("query", query=expression)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def scrape_config(targets: dict[str, str], alertmanager: str) -> dict[str, Any]:
    """The shipped configuration aimed at the local stack: each Custody job's target is
    the process's metrics address, the shipped rules by absolute path, a fast scrape."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [
        {"targets": [alertmanager.removeprefix("http://")]}
    ]
    config["scrape_configs"] = [
        {**job, "static_configs": [{"targets": [targets[job["job_name"]]]}]}
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    return config


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[RunningAlertmanager, WebhookReceiver]]:
    directory = tmp_path / "alertmanager"
    directory.mkdir()
    with alertmanager_with_receiver(directory) as running:
        yield running


@pytest.fixture
def stack(
    tmp_path: Path, alertmanager: tuple[RunningAlertmanager, WebhookReceiver]
) -> Iterator[Stack]:
    manager, _ = alertmanager
    home = tmp_path / "stack"
    home.mkdir()
    running = Stack(home, {"CUSTODY_ALERTMANAGER_URL": manager.url})
    try:
        running.up()
        yield running
    finally:
        running.custody("down")


def test_prometheus_scrapes_every_process_and_loads_the_shipped_rules(
    tmp_path: Path,
    alertmanager: tuple[RunningAlertmanager, WebhookReceiver],
    stack: Stack,
) -> None:
    manager, receiver = alertmanager
    status = stack.custody("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    processes = {p["name"]: p for p in json.loads(status.stdout)["processes"]}
    assert set(JOBS.values()) <= set(processes)
    assert processes["notify"]["state"]["alertmanager"] == manager.url
    targets = {}
    for job, name in JOBS.items():
        url = urllib.parse.urlsplit(processes[name]["metrics"])
        assert url.path == "/metrics", processes[name]
        targets[job] = url.netloc

    stream = mischievous({"leak", "late_use"}, name="prom-")
    _, expected = correlate(stream)
    stack.publish(stream, "prometheus-test")
    wanted = {a.alert_id for a in expected}
    until(lambda: wanted <= receiver.alert_ids(), 120, "the tree's alerts at the receiver")
    # Each notification's links open the stack's explorer on the tree, and its runbook.
    api = stack.address()
    for notification in receiver.received():
        for alert in notification.payload["alerts"]:
            notes = alert["annotations"]
            assert notes["explorer_url"].startswith(f"{api}/#tree=prom-"), notes
            runbook, _, section = notes["runbook_url"].partition("#")
            assert runbook == f"{api}/runbook"
            with urllib.request.urlopen(runbook, timeout=5) as page:
                assert f'id="{section}"' in page.read().decode()

    prometheus = RunningPrometheus(scrape_config(targets, manager.url), tmp_path)
    prometheus.start()
    try:
        until(prometheus.answers, 30, "Prometheus answers")

        def all_up() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == len(JOBS) and all(t["health"] == "up" for t in active)

        until(all_up, 60, lambda: f"targets: {prometheus.api('targets')['activeTargets']}")

        shipped = yaml.safe_load(RULES.read_text())
        names = {r.get("alert") or r["record"] for g in shipped["groups"] for r in g["rules"]}

        def rules_evaluated() -> bool:
            loaded = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return {r["name"] for r in loaded} == names and all(r["health"] == "ok" for r in loaded)

        until(rules_evaluated, 60, lambda: f"rules: {prometheus.api('rules')}")
        assert prometheus.value('sum(custody_notify_sent_total{severity="HIGH"})') >= 1
        assert prometheus.value("sum(custody_ingest_stored_total)") >= len(stream)
        assert prometheus.value("sum(custody_correlator_events_total)") >= len(stream)
        assert prometheus.value('sum(custody_serve_requests_total{route="health"})') >= 1
        # No pipeline alert fires on a healthy stack.
        assert prometheus.api("alerts")["alerts"] == []

        # Every metric the rules and the dashboard name is one the processes expose (the
        # metadata holds each family, observed or not), and every panel's query runs.
        exposed = set(prometheus.api("metadata"))
        expressions = [r["expr"] for g in shipped["groups"] for r in g["rules"]]
        dashboard = json.loads(DASHBOARD.read_text())
        panels = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        for expression in expressions + panels:
            for name in re.findall(r"(?<![:\w])custody_\w+", expression):
                assert name in exposed or _family(name) in exposed, (name, expression)
        for expression in panels:
            prometheus.api("query", query=expression.replace("$__rate_interval", "1m"))
    finally:
        prometheus.stop()
