"""Read-only SQL for ``custody query`` and the query API.

A query is accepted only if it is a SELECT (or WITH ... SELECT); it then runs as a subquery
(``SELECT * FROM (...)``), which also makes a second statement after a ``;`` a syntax
error, with ``readonly = 1``, so the engine itself refuses any write that slips through.
``final = 1`` makes every ReplacingMergeTree read as if merged: each event_id, alert_id
and state key once, the latest version of each.

``readonly = 1`` does not stop functions that read outside the database (``file()`` as a
plain function reads any file the process can, ``/proc/self/environ`` included), so the
parsed query is checked for them too (:func:`outside_reads`). Limits on time, result size
and memory keep one query from holding the engine that ingest shares; under
``readonly = 1`` a query cannot lift them.
"""

from __future__ import annotations

import re

# The order matters: readonly = 1 last, after the settings it would forbid changing.
READ_SETTINGS = {
    "final": 1,
    "max_execution_time": 30,
    "max_result_rows": 1_000_000,
    "max_result_bytes": 256 * 1024 * 1024,
    "max_memory_usage": 2 * 1024 * 1024 * 1024,
    "readonly": 1,
}

# Functions (and table functions) that read files, other servers, processes or the
# embedding Python process: nothing an analyst of the custody database needs.
_OUTSIDE = frozenset(
    {
        "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn",
        "hdfs", "hdfscluster", "azureblobstorage", "azureblobstoragecluster", "iceberg",
        "icebergs3", "deltalake", "hudi", "mysql", "postgresql", "mongodb", "redis",
        "sqlite", "jdbc", "odbc", "remote", "remotesecure", "cluster", "clusterallreplicas",
        "executable", "input", "python",
    }
)  # fmt: skip
_FUNCTION = re.compile(r"^\s*Function (\w+)", re.M)

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
    # Running the analyst's own SQL is the point; it is checked above and runs read-only.
    return f"SELECT * FROM (\n{text}\n)"  # noqa: S608


def outside_reads(ast: str) -> set[str]:
    """The functions of :data:`_OUTSIDE` named in an ``EXPLAIN AST`` text."""
    return {name for name in _FUNCTION.findall(ast) if name.lower() in _OUTSIDE}
