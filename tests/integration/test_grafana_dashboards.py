"""The Grafana dashboards (``dashboards/grafana/*.json``) are well-formed dashboards for
Grafana's official ClickHouse data source, and every panel's SQL runs on the real engine.

Each dashboard is checked for its structure (title, unique uid, a ``datasource`` variable
of the plugin's type, a ``tenant`` query variable, panels with a grid position and at least
one raw-SQL target of the plugin). Then every panel query and every query variable is run
against chdb, holding what ingest stores for a simulation: the simulator's events, and the
state changes and alerts of the pure correlator run over each custody tree. Grafana's
macros and template variables are expanded in Python the way the plugin (v4) and Grafana
expand them (see :class:`Macros`); a macro left unexpanded fails the test. Panels must
return rows, except the few listed in :data:`EXPECTED_EMPTY` with the reason. No broker.

The dashboards over Prometheus (the "Custody pipeline" dashboard) hold PromQL, not SQL:
they are left to tests/integration/test_prometheus_config.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.storage.backend import ChdbBackend, Row
from processors.storage.migrations import migrate
from processors.storage.target import ChdbTarget
from producers.simulator import SimulationConfig, simulate
from tests.support import REPO
from tests.support.stored import store

pytestmark = pytest.mark.integration

DASHBOARDS = REPO / "dashboards" / "grafana"
PLUGIN = "grafana-clickhouse-datasource"
DATASOURCE = {"type": PLUGIN, "uid": "${datasource}"}
# The plugin's format enum (src/types: TIMESERIES = 0, TABLE = 1) and the v4 query type
# that goes with it (src/types/sql.ts: QueryType).
QUERY_TYPES = {0: "timeSeries", 1: "table"}

TENANT = "acme"
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
SIMULATION = SimulationConfig(roots=30, misbehaviour_rate=0.5, seed=3, start=START)
# The dashboards' time range: it covers every simulated event (about four hours from START).
FROM = START - timedelta(hours=1)
TO = START + timedelta(hours=6)
INTERVAL_S = 60

# Panels that may return no rows on the simulated data, and why.
EXPECTED_EMPTY: dict[tuple[str, str], str] = {
    ("token-hygiene", "Orphaned tokens"): "the simulator issues no orphaned token",
    ("agents", "Denied and failed accesses"): "every simulated access succeeds",
}

# A table of the custody database and what follows it: each panel reads with FINAL.
TABLE_REF = re.compile(r"\bcustody\.(\w+)(\s+AS\s+\w+)?(\s+FINAL\b)?", re.IGNORECASE)


# ---- the dashboards ----------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard JSON, by file stem."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def over_prometheus(dashboard: Mapping[str, Any]) -> bool:
    """Whether the dashboard reads Prometheus (its data source variable, or a panel's)."""
    sources = [v.get("query") for v in variables(dashboard) if v.get("type") == "datasource"]
    sources += [p.get("datasource", {}).get("type") for p in panels(dashboard)]
    return "prometheus" in sources


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels, those inside rows included, without the rows themselves."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's template variables."""
    variable_list: list[dict[str, Any]] = dashboard.get("templating", {}).get("list", [])
    return variable_list


def variable_sql(variable: Mapping[str, Any]) -> str:
    """A query variable's SQL: the plugin accepts a plain string or ``{"rawSql": ...}``."""
    query = variable["query"]
    return str(query["rawSql"] if isinstance(query, dict) else query)


ALL_DASHBOARDS = load_dashboards()
DASHBOARD_DOCS = {name: d for name, d in ALL_DASHBOARDS.items() if not over_prometheus(d)}
PANEL_QUERIES = [
    pytest.param(name, panel, target, id=f"{name}/{panel['title']}/{target['refId']}")
    for name, dashboard in DASHBOARD_DOCS.items()
    for panel in panels(dashboard)
    for target in panel.get("targets", [])
]
VARIABLE_QUERIES = [
    pytest.param(name, variable, id=f"{name}/${variable['name']}")
    for name, dashboard in DASHBOARD_DOCS.items()
    for variable in variables(dashboard)
    if variable.get("type") == "query"
]


# ---- Grafana's macros ----------------------------------------------------------------------


def _to_datetime(moment: datetime) -> str:
    return f"toDateTime({int(moment.timestamp())})"


@dataclass(frozen=True)
class Macros:
    """Expands what Grafana and the ClickHouse plugin would substitute in a panel's SQL.

    Plugin macros (pkg/macros/macros.go of grafana/clickhouse-datasource, v4):

    * ``$__timeFilter(c)`` -> ``c >= toDateTime(<from>) AND c <= toDateTime(<to>)``
      (Unix seconds of the dashboard's time range);
    * ``$__fromTime`` / ``$__toTime`` -> ``toDateTime(<from>)`` / ``toDateTime(<to>)``;
    * ``$__timeInterval(c)`` -> ``toStartOfInterval(toDateTime(c), INTERVAL <n> second)``;
    * ``$__interval_s`` -> ``<n>``, the panel's interval in seconds.

    Grafana's template variables: ``${name:singlequote}`` -> each value single-quoted,
    comma-separated; ``${name}`` and ``$name`` -> the value (one value only).

    Anything else starting with ``$`` is left as it is, so the caller's check that no ``$``
    remains catches a macro this expander (and so this test) does not know.
    """

    start: datetime
    end: datetime
    interval_s: int
    values: Mapping[str, Sequence[str]]

    FUNCTION = re.compile(r"\$__(\w+)\(([^()]*)\)")
    PLAIN = re.compile(r"\$__(interval_s|fromTime|toTime)\b")
    VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")

    def expand(self, sql: str) -> str:
        sql = self.FUNCTION.sub(self._function, sql)
        sql = self.PLAIN.sub(self._plain, sql)
        return self.VARIABLE.sub(self._variable, sql)

    def _function(self, match: re.Match[str]) -> str:
        name, argument = match[1], match[2].strip()
        # The plugin splits arguments at commas: one expression per argument.
        if "," in argument or not argument:
            return match[0]
        if name == "timeFilter":
            return (
                f"{argument} >= {_to_datetime(self.start)} "
                f"AND {argument} <= {_to_datetime(self.end)}"
            )
        if name == "timeInterval":
            return f"toStartOfInterval(toDateTime({argument}), INTERVAL {self.interval_s} second)"
        return match[0]

    def _plain(self, match: re.Match[str]) -> str:
        return {
            "interval_s": str(self.interval_s),
            "fromTime": _to_datetime(self.start),
            "toTime": _to_datetime(self.end),
        }[match[1]]

    def _variable(self, match: re.Match[str]) -> str:
        name = match[1] or match[3]
        if name not in self.values:
            return match[0]
        values = self.values[name]
        if match[2] == "singlequote":
            return ", ".join("'" + value.replace("'", "\\'") + "'" for value in values)
        if match[2] is None and len(values) == 1:
            return values[0]
        return match[0]


def variable_values(dashboard: Mapping[str, Any]) -> dict[str, list[str]]:
    """What each template variable stands for while the test runs: the simulated tenant for
    ``tenant``, and the saved current value of a custom or textbox variable ("All" meaning
    every option)."""
    values: dict[str, list[str]] = {"tenant": [TENANT]}
    for variable in variables(dashboard):
        if variable["type"] not in ("custom", "textbox"):
            continue
        current = variable["current"]["value"]
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen:
            chosen = [option["value"] for option in variable["options"]]
        values[variable["name"]] = [str(value) for value in chosen]
    return values


def expanded(name: str, sql: str) -> str:
    """``sql`` of dashboard ``name`` as Grafana would send it; nothing may be left over."""
    macros = Macros(FROM, TO, INTERVAL_S, variable_values(DASHBOARD_DOCS[name]))
    result = macros.expand(sql)
    assert "$" not in result, f"a macro or variable is left unexpanded:\n{result}"
    assert not result.rstrip().endswith(";"), "the backend appends a SETTINGS clause"
    return result


# ---- the engine, holding a simulation ----------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChdbBackend]:
    """chdb with the migrations applied and a simulation stored through the sink."""
    target = ChdbTarget(tmp_path_factory.mktemp("grafana") / "chdb")
    backend = ChdbBackend(target)
    try:
        migrate(target, 400, backend)
        alerts = store(backend, list(simulate(SIMULATION)))
        assert alerts, "the simulation should misbehave"
        yield backend
    finally:
        backend.close()


def select(backend: ChdbBackend, sql: str) -> list[Row]:
    """Run expanded dashboard SQL as-is (no trailing ``;``: the backend appends SETTINGS)."""
    return backend.select(sql)


# ---- structure ---------------------------------------------------------------------------


def test_there_are_the_four_dashboards_with_unique_uids_and_titles() -> None:
    assert set(DASHBOARD_DOCS) == {"overview", "token-hygiene", "delegation", "agents"}
    assert set(ALL_DASHBOARDS) - set(DASHBOARD_DOCS) == {"pipeline"}
    # Unique among every dashboard: Grafana loads them all into one folder.
    uids = [d.get("uid") for d in ALL_DASHBOARDS.values()]
    titles = [d.get("title") for d in ALL_DASHBOARDS.values()]
    assert all(isinstance(uid, str) and uid for uid in uids)
    assert len(set(uids)) == len(uids)
    assert all(isinstance(title, str) and title for title in titles)
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(DASHBOARD_DOCS))
def test_each_dashboard_is_a_clickhouse_dashboard(name: str) -> None:
    dashboard = DASHBOARD_DOCS[name]
    assert dashboard["schemaVersion"] >= 39
    assert "custody" in dashboard.get("tags", [])
    by_name = {v["name"]: v for v in variables(dashboard)}
    assert by_name["datasource"]["type"] == "datasource"
    assert by_name["datasource"]["query"] == PLUGIN
    tenant = by_name["tenant"]
    assert tenant["type"] == "query"
    assert tenant["datasource"] == DATASOURCE
    assert "custody.events" in variable_sql(tenant)

    found = panels(dashboard)
    assert found, "a dashboard without panels"
    ids = [panel["id"] for panel in found]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    titles = [panel["title"] for panel in found]
    assert len(set(titles)) == len(titles), "panel titles must be unique"
    occupied: dict[tuple[int, int], str] = {}
    for panel in found:
        title = panel["title"]
        assert isinstance(title, str)
        assert title
        assert panel["datasource"] == DATASOURCE, title
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) for key in ("h", "w", "x", "y")), title
        assert grid["w"] > 0, title
        assert grid["h"] > 0, title
        assert grid["x"] + grid["w"] <= 24, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in occupied, f"{title} overlaps {occupied[(x, y)]}"
                occupied[(x, y)] = title
        targets = panel["targets"]
        assert targets, title
        assert all(t.get("rawSql", "").strip() for t in targets), title
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            assert target["editorType"] == "sql", title
            assert target["queryType"] == QUERY_TYPES[target["format"]], title
            references = TABLE_REF.findall(target["rawSql"])
            assert references, f"{title} reads no custody table"
            assert all(final for _, _, final in references), f"{title}: read with FINAL"


