"""Where the web explorer shows a custody tree: the URL every notification and report
links to (the explorer keeps its state in the URL's fragment)."""

from __future__ import annotations

from urllib.parse import quote


def tree_link(explorer: str, tenant: str, root_task_id: str, alert_id: str | None = None) -> str:
    """The explorer at ``explorer`` on a tree of ``tenant``, the alert selected if given."""
    # quote() per value: urlencode's generality costs ten times more, once per notified alert.
    base, tree, of = explorer.rstrip("/"), quote(root_task_id, safe=""), quote(tenant, safe="")
    link = f"{base}/#tree={tree}&tenant={of}"
    return link if alert_id is None else f"{link}&alert={quote(alert_id, safe='')}"
