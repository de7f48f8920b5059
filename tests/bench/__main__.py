"""Run every benchmark, print a table and write ``bench-results.json`` at the repo root.

Run from the repository root: ``python -m tests.bench`` (``make bench``). A benchmark is a
function returning a list of :class:`tests.bench.results.Entry`; add it to
:data:`BENCHMARKS`.

Environment: ``CUSTODY_BENCH_EVENTS`` (events per producer run, default 100000),
``CUSTODY_BENCH_CORRELATE_EVENTS`` (events per correlator run, default 30000) and
``CUSTODY_BENCH_PROFILE=1`` (also print a profile of the SDK's publish path).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.bench import bench_correlate, bench_producer
from tests.bench.results import Entry

BENCHMARKS: list[Callable[[], list[Entry]]] = [bench_producer.run, bench_correlate.run]

RESULTS_PATH = Path(__file__).resolve().parents[2] / "bench-results.json"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(entries: list[Entry]) -> Table:
    """The results as a table: value, floor and ratio per entry."""
    table = Table(title="Custody benchmarks")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    for item in entries:
        table.add_row(
            item["name"],
            _number(item["value"]),
            item["unit"],
            _number(item["baseline"]),
            _number(item["ratio"], 3),
        )
    return table


def main() -> None:
    """Run all benchmarks in order, then report."""
    entries = [result for benchmark in BENCHMARKS for result in benchmark()]
    Console().print(render(entries))
    RESULTS_PATH.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
