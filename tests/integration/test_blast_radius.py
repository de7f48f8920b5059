"""``custody blast-radius`` over real chdb: builder trees stored the way ingest stores them
(tests/support/stored.py), and each blast radius checked against what the events say.

Tree ``a-`` shares the coder's token with the researcher (a SHARED_CREDENTIAL alert) and
rotates it once; tree ``b-`` self-approves the coder's task; tree ``c-``, clean, runs ten
days later, outside the period the period checks name.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
import typer
from typer.testing import CliRunner

from processors.reporting.blast_radius import NotFound, blast_radius
from processors.reporting.blast_radius_view import blast_radius_tree
from processors.reporting.commands import register
from processors.serve import QueryApi
from processors.serving.reader import BackendReader
from processors.storage.backend import ChdbBackend
from processors.storage.migrations import migrate
from processors.storage.target import ChdbTarget
from producers import events as sdk
from producers.settings import Settings
from schemas.models import (
    AccessEvent,
    Alert,
    ApprovalEvent,
    CredentialIssuedEvent,
    DelegationEvent,
    Envelope,
    TaskDeclaredEvent,
)
from tests.support.events import CODER, PLANNER, RESEARCHER, T0, VAULT, use
from tests.support.stored import store
from tests.support.trees import Tree, mischievous

pytestmark = pytest.mark.integration

TENANT = "acme"
LATER = 10 * 24 * 3600.0
PERIOD = (T0 - timedelta(hours=1), T0 + timedelta(days=1))


def _rotated_shared_tree() -> list[Envelope]:
    """Tree ``a-`` with the shared token, then the coder's token rotated and used."""
    stream = mischievous({"shared"}, name="a-")
    code = Tree("a-").code
    stream.append(
        sdk.credential_issued(
            VAULT,
            code,
            token_id="a-tok-code-2",
            token_subject=CODER.actor.workload_id,
            credential_kind="JWT",
            audience="db",
            scopes=["db:read"],
            issued_at=T0 + timedelta(seconds=25),
            expires_at=T0 + timedelta(seconds=925),
            decision_id="dec-a-tok-code",
            parent_token_id="a-tok-code",
            event_time=T0 + timedelta(seconds=25),
        )
    )
    stream.append(
        use(code, "a-tok-code-2", T0 + timedelta(seconds=25.5), decision_id="dec-a-tok-code")
    )
    return stream


@dataclass
class Stored:
    events: list[Envelope]
    alerts: list[Alert]
    reader: BackendReader
    settings: Settings

    def within(self) -> list[Envelope]:
        return [e for e in self.events if PERIOD[0] <= e.event_time < PERIOD[1]]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    home = tmp_path_factory.mktemp("blast")
    target = ChdbTarget(home / "chdb")
    backend = ChdbBackend(target)
    settings = Settings(serve_port=0, home=home, tenant=TENANT)
    # The CLI reads through the query API, as it does while ingest+serve owns the engine.
    api = QueryApi(settings, backend)
    try:
        migrate(target, 400, backend)
        events = (
            _rotated_shared_tree()
            + mischievous({"self_approval"}, name="b-", offset=100)
            + mischievous(set(), name="c-", offset=LATER)
        )
        alerts = store(backend, events)
        api.start()
        yield Stored(events, alerts, BackendReader(backend), settings)
    finally:
        api.stop()
        backend.close()


def _accesses(events: list[Envelope], keep: set[str] | None = None) -> Counter[tuple[str, ...]]:
    """ACCESS events counted per workload, tool, resource, action and outcome; only those
    with a token in ``keep`` unless it is None."""
    return Counter(
        (e.actor.workload_id, e.body.tool, e.body.resource, e.body.action, e.body.outcome)
        for e in events
        if isinstance(e, AccessEvent) and (keep is None or e.body.token_id in keep)
    )


def _reached(radius_accesses: list[dict[str, object]]) -> Counter[tuple[str, ...]]:
    found: Counter[tuple[str, ...]] = Counter()
    for reach in radius_accesses:
        outcomes = reach["outcomes"]
        assert isinstance(outcomes, dict)
        for outcome, count in outcomes.items():
            key = (reach["workload_id"], reach["tool"], reach["resource"], reach["action"])
            found[(*map(str, key), outcome)] += count
    return found


