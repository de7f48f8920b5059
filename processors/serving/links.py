"""Where the web explorer shows a custody tree: the URL every notification and report
links to (the explorer keeps its state in the URL's fragment)."""

from __future__ import annotations

from urllib.parse import urlencode


def tree_link(explorer: str, tenant: str, root_task_id: str, alert_id: str | None = None) -> str:
    """The explorer at ``explorer`` on a tree of ``tenant``, the alert selected if given."""
    state = {"tree": root_task_id, "tenant": tenant}
    if alert_id is not None:
        state["alert"] = alert_id
    return f"{explorer.rstrip('/')}/#{urlencode(state)}"
