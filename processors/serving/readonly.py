"""Read-only SQL for ``custody query`` and the query API.

A query is accepted only if it is a SELECT (or WITH ... SELECT); it then runs as a subquery
(``SELECT * FROM (...)``), which also makes a second statement after a ``;`` a syntax
error, with ``readonly = 1``, so the engine itself refuses any write that slips through.
``final = 1`` makes every ReplacingMergeTree read as if merged: each event_id, alert_id
and state key once, the latest version of each.
"""

from __future__ import annotations

import re

# The order matters: readonly = 1 last, after the settings it would forbid changing.
READ_SETTINGS = {"final": 1, "readonly": 1}

_COMMENTS = re.compile(r"(--[^\n]*\n|/\*.*?\*/|\s)+", re.S)
_READ = re.compile(r"(SELECT|WITH)\b", re.I)


class ReadOnlyError(ValueError):
    """The SQL is not a read-only query."""


def readonly_sql(sql: str) -> str:
    """``sql`` as a read-only subquery, or ReadOnlyError naming what was refused."""
    text = sql.strip().rstrip(";").rstrip()
    body = _COMMENTS.sub(" ", text).strip()
    if not _READ.match(body):
        word = body.split(maxsplit=1)[0].upper() if body else "an empty query"
        raise ReadOnlyError(
            f"only read-only queries run here (SELECT or WITH ... SELECT); {word} is refused"
        )
    return f"SELECT * FROM (\n{text}\n)"
