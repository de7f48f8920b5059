"""The operators' configuration (``infra/prometheus/``, ``infra/alertmanager/``, the
"Custody pipeline" dashboard) is accepted by the real tools and names only what Custody's
processes export.

Debian's ``promtool`` (package prometheus) checks the scrape configuration, the rules and
every PromQL expression of the dashboard, and runs the rules' unit tests
(``rules_test.yml``); ``amtool`` (package prometheus-alertmanager) checks the Alertmanager
configuration and where it routes Custody's alerts and the pipeline's own. Each check is a
function of a repository root returning the problems it finds: it runs once on the
repository (nothing expected) and once on a copy broken on purpose (a problem expected).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from processors.consumer_metrics import ConsumerMetrics
from processors.correlator.metrics import CorrelatorMetrics
from processors.serving.metrics import ServeMetrics
from processors.stack import METRICS_ADDRESS
from producers.settings import Settings
from tests.support import REPO

PROMTOOL = Path("/usr/bin/promtool")
AMTOOL = Path("/usr/bin/amtool")
for _tool, _package in ((PROMTOOL, "prometheus"), (AMTOOL, "prometheus-alertmanager")):
    if not _tool.exists():
        pytest.skip(f"{_tool} is absent (Debian package {_package})", allow_module_level=True)

pytestmark = pytest.mark.integration

PROMETHEUS_YML = Path("infra/prometheus/prometheus.yml")
RULES_YML = Path("infra/prometheus/rules.yml")
RULES_TEST_YML = Path("infra/prometheus/rules_test.yml")
ALERTMANAGER_YML = Path("infra/alertmanager/alertmanager.yml")
DASHBOARD_JSON = Path("dashboards/grafana/pipeline.json")
DATASOURCE_YML = Path("infra/grafana/provisioning/datasources/prometheus.yml")
FILES = (
    PROMETHEUS_YML,
    RULES_YML,
    RULES_TEST_YML,
    ALERTMANAGER_YML,
    DASHBOARD_JSON,
    DATASOURCE_YML,
)

# Issue 15's contract between the processes and the rules (prometheus_client's names: a
# counter's samples end in _total, a histogram's in _bucket, _sum and _count). The names
# checked are those the processes' registries hold (FAMILIES below); these must be among them.
CONTRACT_SERIES = {
    "custody_correlator_events_total",
    "custody_correlator_alerts_total",
    "custody_correlator_dead_letters_total",
    "custody_correlator_trees_retired_total",
    "custody_correlator_chains_retired_total",
    "custody_correlator_late_events_total",
    "custody_correlator_consumer_lag",
    "custody_correlator_trees",
    "custody_correlator_chains",
    "custody_ingest_records_total",
    "custody_ingest_stored_total",
    "custody_ingest_dead_letters_total",
    "custody_ingest_redacted_total",
    "custody_ingest_retries_total",
    "custody_ingest_consumer_lag",
    "custody_ingest_waiting_for_clickhouse",
    "custody_serve_requests_total",
    "custody_notify_records_total",
    "custody_notify_sent_total",
    "custody_notify_failed_total",
    "custody_notify_dead_letters_total",
    "custody_notify_consumer_lag",
    "custody_notify_waiting_for_alertmanager",
}
CONTRACT_HISTOGRAMS = {
    "custody_correlator_step_duration_seconds",
    "custody_ingest_batch_duration_seconds",
    "custody_serve_request_duration_seconds",
    "custody_notify_batch_duration_seconds",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass
class _NoStep:
    """A correlator step holding nothing: the metrics' names are all that is read."""

    live_trees: int = 0
    live_chains: int = 0
    trees_retired: int = 0
    chains_retired: int = 0
    late_events: Mapping[str, int] = field(default_factory=dict)


def series_names(family: str, kind: str) -> set[str]:
    """The sample names prometheus_client exposes for a metric family of ``kind``."""
    if kind == "counter":
        return {f"{family}_total"}
    if kind == "histogram":
        return {family + suffix for suffix in HISTOGRAM_SUFFIXES}
    return {family}


def exported_families() -> dict[str, set[str]]:
    """Every metric family of the processes' registries, with the series it exposes."""
    registries = (
        CorrelatorMetrics(_NoStep()).registry,
        ConsumerMetrics("ingest").registry,
        ConsumerMetrics("notify").registry,
        ServeMetrics().registry,
    )
    return {
        family.name: series_names(family.name, family.type)
        for registry in registries
        for family in registry.collect()
    }


