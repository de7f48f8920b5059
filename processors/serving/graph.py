"""The custody tree as a graph of who and what, for the web explorer.

A pure function of the custody tree :func:`~processors.serving.trace.trace` returns.
Nodes are the tree's tasks, the agents (workload identities) that ran them, its tokens,
the tools they were used with and the humans who approved a step or on whose behalf the
work was done. A node is ``alerting`` when a stored alert names it (its task, token or
workload) and carries the alert types; a token is ``revoked`` or ``expired`` by its
stored state.

Tools are one node per tool name within a tree: a reader asks "what touched crm.search",
not "which of its calls"; each access stays visible as an edge from its token.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from processors.serving.records import Access, Alert, CustodyTree


@dataclass(slots=True)
class Node:
    id: str
    kind: str
    label: str
    status: str | None = None
    revoked: bool = False
    expired: bool = False
    alerting: bool = False
    alert_types: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Edge:
    id: str
    source: str
    target: str
    kind: str
    label: str
    count: int = 1


# What a task's node carries, in this order.
_TASK_DATA = (
    "task_id",
    "purpose",
    "depth",
    "declared_at",
    "completed_at",
    "outcome",
    "requested_scopes",
)


def task_node_id(task_id: str) -> str:
    return f"task:{task_id}"


def _short(text: str | None, limit: int = 48) -> str:
    text = text or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: dict[str, Edge] = {}

    def node(self, node_id: str, kind: str, label: str, **data: Any) -> Node:
        existing = self.nodes.get(node_id)
        if existing is None:
            existing = self.nodes[node_id] = Node(node_id, kind, label, data=dict(data))
        return existing

    def edge(self, source: str, target: str, kind: str, label: str = "") -> None:
        # One edge per (source, target, kind): repeated accesses of a tool with one token
        # are counted rather than drawn on top of each other (a denied call is its own).
        edge_id = f"{kind}:{source}->{target}" + (f":{label}" if kind == "used" else "")
        previous = self.edges.get(edge_id)
        if previous is None:
            self.edges[edge_id] = Edge(edge_id, source, target, kind, label)
        else:
            previous.count += 1


def _human(graph: _Graph, name: str) -> str:
    node_id = f"human:{name}"
    graph.node(node_id, "human", name)
    return node_id


def custody_graph(tree: CustodyTree) -> dict[str, list[dict[str, Any]]]:
    """Nodes and edges of a custody tree (the one :func:`trace` returns)."""
    graph = _Graph()
    for task in tree.tasks:
        label = _short(task.purpose) or task.task_id
        data = {name: getattr(task, name) for name in _TASK_DATA}
        node = graph.node(task_node_id(task.task_id), "task", label, **data)
        node.status = task.status
        actor = task.actor
        agent = graph.node(
            f"agent:{actor.workload_id}",
            "agent",
            actor.workload_id.rsplit("/", 1)[-1],
            workload_id=actor.workload_id,
            actor_kind=actor.kind,
            instance_id=actor.instance_id,
        )
        graph.edge(node.id, agent.id, "run_by", "run by")
        if actor.on_behalf_of:
            graph.edge(_human(graph, actor.on_behalf_of), node.id, "on_behalf_of", "for")
    for delegation in tree.delegations:
        graph.edge(
            task_node_id(delegation.parent_task_id),
            task_node_id(delegation.child_task_id),
            "delegated",
            ", ".join(delegation.scopes),
        )
    for credential in tree.credentials:
        token = graph.node(
            f"token:{credential.token_id}",
            "token",
            credential.token_id,
            **credential.as_json(),
        )
        token.status = credential.state
        token.revoked = credential.state == "REVOKED"
        token.expired = credential.state == "EXPIRED"
        graph.edge(task_node_id(credential.task_id), token.id, "holds", "holds")
        if credential.parent_token_id:
            graph.edge(f"token:{credential.parent_token_id}", token.id, "rotated", "rotated to")
    runs_as = {task.task_id: task.actor.workload_id for task in tree.tasks}
    holders = {c.token_id: c.task_id for c in tree.credentials}
    for access in tree.accesses:
        _foreign_use(graph, access, runs_as.get(holders.get(access.token_id or "", "")))
        tool = graph.node(f"tool:{access.tool}", "tool", access.tool, tool=access.tool)
        resources = tool.data.setdefault("resources", [])
        if access.resource not in resources:
            resources.append(access.resource)
        source = f"token:{access.token_id}" if access.token_id else task_node_id(access.task_id)
        graph.edge(source, tool.id, "used", f"{access.action} {access.outcome}")
    for approval in tree.approvals:
        graph.edge(
            _human(graph, approval.approver),
            task_node_id(approval.task_id),
            "approved",
            "approved",
        )
    _mark_alerts(graph, tree.alerts)
    # An edge may name a node the tree lacks (a rotation's parent token from another
    # tree, a delegation to a task not yet declared): draw it as a stub rather than drop
    # the evidence that it exists.
    for edge in list(graph.edges.values()):
        for end in (edge.source, edge.target):
            if end not in graph.nodes:
                kind, _, name = end.partition(":")
                graph.node(end, kind, name, missing=True).status = "NOT IN TREE"
    return {
        "nodes": [asdict(node) for node in graph.nodes.values()],
        "edges": [asdict(edge) for edge in graph.edges.values()],
    }


def _foreign_use(graph: _Graph, access: Access, holder_workload: str | None) -> None:
    """A token used by a workload other than the one its task runs as (a shared
    credential): the user is drawn, with a "used by" edge from the token."""
    workload = access.workload_id
    if not access.token_id or holder_workload is None or workload == holder_workload:
        return
    agent = graph.node(
        f"agent:{workload}", "agent", workload.rsplit("/", 1)[-1], workload_id=workload
    )
    graph.edge(f"token:{access.token_id}", agent.id, "used_by", "used by")


def _mark_alerts(graph: _Graph, alerts: Sequence[Alert]) -> None:
    types_by_node: dict[str, set[str]] = defaultdict(set)
    for alert in alerts:
        for node_id in (
            alert.token_id and f"token:{alert.token_id}",
            alert.task_id and task_node_id(alert.task_id),
            alert.workload_id and f"agent:{alert.workload_id}",
            # A self-approval names the human who approved.
            alert.workload_id and f"human:{alert.workload_id}",
        ):
            if node_id and node_id in graph.nodes:
                types_by_node[node_id].add(alert.alert_type)
    for node_id, types in types_by_node.items():
        node = graph.nodes[node_id]
        node.alerting = True
        node.alert_types = sorted(types)
