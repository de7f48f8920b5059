"""The terminal view of a blast radius: what the identity or token could reach (its
credentials, the delegations below its tasks), what it did reach (the accesses), the gap
between them, the humans involved and the alerts, as a tree."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.tree import Tree

from processors.reporting.blast_radius import BlastRadius, DelegatedTask
from processors.serving.render import _STATE_STYLE

# A section lists this many items, then says how many more the JSON holds.
SHOWN = 20

_Chain = tuple[int, str, str, tuple[str, ...]]


def blast_radius_tree(radius: BlastRadius) -> Tree:
    """The blast radius as a tree: could reach, did reach, the gap, humans, alerts."""
    period = f"{radius.since or 'the beginning'} to {radius.until or 'now'}"
    alerts = len(radius.alerts)
    root = Tree(
        f"[bold]blast radius[/] of {radius.kind} {escape(radius.subject)}  "
        f"tenant {escape(radius.tenant)}, {escape(period)}\n"
        f"  {radius.trees} trees, {len(radius.tasks)} own tasks, "
        f"{len(radius.credentials)} credentials, {len(radius.delegations)} delegated tasks, "
        + (f"[red]{alerts} alerts[/]" if alerts else "[green]no alerts[/]")
    )
    if radius.kind == "token":
        root.add(f"held by {escape(radius.identity)}")
    could = root.add("[bold cyan]could reach[/]")
    credentials = could.add(
        f"credentials ({len(radius.credentials)}): scopes {escape(_scopes(radius.granted_scopes))}"
    )
    for credential in radius.credentials[:SHOWN]:
        style = _STATE_STYLE.get(credential.state, "white")
        rotated = (
            f" rotated from {escape(credential.parent_token_id)}"
            if credential.parent_token_id
            else ""
        )
        credentials.add(
            f"[{style}]token {escape(credential.token_id)} {credential.state}[/] "
            f"{credential.credential_kind} for {escape(credential.audience)}: "
            f"{escape(_scopes(credential.scopes))}  {credential.issued_at} to "
            f"{credential.revoked_at or credential.expires_at}{rotated}"
        )
    _more(credentials, len(radius.credentials))
    delegations = could.add(
        f"delegated tasks ({len(radius.delegations)}): "
        f"scopes {escape(_scopes(radius.delegated_scopes))}"
    )
    _add_chains(delegations, radius.delegations)
    did = root.add("[bold cyan]did reach[/]")
    for reach in radius.accesses[:SHOWN]:
        outcomes = ", ".join(
            f"[{'green' if outcome == 'SUCCESS' else 'red'}]{outcome} {count}[/]"
            for outcome, count in reach.outcomes.items()
        )
        did.add(
            f"{escape(reach.workload_id)}: {escape(reach.tool)} {escape(reach.action)} "
            f"{escape(reach.resource)}  {outcomes}  scopes {escape(_scopes(reach.scopes))}, "
            f"{reach.tokens} tokens, {reach.first} to {reach.last}"
        )
    _more(did, len(radius.accesses))
    if not radius.accesses:
        did.add("[dim]no access[/]")
    unused = radius.unused_scopes
    root.add(
        f"[yellow]gap: granted, never used:[/] {escape(_scopes(unused))}"
        if unused
        else "[green]gap: every scope granted was used[/]"
    )
    humans = root.add(f"[bold cyan]humans[/] ({len(radius.humans)})")
    for human in radius.humans[:SHOWN]:
        humans.add(f"{escape(human.name)} ({', '.join(human.roles)}): {human.tasks} tasks")
    _more(humans, len(radius.humans))
    shown_alerts = root.add(
        f"[bold red]alerts[/] ({alerts})" if alerts else "[bold cyan]alerts[/] (0)"
    )
    for alert in radius.alerts[:SHOWN]:
        shown_alerts.add(
            f"[red]{alert.alert_type}[/] {alert.severity} {alert.event_time} "
            f"tree {escape(alert.root_task_id)}: {escape(alert.detail)}"
        )
    _more(shown_alerts, alerts)
    return root


def _scopes(scopes: Sequence[str]) -> str:
    return ", ".join(scopes) if scopes else "none"


def _more(node: Tree, total: int) -> None:
    if total > SHOWN:
        node.add(f"[dim]... and {total - SHOWN} more (--json lists them all)[/]")


def _add_chains(node: Tree, delegations: Sequence[DelegatedTask]) -> None:
    """The delegations as chains of identities: who delegated to whom at each hop, with
    which scopes, in how many tasks (one line for the same step in many trees)."""
    counts: dict[_Chain, int] = {}
    for d in delegations:
        chain = (d.hops, d.delegator, d.delegatee, tuple(d.scopes))
        counts[chain] = counts.get(chain, 0) + 1

    def add(parent: Tree, hops: int, delegator: str | None) -> None:
        steps = sorted(
            chain
            for chain in counts
            if chain[0] == hops and (delegator is None or chain[1] == delegator)
        )
        for chain in steps[:SHOWN]:
            _, by, to, scopes = chain
            child = parent.add(
                f"[magenta]hop {hops}[/] {escape(by)} -> {escape(to)}: "
                f"{escape(_scopes(scopes))} ({counts[chain]} tasks)"
            )
            add(child, hops + 1, to)

    add(node, 1, None)
