"""The reduced tables the ClickHouse 18.16 tests run on are the production tables, derived
from the shipped migrations, without what 18.16 cannot hold (tests/support/
clickhouse_server.py). Checked here without a server, which those tests skip without."""

from __future__ import annotations

import re

from processors.storage.migrations import shipped
from tests.support.clickhouse_server import REDUCED_TABLES, reduced_table_statements

_COLUMN = re.compile(r"^\s+(\w+) (.+?),?$")
_NEWER_THAN_18_16 = ("DateTime64", "LowCardinality", "Map(", "TTL", "INDEX", "SETTINGS", "now64")


def _tables(statements: list[str]) -> dict[str, str]:
    found = {}
    for statement in statements:
        code = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
        match = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", code)
        if match:
            found[match[1]] = code
    return found


def _columns(statement: str) -> list[tuple[str, str]]:
    body = statement.split("(", 1)[1].rsplit("\n)", 1)[0]
    return [
        (match[1], match[2])
        for line in body.splitlines()
        if (match := _COLUMN.match(line)) and match[1] != "INDEX"
    ]


def _clauses(statement: str) -> list[str]:
    return [line for line in statement.splitlines() if line.startswith(("ENGINE", "ORDER BY"))]


def test_each_table_ingest_writes_is_reduced_to_what_18_16_holds() -> None:
    reduced = _tables(reduced_table_statements())
    production = _tables(
        [s for migration in shipped() for s in migration.statements(retention_days=1)]
    )
    assert list(reduced) == list(REDUCED_TABLES)
    for table, statement in reduced.items():
        assert not [word for word in _NEWER_THAN_18_16 if word in statement], statement
        kept = [name for name, kind in _columns(production[table]) if not kind.startswith("Map(")]
        assert [name for name, _ in _columns(statement)] == kept, table
        # The same engine (its parentheses aside) and sorting key: a replayed row is the
        # same row, and FINAL reads it once.
        assert [c.replace("()", "") for c in _clauses(statement)] == _clauses(production[table])