# ---- the macro expander ------------------------------------------------------------------


def test_the_expected_empty_panels_exist() -> None:
    titles = {(name, p["title"]) for name, d in DASHBOARD_DOCS.items() for p in panels(d)}
    assert set(EXPECTED_EMPTY) <= titles


def test_the_expander_expands_as_the_plugin_does_and_leaves_unknown_macros() -> None:
    start = datetime(2026, 1, 5, tzinfo=UTC)
    macros = Macros(start, start + timedelta(hours=1), 30, {"tenant": ["a", "b'c"], "n": ["7"]})
    sql = (
        "SELECT $__timeInterval(t) AS time, count() / $__interval_s FROM x "
        "WHERE $__timeFilter(t) AND u > $__fromTime AND u < $__toTime "
        "AND tenant IN (${tenant:singlequote}) AND n > ${n} AND m > $n"
    )
    assert macros.expand(sql) == (
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 30 second) AS time, count() / 30 "
        "FROM x WHERE t >= toDateTime(1767571200) AND t <= toDateTime(1767574800) "
        "AND u > toDateTime(1767571200) AND u < toDateTime(1767574800) "
        "AND tenant IN ('a', 'b\\'c') AND n > 7 AND m > 7"
    )
    for unknown in (
        "$__timeFilter_ms(t)",
        "$__dateFilter(d)",
        "$__timeFilter(a, b)",
        "${tenant}",  # two values, no format
        "${other:singlequote}",
        "$__conditionalAll(x, $tenant)",
    ):
        assert "$" in macros.expand(unknown), unknown


