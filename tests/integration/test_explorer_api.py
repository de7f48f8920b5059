"""The explorer's JSON API and static files, served by the real QueryApi over real chdb.

The store holds a simulation where every tree misbehaves, stored the way ingest stores it
(tests/support/stored.py), twice: for tenant acme and, with the same seed and so the
same ids, for tenant globex. Expectations come from the simulator's events, not from the
API. The page itself is driven in a browser by test_explorer.py.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from processors.serve import QueryApi
from processors.storage.backend import ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.target import ChdbTarget
from producers.settings import Settings
from producers.simulator import SimulationConfig, simulate
from schemas.models import (
    AccessEvent,
    Alert,
    CredentialIssuedEvent,
    CredentialRevokedEvent,
    DelegationEvent,
    Envelope,
)
from tests.support.stored import store

pytestmark = pytest.mark.integration

ACME = SimulationConfig(
    roots=10,
    misbehaviour_rate=1.0,
    seed=5,
    start=datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
    tenant="acme",
)
GLOBEX = replace(ACME, tenant="globex")


class Stored:
    def __init__(self, events: list[Envelope], alerts: list[Alert], address: str) -> None:
        self.events = events
        self.alerts = alerts
        self.address = address

    def tree(self, root: str) -> list[Envelope]:
        return [event for event in self.events if event.root_task_id == root]

    def get(self, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"{self.address}{path}")
        if host is not None:
            request.add_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def api(self, route: str, **params: str | int) -> tuple[int, Any]:
        status, _, body = self.get(f"/api/{route}?{urlencode(params)}")
        return status, json.loads(body)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    home = tmp_path_factory.mktemp("explorer")
    target = ChdbTarget(home / "chdb")
    backend = ChdbBackend(target)
    api = QueryApi(Settings(serve_port=0, home=home), backend)
    try:
        migrate(target, 400, backend)
        events = list(simulate(ACME))
        alerts = store(backend, events)
        store(backend, list(simulate(GLOBEX)), producer="sim/2")
        api.start()
        yield Stored(events, alerts, api.address)
    finally:
        api.stop()
        backend.close()


def _a_root_with(stored: Stored, alert_type: str) -> str:
    return next(alert.root_task_id for alert in stored.alerts if alert.alert_type == alert_type)


def test_tree_graph_holds_every_task_agent_token_tool_and_human(stored: Stored) -> None:
    root = _a_root_with(stored, "SCOPE_ESCALATION")
    events = stored.tree(root)
    status, tree = stored.api("tree", id=root, tenant="acme")
    assert status == 200, tree
    nodes = {node["id"]: node for node in tree["graph"]["nodes"]}
    by_kind: dict[str, set[str]] = {}
    for node in nodes.values():
        by_kind.setdefault(node["kind"], set()).add(node["id"])
    issued = [e.body for e in events if isinstance(e, CredentialIssuedEvent)]
    assert by_kind["task"] == {f"task:{e.task_id}" for e in events}
    assert by_kind["token"] == {f"token:{body.token_id}" for body in issued}
    assert by_kind["tool"] == {f"tool:{e.body.tool}" for e in events if isinstance(e, AccessEvent)}
    assert by_kind["agent"] == {
        f"agent:{e.actor.workload_id}" for e in events if e.event_type == "TASK_DECLARED"
    }
    shared = _a_root_with(stored, "SHARED_CREDENTIAL")
    _, shared_tree = stored.api("tree", id=shared, tenant="acme")
    users = {
        f"agent:{e.actor.workload_id}"
        for e in stored.tree(shared)
        if isinstance(e, AccessEvent) and e.body.token_id
    }
    declared = {
        f"agent:{e.actor.workload_id}"
        for e in stored.tree(shared)
        if e.event_type == "TASK_DECLARED"
    }
    assert users - declared, "the shared account is not a task's actor"
    shared_nodes = {n["id"] for n in shared_tree["graph"]["nodes"] if n["kind"] == "agent"}
    assert shared_nodes == declared | users
    assert any(e["kind"] == "used_by" for e in shared_tree["graph"]["edges"])
    revoked = {f"token:{e.body.token_id}" for e in events if isinstance(e, CredentialRevokedEvent)}
    assert {n for n in by_kind["token"] if nodes[n]["revoked"]} == revoked
    delegated = {
        (edge["source"], edge["target"])
        for edge in tree["graph"]["edges"]
        if edge["kind"] == "delegated"
    }
    assert delegated == {
        (f"task:{e.task_id}", f"task:{e.body.child_task_id}")
        for e in events
        if isinstance(e, DelegationEvent)
    }
    for edge in tree["graph"]["edges"]:
        assert edge["source"] in nodes, edge
        assert edge["target"] in nodes, edge


def test_alerting_nodes_are_the_ones_the_alerts_name(stored: Stored) -> None:
    for alert_type in ("SCOPE_ESCALATION", "SHARED_CREDENTIAL", "SELF_APPROVAL"):
        root = _a_root_with(stored, alert_type)
        _, tree = stored.api("tree", id=root, tenant="acme")
        alerting = {
            node["id"]: node["alert_types"] for node in tree["graph"]["nodes"] if node["alerting"]
        }
        assert any(alert_type in types for types in alerting.values()), (alert_type, alerting)
        named = set()
        for alert in (a for a in stored.alerts if a.root_task_id == root):
            named |= {
                f"task:{alert.task_id}",
                f"token:{alert.token_id}",
                f"agent:{alert.workload_id}",
                f"human:{alert.workload_id}",
            }
        assert set(alerting) <= named


def test_a_task_id_in_two_tenants_needs_the_tenant(stored: Stored) -> None:
    root = stored.events[0].root_task_id
    status, body = stored.api("tree", id=root)
    assert status == 409
    assert "acme" in body["error"]
    assert "globex" in body["error"]
    status, tree = stored.api("tree", id=root, tenant="globex")
    assert status == 200
    assert tree["tenant"] == "globex"


def test_unknown_and_malformed_tree_requests(stored: Stored) -> None:
    assert stored.api("tree", id="no-such-task")[0] == 404
    assert stored.api("tree")[0] == 400
    assert stored.api("nothing")[0] == 404


def test_search_finds_tasks_tokens_and_workloads(stored: Stored) -> None:
    child = next(e for e in stored.events if isinstance(e, DelegationEvent)).body.child_task_id
    status, found = stored.api("search", q=child, tenant="acme")
    assert status == 200
    assert found["results"][0]["kind"] == "task"
    assert found["results"][0]["id"] == child

    token = next(e for e in stored.events if isinstance(e, CredentialIssuedEvent))
    _, found = stored.api("search", q=token.body.token_id[:16], tenant="acme")
    tokens = [r for r in found["results"] if r["kind"] == "token"]
    assert token.body.token_id in {r["id"] for r in tokens}
    hit = next(r for r in tokens if r["id"] == token.body.token_id)
    assert (hit["task_id"], hit["root_task_id"]) == (token.task_id, token.root_task_id)

    _, found = stored.api("search", q="agent/coder", tenant="acme")
    workloads = [r for r in found["results"] if r["kind"] == "workload"]
    coder_trees = {
        e.root_task_id
        for e in stored.events
        if e.event_type == "TASK_DECLARED" and e.actor.workload_id.endswith("agent/coder")
    }
    assert {r["root_task_id"] for r in workloads} == coder_trees
    assert stored.api("search", q="   ")[1] == {"results": []}


def test_token_timeline_follows_its_lifecycle(stored: Stored) -> None:
    revoked = next(e for e in stored.events if isinstance(e, CredentialRevokedEvent))
    token_id = revoked.body.token_id
    status, body = stored.api("token", id=token_id, tenant="acme")
    assert status == 200, body
    kinds = [mark["kind"] for mark in body["timeline"]]
    accesses = [
        e for e in stored.events if isinstance(e, AccessEvent) and e.body.token_id == token_id
    ]
    assert kinds[0] == "ISSUED"
    assert Counter(kinds)["ACCESS"] == len(accesses)
    assert Counter(kinds)["REVOKED"] == 1
    assert "EXPIRES" in kinds
    times = [mark["time"] for mark in body["timeline"]]
    assert times == sorted(times)
    assert body["token"]["state"] == "REVOKED"
    assert body["root_task_id"] == revoked.root_task_id
    assert stored.api("token", id=token_id)[0] == 409
    assert stored.api("token", id="tok-nothing", tenant="acme")[0] == 404


def test_alerts_newest_first_filtered_and_limited(stored: Stored) -> None:
    status, body = stored.api("alerts", tenant="acme")
    assert status == 200
    assert {a["alert_id"] for a in body["alerts"]} == {a.alert_id for a in stored.alerts}
    times = [a["event_time"] for a in body["alerts"]]
    assert times == sorted(times, reverse=True)
    _, body = stored.api("alerts", tenant="acme", type="SELF_APPROVAL", limit=1)
    assert [a["alert_type"] for a in body["alerts"]] == ["SELF_APPROVAL"]
    assert stored.api("alerts", type="NOT_A_TYPE")[0] == 400
    assert stored.api("alerts", since="yesterday")[0] == 400


def test_page_and_static_files_only(stored: Stored) -> None:
    status, headers, page = stored.get("/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b"static/vendor/cytoscape.min.js" in page
    status, headers, _ = stored.get("/static/vendor/cytoscape.min.js")
    assert status == 200
    assert "javascript" in headers["Content-Type"]
    for path in (
        "/static/../../pyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
        "/static/package.json",
        "/static/.gitignore",
        "/static/nothing.js",
    ):
        assert stored.get(path)[0] == 404, path


def test_a_foreign_host_name_gets_nothing_but_health(stored: Stored) -> None:
    port = stored.address.rsplit(":", 1)[1]
    rebound = f"attacker.example:{port}"
    assert stored.get("/", host=rebound)[0] == 403
    assert stored.get("/api/alerts", host=rebound)[0] == 403
    assert stored.get("/health", host=rebound)[0] == 200
    assert stored.get("/api/alerts", host=f"localhost:{port}")[0] == 200
