"""OPA's and Vault's own log formats through ``custody up``'s collector and ``custody
import`` into the custody tree and the alerts: an agent's task declared with the SDK, the
OPA decision that allowed it and the Vault credentials it used land in one tree; a Vault
token no declared task accounts for is an ORPHANED_TOKEN."""

from __future__ import annotations

import gzip
import json
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from producers.context import CustodyContext
from tests.support.broker import free_port
from tests.support.collect import sample_json, sample_lines, vault_story
from tests.support.events import RESEARCHER, T0, allow, declare, delegate
from tests.support.polling import until
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

TENANT = "acme"
# The tasks the Vault samples' token metadata names (custody_task_id, ...).
PLANNER = CustodyContext.new_root("task-9b1e-planner")
RESEARCH = PLANNER.child("task-2c41-research")


def opa_decision() -> dict[str, Any]:
    """OPA's documented decision event, made at T0 for the planner's task."""
    decision: dict[str, Any] = sample_json("opa/upload.json")[0]
    decision["timestamp"] = (T0 + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    decision["input"]["custody"] = {
        "root_task_id": PLANNER.root_task_id,
        "task_id": PLANNER.task_id,
    }
    return decision


def orphan_login() -> list[str]:
    """The documented AppRole login, for a token whose metadata names no task."""
    lines = []
    for line in sample_lines("vault/login_approle.jsonl"):
        entry = json.loads(line)
        entry["request"]["id"] = "7e1f0c2a-9b3d-4e5f-8a6b-000000000001"
        for auth in (entry.get("auth"), entry.get("response", {}).get("auth")):
            if auth:
                auth["metadata"] = {"role_name": "agent-planner"}
                auth["accessor"] = "hmac-sha256:" + "ab" * 32
                auth["client_token"] = "hmac-sha256:" + "cd" * 32
        lines.append(json.dumps(entry))
    return lines


def upload(address: str, token: str, decisions: list[dict[str, Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{address}/v1/opa/logs",
        data=gzip.compress(json.dumps(decisions).encode()),
        headers={
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "Authorization": f"Bearer {token}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        result: dict[str, Any] = json.loads(answer.read())
        return result


def test_opa_and_vault_logs_become_one_custody_tree_and_its_alerts(tmp_path: Path) -> None:
    stack = Stack(
        tmp_path,
        env={"CUSTODY_COLLECT_VAULT_ADDRESS": f"127.0.0.1:{free_port()}", "CUSTODY_TENANT": TENANT},
    )
    stack.up()
    try:
        status = json.loads(stack.custody("status", "--json").stdout)
        [collect] = [p for p in status["processes"] if p["name"] == "collect"]
        assert collect["healthy"], collect
        # The agents' own evidence, through the SDK.
        stack.publish(
            [
                declare(PLANNER, T0 - timedelta(seconds=5), scopes=("kv:read",)),
                allow(PLANNER, "dec-delegate", T0 - timedelta(seconds=4), scopes=("kv:read",)),
                delegate(
                    PLANNER,
                    RESEARCH,
                    T0 - timedelta(seconds=3),
                    delegatee=RESEARCHER.actor.workload_id,
                    decision_id="dec-delegate",
                    scopes=("kv:read",),
                ),
                declare(
                    RESEARCH, T0 - timedelta(seconds=2), source=RESEARCHER, scopes=("kv:read",)
                ),
            ],
            "agents-1",
        )
        made = stack.custody("collect-token", "--tenant", TENANT, "--source", "opa-prod")
        assert made.returncode == 0, made.stderr
        answer = upload(collect["address"], made.stdout.strip(), [opa_decision()])
        assert answer["published"] == 1, answer

        audit_log = tmp_path / "vault-audit.log"
        audit_log.write_text("\n".join([*vault_story(), *orphan_login()]) + "\n")
        imported = stack.custody(
            "import",
            "vault",
            str(audit_log),
            "--tenant",
            TENANT,
            "--source",
            "vault-prod",
            "--json",
        )
        assert imported.returncode == 0, imported.stderr
        counts = json.loads(imported.stdout)
        assert counts["published"] > 0, counts
        assert not counts["dead_lettered"], counts

        def tree() -> dict[str, Any]:
            traced = stack.custody("trace", PLANNER.task_id, "--of-tenant", TENANT, "--json")
            if traced.returncode == 4:  # not stored yet
                return {"credentials": []}
            assert traced.returncode == 0, traced.stderr
            found: dict[str, Any] = json.loads(traced.stdout)
            return found

        def vault_credentials(found: dict[str, Any]) -> int:
            # Vault's tokens are named by their (HMAC'd) accessors.
            return sum(1 for c in found["credentials"] if c["token_id"].startswith("hmac-sha256:"))

        until(
            lambda: vault_credentials(tree()) >= 2,
            timeout=120,
            what="Vault's credentials in the tree",
        )
        text = json.dumps(tree())
        assert opa_decision()["decision_id"] in text
        assert "task-2c41-research" in text

        def orphaned() -> list[dict[str, Any]]:
            listed = stack.custody(
                "alerts", "--of-tenant", TENANT, "--type", "ORPHANED_TOKEN", "--json"
            )
            return [json.loads(line) for line in listed.stdout.splitlines()]

        until(lambda: bool(orphaned()), timeout=120, what="the orphaned Vault token's alert")
        assert {a["token_id"] for a in orphaned()} == {"hmac-sha256:" + "ab" * 32}
        assert all(a["root_task_id"].startswith("synthetic:vault-prod:") for a in orphaned())
    finally:
        stack.custody("down")