# ---- every query runs --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "panel", "target"), PANEL_QUERIES)
def test_every_panel_query_runs_on_the_engine(
    engine: ChdbBackend, name: str, panel: dict[str, Any], target: dict[str, Any]
) -> None:
    rows = select(engine, expanded(name, target["rawSql"]))
    if (name, panel["title"]) in EXPECTED_EMPTY:
        return
    assert rows, f"{name}/{panel['title']} returned no rows"
    if target["format"] == 0:
        # A time series: a "time" column, in order, as the plugin's long-to-wide needs.
        times = [row["time"] for row in rows]
        assert times == sorted(times)
    if panel["type"] == "stat":
        assert len(rows) == 1


@pytest.mark.parametrize(("name", "variable"), VARIABLE_QUERIES)
def test_every_query_variable_runs_on_the_engine(
    engine: ChdbBackend, name: str, variable: dict[str, Any]
) -> None:
    rows = select(engine, expanded(name, variable_sql(variable)))
    assert rows
    if variable["name"] == "tenant":
        assert [list(row.values()) for row in rows] == [[TENANT]]


def test_the_key_panels_show_the_simulation(engine: ChdbBackend) -> None:
    """A few panels, checked for what they should say about the stored simulation."""

    def rows_of(name: str, title: str) -> list[Row]:
        panel = next(p for p in panels(DASHBOARD_DOCS[name]) if p["title"] == title)
        return select(engine, expanded(name, panel["targets"][0]["rawSql"]))

    stored = select(engine, "SELECT count() AS n FROM events FINAL")[0]["n"]
    per_second = rows_of("overview", "Events per second")
    assert round(sum(r["events_per_second"] for r in per_second) * INTERVAL_S) == stored
    assert rows_of("overview", "Events")[0]["events"] == stored

    by_type = {r["alert_type"]: r["alerts"] for r in rows_of("overview", "Alerts by type")}
    stored_alerts = select(
        engine, "SELECT alert_type, count() AS n FROM alerts FINAL GROUP BY alert_type"
    )
    assert by_type == {r["alert_type"]: r["n"] for r in stored_alerts}

    depths = rows_of("delegation", "Delegation depth distribution")
    assert [r["level"] for r in depths][:3] == ["depth 0", "depth 1", "depth 2"]
    assert depths[0]["tasks"] == SIMULATION.roots
    deepest = rows_of("delegation", "Deepest level per custody tree")
    assert sum(r["trees"] for r in deepest) == SIMULATION.roots
    assert rows_of("delegation", "Top delegators")[0]["delegations"] > 0

    workloads = {r["actor_workload_id"] for r in rows_of("agents", "Top workloads")}
    assert "spiffe://acme/agent/planner" in workloads
    assert all(w.startswith("spiffe://acme/") for w in workloads)  # AGENT and SERVICE only

    long_lived = rows_of("token-hygiene", "Long-lived tokens")
    assert long_lived
    assert all(r["lifetime_s"] > 1800 for r in long_lived)