def test_identity_reaches_its_credentials_delegations_accesses_humans_and_alerts(
    stored: Stored,
) -> None:
    planner = PLANNER.actor.workload_id
    radius = blast_radius(stored.reader, TENANT, identity=planner, since=PERIOD[0], until=PERIOD[1])
    events = stored.within()
    issued = [e.body for e in events if isinstance(e, CredentialIssuedEvent)]
    mine = {b.token_id for b in issued if b.token_subject == planner}
    assert {c.token_id for c in radius.credentials} == mine == {"a-tok-root", "b-tok-root"}
    assert radius.granted_scopes == sorted(
        {s for b in issued if b.token_id in mine for s in b.scopes}
    )
    # Every task below the planner's roots was delegated, hop by hop (depth below the root).
    delegations = [e for e in events if isinstance(e, DelegationEvent)]
    declared = {e.task_id: e for e in events if isinstance(e, TaskDeclaredEvent)}
    assert {
        (d.child_task_id, d.hops, d.delegatee, tuple(d.scopes)) for d in radius.delegations
    } == {
        (
            e.body.child_task_id,
            declared[e.body.child_task_id].depth,
            e.body.delegatee,
            tuple(e.body.scopes),
        )
        for e in delegations
    }
    # The planner's reach covers every access of its trees: its own and its delegates'.
    assert _reached([r.as_json() for r in radius.accesses]) == _accesses(events)
    humans = {h.name: h.roles for h in radius.humans}
    behalf = {e.actor.on_behalf_of for e in declared.values() if e.actor.on_behalf_of}
    approvers = {e.body.approver for e in events if isinstance(e, ApprovalEvent)}
    assert set(humans) == behalf | approvers
    assert all("approver" in humans[name] for name in approvers)
    expected_alerts = {a.alert_id for a in stored.alerts if a.root_task_id in {"a-root", "b-root"}}
    assert {a.alert_id for a in radius.alerts} == expected_alerts
    assert {"SHARED_CREDENTIAL", "SELF_APPROVAL"} <= {a.alert_type for a in radius.alerts}
    assert radius.trees == 2
    assert radius.tasks == ["a-root", "b-root"]


def test_the_period_bounds_the_trees(stored: Stored) -> None:
    researcher = RESEARCHER.actor.workload_id
    everything = blast_radius(stored.reader, TENANT, identity=researcher)
    bounded = blast_radius(
        stored.reader, TENANT, identity=researcher, since=PERIOD[0], until=PERIOD[1]
    )
    assert (everything.trees, bounded.trees) == (3, 2)
    assert {c.token_id for c in everything.credentials} - {
        c.token_id for c in bounded.credentials
    } == {"c-tok-research"}
    # The researcher delegated each tree's code task; it reached what those tasks did.
    assert {d.child_task_id for d in everything.delegations} == {"a-code", "b-code", "c-code"}
    assert {d.hops for d in everything.delegations} == {1}
    assert "c-code" not in {d.child_task_id for d in bounded.delegations}


def test_token_reaches_its_rotations_and_who_used_them(stored: Stored) -> None:
    radius = blast_radius(stored.reader, TENANT, token="a-tok-code")
    lineage = {"a-tok-code", "a-tok-code-2"}
    assert {c.token_id for c in radius.credentials} == lineage
    assert radius.identity == CODER.actor.workload_id
    assert radius.tasks == ["a-code"]
    assert radius.delegations == []
    assert _reached([r.as_json() for r in radius.accesses]) == _accesses(stored.events, lineage)
    # The researcher's use of the coder's token is in its reach, and alerted.
    assert RESEARCHER.actor.workload_id in {r.workload_id for r in radius.accesses}
    assert "SHARED_CREDENTIAL" in {a.alert_type for a in radius.alerts}
    assert all(a.root_task_id == "a-root" for a in radius.alerts)
    assert radius.unused_scopes == []


def test_unknown_identity_or_token_is_not_found(stored: Stored) -> None:
    with pytest.raises(NotFound):
        blast_radius(stored.reader, TENANT, identity="spiffe://acme/nobody")
    with pytest.raises(NotFound):
        blast_radius(stored.reader, TENANT, token="tok-nobody")
    with pytest.raises(NotFound):
        blast_radius(stored.reader, "globex", token="a-tok-code")


def test_view_shows_could_did_gap_humans_alerts(stored: Stored) -> None:
    from rich.console import Console

    radius = blast_radius(stored.reader, TENANT, identity=PLANNER.actor.workload_id)
    console = Console(width=200, record=True, color_system=None)
    console.print(blast_radius_tree(radius))
    text = console.export_text()
    for part in ("could reach", "did reach", "gap:", "humans", "SHARED_CREDENTIAL", "a-tok-root"):
        assert part in text
    assert f"hop 2 {RESEARCHER.actor.workload_id} -> {CODER.actor.workload_id}" in text


def test_command_prints_json_and_checks_its_options(stored: Stored) -> None:
    app = typer.Typer()
    register(app)
    # A second command keeps typer from making blast-radius the app itself.
    app.command("noop")(lambda: None)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["blast-radius", *args], obj=stored.settings)
        return result.exit_code, result.stdout

    code, output = run("--token", "a-tok-code", "--json")
    assert code == 0, output
    shape = json.loads(output)
    assert {c["token_id"] for c in shape["credentials"]} == {"a-tok-code", "a-tok-code-2"}
    assert set(shape) == {
        "subject",
        "counts",
        "scopes",
        "tasks",
        "credentials",
        "delegations",
        "accesses",
        "humans",
        "alerts",
    }
    code, output = run("--identity", PLANNER.actor.workload_id, "--from", "2026-11-29T08:00Z")
    assert code == 0, output
    assert "blast radius" in output
    assert run("--identity", "x", "--token", "y")[0] == 2
    assert run()[0] == 2
    assert run("--identity", "spiffe://acme/nobody")[0] == 4
    assert run("--identity", "x", "--from", "yesterday")[0] == 2
