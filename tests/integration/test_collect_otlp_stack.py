"""An agent fleet traced with the OpenTelemetry SDK, calling tools on a real MCP server,
through ``custody up``'s collector into the custody tree that ``custody trace`` prints and
the explorer's API draws: both agents, the delegation, each tool call."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.mcp_agent import LOCAL_TOOL, PLANNER, RESEARCHER, AgentFleet, McpServerLaunch
from tests.support.mcp_server import EXPORT, SEARCH
from tests.support.polling import until
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

TENANT = "acme"
CALLS = ((SEARCH, {"query": "refund"}), (EXPORT, {"queue": "billing"}))


def test_a_traced_multi_agent_run_with_an_mcp_tool_call_is_a_custody_tree(
    tmp_path: Path,
) -> None:
    stack = Stack(tmp_path, env={"CUSTODY_TENANT": TENANT})
    stack.up()
    try:
        status = json.loads(stack.custody("status", "--json").stdout)
        [collect] = [p for p in status["processes"] if p["name"] == "collect"]
        # A runtime that reports no credentials or decisions: observe-only.
        made = stack.custody(
            "collect-token", "--tenant", TENANT, "--source", "agent-fleet", "--observe-only"
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        endpoint = f"{collect['address']}/v1/traces"
        fleet = AgentFleet(endpoint, token)
        try:
            run = fleet.run("why are refunds late?", McpServerLaunch(endpoint, token, CALLS))
        finally:
            fleet.close()
        task = run.planner.task_id

        def tree() -> dict[str, Any]:
            traced = stack.custody("trace", task, "--of-tenant", TENANT, "--json")
            if traced.returncode == 4:  # not stored yet
                return {"tasks": [], "delegations": [], "accesses": []}
            assert traced.returncode == 0, traced.stderr
            found: dict[str, Any] = json.loads(traced.stdout)
            return found

        def complete(found: dict[str, Any]) -> bool:
            return (len(found["tasks"]), len(found["delegations"]), len(found["accesses"])) == (
                2,
                1,
                3,
            )

        until(lambda: complete(tree()), timeout=120, what=lambda: f"the fleet's tree: {tree()}")
        found = tree()
        workloads = {t["actor"]["workload_id"] for t in found["tasks"]}
        assert all(any(agent in w for w in workloads) for _, agent in (PLANNER, RESEARCHER))
        [delegation] = found["delegations"]
        assert delegation["child_task_id"] == run.researcher.task_id
        tools = {a["tool"]: a for a in found["accesses"]}
        assert set(tools) == {LOCAL_TOOL, SEARCH, EXPORT}
        assert {a["task_id"] for a in found["accesses"]} == {run.researcher.task_id}
        assert tools[EXPORT]["outcome"] == "FAILURE"

        # What the explorer draws: its API's tree of the same task.
        query = urllib.parse.urlencode({"id": task, "tenant": TENANT})
        with urllib.request.urlopen(f"{stack.address()}/api/tree?{query}", timeout=30) as answer:
            drawn = json.loads(answer.read())
        text = json.dumps(drawn)
        for name in (run.planner.task_id, run.researcher.task_id, LOCAL_TOOL, SEARCH, EXPORT):
            assert name in text
    finally:
        stack.custody("down")