FAMILIES = exported_families()
EXPORTED = set().union(*FAMILIES.values())
# Prometheus's own series of each target.
SCRAPE_SERIES = {"up"}

# Job name, the service of the compose stack, and the address setting whose port it scrapes.
JOBS = {
    "custody-correlate": ("correlate", METRICS_ADDRESS),
    "custody-ingest": ("ingest", Settings.model_fields["ingest_metrics_address"].default),
    "custody-serve": ("serve", Settings.model_fields["serve_metrics_address"].default),
    "custody-notify": ("notify", Settings.model_fields["notify_metrics_address"].default),
    "custody-collect": ("collect", Settings.model_fields["collect_metrics_address"].default),
}
PIPELINE_SEVERITIES = {"critical", "warning"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana substitutes in the dashboard's PromQL before sending it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}

_NAME_REGEX = re.compile(r'__name__\s*=~\s*"([^"]*)"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


# ---- files and tools ---------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _run(tool: Path, *args: str | Path) -> list[str]:
    """Run a tool; its output as problems when it exits non-zero, else none."""
    done = subprocess.run(
        [str(tool), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode == 0:
        return []
    return [
        f"{tool.name} {' '.join(map(str, args))} exited {done.returncode}:",
        done.stdout,
        done.stderr,
    ]


@dataclass(frozen=True)
class Expression:
    """A PromQL expression and where it comes from."""

    where: str
    expr: str


def rules(root: Path) -> list[dict[str, Any]]:
    """Every rule of rules.yml, recording and alerting."""
    return [rule for group in _yaml(root / RULES_YML)["groups"] for rule in group["rules"]]


def alerts(root: Path) -> dict[str, dict[str, Any]]:
    """rules.yml's alerting rules by name."""
    return {rule["alert"]: rule for rule in rules(root) if "alert" in rule}


def dashboard_panels(root: Path) -> list[dict[str, Any]]:
    """The dashboard's panels, those inside rows included, without the rows."""
    found: list[dict[str, Any]] = []
    for panel in json.loads((root / DASHBOARD_JSON).read_text())["panels"]:
        found.extend(panel.get("panels", []) if panel.get("type") == "row" else [panel])
    return found


def dashboard_expressions(root: Path) -> list[Expression]:
    """Every target's PromQL, with Grafana's variables replaced as Grafana would."""
    found = []
    for panel in dashboard_panels(root):
        for target in panel.get("targets", []):
            expr = str(target.get("expr", ""))
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append(Expression(f"{panel['title']}/{target.get('refId')}", expr))
    return found


def rule_expressions(root: Path) -> list[Expression]:
    """Every rule's expression."""
    return [Expression(str(r.get("alert") or r.get("record")), str(r["expr"])) for r in rules(root)]


def metric_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects by name, and its ``__name__=~`` regexes.

    String literals, label matchers, ranges, label lists (``by (...)``) and function names
    are taken out first, so what remains of the identifiers are metric names and keywords.
    """
    regexes = set(_NAME_REGEX.findall(expr))
    bare = _STRING.sub('""', expr)
    bare = _SELECTOR.sub(" ", bare)
    bare = _LABEL_LIST.sub(" ", bare)
    names = {name for name in _IDENTIFIER.findall(bare) if name.lower() not in _KEYWORDS}
    return names, regexes


def used_metrics(expressions: list[Expression], recorded: set[str]) -> tuple[set[str], list[str]]:
    """The exported series the expressions read, and the problems: a name or a name regex
    that matches nothing a Custody process exports."""
    used: set[str] = set()
    problems = []
    for expression in expressions:
        names, regexes = metric_names(expression.expr)
        for name in names - recorded - SCRAPE_SERIES:
            if name not in EXPORTED:
                problems.append(f"{expression.where}: {name} is not a metric Custody exports")
            used.add(name)
        for regex in regexes:
            matched = {name for name in EXPORTED if re.fullmatch(regex, name)}
            if not matched:
                problems.append(f"{expression.where}: __name__=~{regex!r} matches no metric")
            used |= matched
    return used, problems


# ---- checks ------------------------------------------------------------------------------


def check_prometheus_config(root: Path) -> list[str]:
    """``promtool check config`` (which also loads the rule files it names)."""
    return _run(PROMTOOL, "check", "config", root / PROMETHEUS_YML)


def check_scrape_jobs(root: Path) -> list[str]:
    """A job per process, scraping its compose service on the port of its metrics address
    setting; the rules are loaded and alerts go to the stack's Alertmanager."""
    config = _yaml(root / PROMETHEUS_YML)
    problems = []
    jobs = {job["job_name"]: job for job in config.get("scrape_configs", [])}
    for name, (service, address) in JOBS.items():
        port = str(address).rsplit(":", 1)[1]
        targets = [t for s in jobs.get(name, {}).get("static_configs", []) for t in s["targets"]]
        if targets != [f"{service}:{port}"]:
            problems.append(f"job {name} scrapes {targets}, not {service}:{port}")
    custody_jobs = {name for name in jobs if name.startswith("custody-")}
    if custody_jobs != set(JOBS):
        problems.append(f"custody jobs {sorted(custody_jobs)} are not {sorted(JOBS)}")
    if config.get("rule_files") != [RULES_YML.name]:
        problems.append(f"rule_files {config.get('rule_files')} is not [{RULES_YML.name}]")
    managers = [
        t
        for m in config.get("alerting", {}).get("alertmanagers", [])
        for s in m.get("static_configs", [])
        for t in s["targets"]
    ]
    if managers != ["alertmanager:9093"]:
        problems.append(f"alerts go to {managers}, not alertmanager:9093")
    return problems


def check_rules(root: Path) -> list[str]:
    """``promtool check rules``."""
    return _run(PROMTOOL, "check", "rules", root / RULES_YML)


def check_rules_unit_tests(root: Path) -> list[str]:
    """``promtool test rules rules_test.yml``."""
    return _run(PROMTOOL, "test", "rules", root / RULES_TEST_YML)


def check_alert_rules(root: Path) -> list[str]:
    """Each alert has a pipeline severity, a summary and a description; and it is shown
    firing and not firing by the unit tests."""
    problems = []
    tested: dict[str, list[bool]] = {}
    for case in _yaml(root / RULES_TEST_YML)["tests"]:
        for test in case.get("alert_rule_test", []):
            tested.setdefault(test["alertname"], []).append(bool(test.get("exp_alerts")))
    for name, rule in alerts(root).items():
        if rule.get("labels", {}).get("severity") not in PIPELINE_SEVERITIES:
            problems.append(f"{name}: severity is not one of {sorted(PIPELINE_SEVERITIES)}")
        if "source" in rule.get("labels", {}):
            problems.append(f"{name}: a source label would route it as a Custody alert")
        annotations = rule.get("annotations", {})
        if not annotations.get("summary") or not annotations.get("description"):
            problems.append(f"{name}: no summary or description")
        if set(tested.get(name, [])) != {True, False}:
            problems.append(f"{name}: rules_test.yml does not show it firing and not firing")
    return problems


def check_metric_names(root: Path) -> list[str]:
    """rules.yml and the dashboard read only metrics the processes export (or the rules
    record), and the dashboard shows every one of them."""
    recorded = {str(rule["record"]) for rule in rules(root) if "record" in rule}
    _, problems = used_metrics(rule_expressions(root), recorded)
    on_dashboard, dashboard_problems = used_metrics(dashboard_expressions(root), recorded)
    problems += dashboard_problems
    problems += [
        f"the dashboard does not show {name}"
        for name, series in sorted(FAMILIES.items())
        if not series & on_dashboard
    ]
    return problems


def check_dashboard_promql(root: Path, scratch: Path) -> list[str]:
    """Every panel's PromQL parses: each is written as a recording rule for
    ``promtool check rules``."""
    expressions = dashboard_expressions(root)
    problems = [f"{e.where}: a variable is left: {e.expr}" for e in expressions if "$" in e.expr]
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:expression_{index}", "expr": e.expr}
            for index, e in enumerate(expressions)
        ],
    }
    path = scratch / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    return problems + _run(PROMTOOL, "check", "rules", path)


def check_dashboard(root: Path) -> list[str]:
    """The dashboard reads the provisioned Prometheus data source through its variable;
    panels have unique ids and titles, do not overlap, and each has PromQL."""
    dashboard = json.loads((root / DASHBOARD_JSON).read_text())
    problems = []
    if dashboard.get("title") != "Custody pipeline" or "custody" not in dashboard.get("tags", []):
        problems.append("not the 'Custody pipeline' dashboard tagged custody")
    sources = [s for s in _yaml(root / DATASOURCE_YML)["datasources"] if s["type"] == "prometheus"]
    variable: dict[str, Any] = next(
        (v for v in dashboard["templating"]["list"] if v["name"] == "datasource"), {}
    )
    provisioned = {s["uid"] for s in sources if s.get("url") == "http://prometheus:9090"}
    default = variable.get("current", {}).get("value")
    if variable.get("query") != "prometheus" or default not in provisioned:
        problems.append("the datasource variable does not default to the provisioned Prometheus")
    found = dashboard_panels(root)
    for attribute in ("id", "title"):
        values = [panel[attribute] for panel in found]
        if len(set(values)) != len(values):
            problems.append(f"panel {attribute}s are not unique")
    occupied: dict[tuple[int, int], str] = {}
    for panel in found:
        title, grid = panel["title"], panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{title} is wider than the grid")
        for cell in (
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        ):
            if cell in occupied:
                problems.append(f"{title} overlaps {occupied[cell]}")
                break
            occupied[cell] = title
        targets = panel.get("targets", [])
        if not targets or not all(str(t.get("expr", "")).strip() for t in targets):
            problems.append(f"{title} has no PromQL")
        if any(
            d != DATASOURCE
            for d in (panel.get("datasource"), *(t.get("datasource") for t in targets))
        ):
            problems.append(f"{title} does not read {DATASOURCE}")
    return problems


def check_alertmanager_config(root: Path) -> list[str]:
    """``amtool check-config``."""
    return _run(AMTOOL, "check-config", root / ALERTMANAGER_YML)


def _receiver(config: Path, labels: Mapping[str, str], expected: str) -> list[str]:
    return _run(
        AMTOOL,
        "config",
        "routes",
        "test",
        f"--config.file={config}",
        f"--verify.receivers={expected}",
        *(f"{name}={value}" for name, value in labels.items()),
    )


def check_alertmanager_routes(root: Path) -> list[str]:
    """Custody's alerts are grouped by tenant and alert type, CRITICAL ones go to a
    receiver of their own and the others to another; every alert of rules.yml goes to the
    operators."""
    config = root / ALERTMANAGER_YML
    route = _yaml(config)["route"]
    problems = []
    if route.get("group_by") != ["tenant", "alertname"]:
        problems.append(f"Custody alerts are grouped by {route.get('group_by')}")
    custody = {"source": "custody", "tenant": "acme", "root_task_id": "r1", "alert_id": "a1"}
    problems += _receiver(
        config,
        {**custody, "alertname": "PRIVILEGE_ESCALATION", "severity": "CRITICAL"},
        "custody-critical",
    )
    for severity in ("LOW", "MEDIUM", "HIGH"):
        problems += _receiver(
            config, {**custody, "alertname": "ORPHANED_TOKEN", "severity": severity}, "custody"
        )
    for name, rule in alerts(root).items():
        labels = {"alertname": name, "job": "custody-ingest", "instance": "ingest:9470"}
        problems += _receiver(config, {**labels, **rule.get("labels", {})}, "operators")
    return problems


Check = Callable[[Path], list[str]]


def _dashboard_promql(root: Path) -> list[str]:
    scratch = root / ".scratch"
    scratch.mkdir(exist_ok=True)
    try:
        return check_dashboard_promql(root, scratch)
    finally:
        shutil.rmtree(scratch)


CHECKS: list[Check] = [
    check_prometheus_config,
    check_scrape_jobs,
    check_rules,
    check_rules_unit_tests,
    check_alert_rules,
    check_metric_names,
    _dashboard_promql,
    check_dashboard,
    check_alertmanager_config,
    check_alertmanager_routes,
]


# ---- tests -------------------------------------------------------------------------------


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A copy of the checked files, in the repository's layout."""
    for relative in FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / relative, tmp_path / relative)
    return tmp_path


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.lstrip("_"))
def test_the_configuration_passes(scratch_root: Path, check: Check) -> None:
    """Each check finds nothing wrong in the repository's files."""
    assert check(scratch_root) == []


