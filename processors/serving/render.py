"""Terminal views of query results: a custody tree as a tree, rows as a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from processors.serving.records import Alert, CustodyTree, Delegation, Task

_STATE_STYLE = {"ACTIVE": "green", "REVOKED": "dim", "EXPIRED": "yellow"}


def _short(timestamp: str | None) -> str:
    """``2026-11-29T09:00:02.000000Z`` as ``09:00:02`` (the date is in the header)."""
    return timestamp[11:19] if timestamp else "-"


def trace_tree(trace: CustodyTree) -> Tree:
    """The custody tree: tasks nested by delegation, each with its credentials, accesses,
    approvals, break-glass and alerts."""
    alerts_by_task: dict[str | None, list[Alert]] = {}
    for alert in trace.alerts:
        alerts_by_task.setdefault(alert.task_id, []).append(alert)
    children: dict[str | None, list[Task]] = {}
    for task in trace.tasks:
        children.setdefault(task.parent_task_id, []).append(task)
    delegated = {d.child_task_id: d for d in trace.delegations}
    alert_count = len(trace.alerts)
    root = Tree(
        f"[bold]custody tree[/] {escape(trace.root_task_id)}  tenant {escape(trace.tenant)}"
        f"  {len(trace.tasks)} tasks, {len(trace.credentials)} credentials, "
        + (f"[red]{alert_count} alerts[/]" if alert_count else "[green]no alerts[/]")
    )

    def add_task(parent: Tree, task: Task) -> None:
        node = parent.add(_task_label(task, delegated.get(task.task_id)))
        _add_evidence(node, trace, task.task_id, alerts_by_task.get(task.task_id, []))
        for child in children.get(task.task_id, []):
            add_task(node, child)

    known = {task.task_id for task in trace.tasks}
    for task in trace.tasks:
        # Roots, and orphans whose parent never appeared, hang off the top.
        if task.parent_task_id is None or task.parent_task_id not in known:
            add_task(root, task)
    for alert in alerts_by_task.get(None, []):
        root.add(f"[red]{alert.alert_type}[/] {escape(alert.detail)}")
    return root


def _task_label(task: Task, delegation: Delegation | None) -> str:
    """A task's line: its id, status, workload and purpose, and who delegated it."""
    actor = task.actor
    behalf = f" for {escape(actor.on_behalf_of)}" if actor.on_behalf_of else ""
    outcome = f" {task.outcome}" if task.outcome else ""
    label = (
        f"[bold cyan]task[/] {escape(task.task_id)} [dim]{task.status}{outcome}[/]\n"
        f"  {escape(actor.workload_id)}{behalf}: {escape(task.purpose or '?')}"
    )
    if delegation is not None:
        label += (
            f"\n  [magenta]delegated by[/] {escape(delegation.delegator)} "
            f"scopes {escape(', '.join(delegation.scopes))}"
        )
    return label


def _add_evidence(node: Tree, trace: CustodyTree, task_id: str, alerts: list[Alert]) -> None:
    """Under a task's ``node``: its credentials, accesses, approvals, break-glass, alerts."""
    for credential in trace.credentials:
        if credential.task_id != task_id:
            continue
        style = _STATE_STYLE.get(credential.state, "white")
        node.add(
            f"[{style}]token {escape(credential.token_id)} {credential.state}[/] "
            f"{escape(', '.join(credential.scopes))} "
            f"{_short(credential.issued_at)}-{_short(credential.expires_at)}"
            + (f" revoked {_short(credential.revoked_at)}" if credential.revoked_at else "")
        )
    for access in trace.accesses:
        if access.task_id == task_id:
            node.add(
                f"access {escape(access.tool)} {escape(access.action)} "
                f"{escape(access.resource)} with {escape(access.token_id or '-')}: "
                f"{access.outcome} at {_short(access.event_time)}"
            )
    for approval in trace.approvals:
        if approval.task_id == task_id:
            node.add(f"approved by {escape(approval.approver)}: {escape(approval.reason)}")
    for glass in trace.break_glass:
        if glass.task_id == task_id:
            node.add(f"[yellow]break-glass[/] {escape(glass.reason)}")
    for alert in alerts:
        node.add(f"[red]{alert.alert_type}[/] {escape(alert.detail)}")


def rows_table(rows: Sequence[Mapping[str, object]], title: str | None = None) -> Table:
    """Rows as a table, one column per key of the first row."""
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(_cell(row.get(column))) for column in columns))
    return table


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)
