"""The alert reference (``docs/alerts.md``) as a web page, ``GET /runbook`` of the query
API: the runbook each notification links to, one section per alert type at
``/runbook#<alert type in lower case>`` (the anchors GitHub gives the same headings).

Rendered with markdown-it-py (CommonMark and tables), raw HTML in the source disabled; the
page loads nothing from elsewhere."""

from __future__ import annotations

import re
from functools import cache
from html import escape
from importlib.resources import files

from markdown_it import MarkdownIt

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem}"
    "code{background:#f4f4f4;padding:0 .2rem}"
)


def anchor(heading: str) -> str:
    """The id of a heading, as GitHub derives it: lower case, punctuation dropped, spaces
    as hyphens (``UNREVOKED_TOKEN`` -> ``unrevoked_token``)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def render(markdown: str, title: str) -> str:
    """A page of ``markdown``, each heading with its anchor."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown)
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            token.attrSet("id", anchor(tokens[index + 1].content))
    body = parser.renderer.render(tokens, parser.options, {})
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


@cache
def alert_reference() -> bytes:
    """The alert reference page (docs/alerts.md, package data when installed)."""
    source = files("docs").joinpath("alerts.md").read_text(encoding="utf-8")
    return render(source, "Custody alert reference").encode()