Breakage = tuple[Check, Path, str, str]
"""(check, file, text, replacement): ``text`` of ``file`` replaced, and ``check`` fails."""


def _breaking(check: Check, relative: Path, *edits: tuple[str, str]) -> list[Breakage]:
    """A breakage of ``relative`` for ``check`` per (text, replacement) of ``edits``."""
    return [(check, relative, text, replacement) for text, replacement in edits]


# Each breakage is a plausible slip; grouped by the check that catches it and its file.
BREAKAGES: list[Breakage] = [
    *_breaking(
        check_prometheus_config,
        PROMETHEUS_YML,
        ("scrape_interval: 15s", "scrape_interval: fifteen"),
        ("- rules.yml", "- rule.yml"),
    ),
    *_breaking(
        check_scrape_jobs,
        PROMETHEUS_YML,
        ('"ingest:9470"', '"ingest:9471"'),
        ("job_name: custody-notify", "job_name: notify"),
    ),
    *_breaking(
        check_rules,
        RULES_YML,
        ('expr: up{job=~"custody-.+"} == 0', 'expr: up{job=~"custody-.+"} = 0'),
    ),
    *_breaking(check_rules_unit_tests, RULES_YML, ("for: 3m", "for: 10m"), ("> 1000", "> 10000")),
    *_breaking(
        check_alert_rules,
        RULES_YML,
        ("summary:", "headline:"),
        ("severity: warning", "severity: HIGH"),
    ),
    *_breaking(
        check_alert_rules,
        RULES_TEST_YML,
        (
            "alertname: CustodyIngestWaitingForClickHouse",
            "alertname: CustodyIngestWaitingForClickhouse",
        ),
    ),
    *_breaking(
        check_metric_names,
        RULES_YML,
        ("custody_notify_failed_total", "custody_notify_failures_total"),
        ("custody_.+_consumer_lag", "custody_.+_lag_records"),
    ),
    *_breaking(
        check_metric_names,
        DASHBOARD_JSON,
        ("custody_ingest_stored_total", "custody_ingest_rows_total"),
        ("custody_ingest_redacted_total", "custody_ingest_retries_total"),
    ),
    *_breaking(
        _dashboard_promql,
        DASHBOARD_JSON,
        (
            "sum by (job) (rate(custody_correlator_events_total",
            "sum by job (rate(custody_correlator_events_total",
        ),
        ("[$__rate_interval]", "[$__rate_window]"),
    ),
    *_breaking(
        check_dashboard,
        DASHBOARD_JSON,
        ('"uid": "${datasource}"', '"uid": "clickhouse"'),
        ('"x": 12', '"x": 10'),
    ),
    *_breaking(
        check_dashboard,
        DATASOURCE_YML,
        ("url: http://prometheus:9090", "url: http://localhost:9090"),
    ),
    *_breaking(
        check_alertmanager_config,
        ALERTMANAGER_YML,
        ("group_wait: 10s", "group_wait: soon"),
        ("receiver: operators", "receiver: ops"),
    ),
    *_breaking(
        check_alertmanager_routes,
        ALERTMANAGER_YML,
        ('severity="CRITICAL"', 'severity="critical"'),
        ("group_by: [tenant, alertname]", "group_by: [tenant]"),
        ('source!="custody"', 'source="prometheus"'),
    ),
]


