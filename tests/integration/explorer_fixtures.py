"""What the web explorer must show, computed without the explorer: the simulated events
(the pure generator) and the correlator's verdict on them (the pure correlator), for the
stack that ``test_explorer`` runs.

The graph's node ids follow the API's contract: ``task:<task id>``, ``agent:<workload
id>``, ``token:<token id>``, ``tool:<tool>``, ``human:<name>``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TypeVar

from processors.correlation.engine import CorrelationConfig
from producers.simulator import EXPECTED_ALERT, SimulationConfig, TreePlan, plan, simulate
from schemas.models import (
    AccessEvent,
    ApprovalEvent,
    CredentialIssuedEvent,
    CredentialRevokedEvent,
    DelegationEvent,
    Envelope,
    TaskDeclaredEvent,
)
from tests.support.trees import run

# Eight root tasks, each misbehaving, covering all five misbehaviours (checked below):
# tree 0 delegation/use-after-expiry, 1 delegation/leaked token, 2 incident/shared
# credential, 6 batch/self-approval, ...
ROOTS, SEED, GRACE = 8, 8, 10
E = TypeVar("E", bound=Envelope)
TENANT, OTHER_TENANT = "acme", "globex"


@dataclass
class Tree:
    plan: TreePlan
    events: list[Envelope]
    alert_types: Counter[str] = field(default_factory=Counter)

    @property
    def root(self) -> str:
        return self.plan.root_task_id

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def expected_nodes(self) -> dict[str, set[str]]:
        """Node ids by kind, as the events name them."""
        declared = self.of(TaskDeclaredEvent)
        issued = [e.body for e in self.of(CredentialIssuedEvent)]
        humans = {e.actor.on_behalf_of for e in declared if e.actor.on_behalf_of}
        humans |= {e.body.approver for e in self.of(ApprovalEvent)}
        return {
            "task": {f"task:{e.task_id}" for e in self.events},
            # Task actors, and a workload using a token its task does not run as.
            "agent": {f"agent:{e.actor.workload_id}" for e in declared}
            | {f"agent:{e.actor.workload_id}" for e in self.of(AccessEvent) if e.body.token_id},
            "token": {f"token:{body.token_id}" for body in issued},
            "tool": {f"tool:{e.body.tool}" for e in self.of(AccessEvent)},
            "human": {f"human:{name}" for name in humans},
        }

    def delegations(self) -> set[tuple[str, str]]:
        return {
            (f"task:{e.task_id}", f"task:{e.body.child_task_id}") for e in self.of(DelegationEvent)
        }

    def accesses_with(self, token_id: str | None = None) -> int:
        """Accesses made with ``token_id`` (with any token by default)."""
        return sum(1 for e in self.of(AccessEvent) if token_id in (None, e.body.token_id))

    def revoked_tokens(self) -> set[str]:
        return {e.body.token_id for e in self.of(CredentialRevokedEvent)}


def simulated(tenant: str = TENANT, roots: int = ROOTS) -> list[Tree]:
    """The trees ``custody --tenant T simulate --roots N --seed SEED`` publishes, with the
    alert types the pure correlator raises on each under the stack's grace period."""
    config = SimulationConfig(roots=roots, misbehaviour_rate=1.0, seed=SEED, tenant=tenant)
    by_root: dict[str, list[Envelope]] = defaultdict(list)
    for event in simulate(config):
        by_root[event.root_task_id].append(event)
    correlation = CorrelationConfig.of(grace_seconds=GRACE, max_credential_ttl_seconds=86_400)
    trees = []
    for tree_plan in plan(config):
        tree = Tree(tree_plan, by_root[tree_plan.root_task_id])
        tree.alert_types = Counter(run(tree.events, correlation).types())
        assert tree_plan.misbehaviour is not None
        assert tree.alert_types[str(EXPECTED_ALERT[tree_plan.misbehaviour])] >= 1
        trees.append(tree)
    return trees