@pytest.mark.parametrize(
    ("check", "relative", "text", "replacement"),
    BREAKAGES,
    ids=[f"{check.__name__.lstrip('_')}-{i}" for i, (check, *_) in enumerate(BREAKAGES)],
)
def test_each_check_can_fail(
    scratch_root: Path, check: Check, relative: Path, text: str, replacement: str
) -> None:
    """A copy broken on purpose makes the check report a problem."""
    path = scratch_root / relative
    original = path.read_text()
    assert text in original
    path.write_text(original.replace(text, replacement))
    assert check(scratch_root) != []


def test_every_check_is_shown_to_fail() -> None:
    """No check is left without a breakage that it catches."""
    assert {check for check, *_ in BREAKAGES} == set(CHECKS)


def test_the_processes_export_the_contracts_metrics() -> None:
    """Every series issue 15 names is in a process's registry, so the rules' names check
    (against the registries) holds them to the contract too."""
    contract = CONTRACT_SERIES | {h + s for h in CONTRACT_HISTOGRAMS for s in HISTOGRAM_SUFFIXES}
    assert contract - EXPORTED == set()


def test_metric_names_finds_names_and_regexes_and_nothing_else() -> None:
    """The extraction the name check relies on, on the forms the rules use."""
    expr = (
        'sum by (job, le) (rate(a_b_bucket{job=~"x_y", le!="z"}[5m] offset 10m)) > 0 '
        'and on (job) deriv(c:d:sum[10m]) > 1e3 or {__name__=~"e_.+_f"} unless g'
    )
    assert metric_names(expr) == ({"a_b_bucket", "c:d:sum", "g"}, {"e_.+_f"})
