"""Run the benchmarks, print a table and write ``bench-results.json`` at the repo root.

Run from the repository root: ``python -m tests.bench`` (``make bench``) runs them all;
``python -m tests.bench ingest trace`` (or ``CUSTODY_BENCH_ONLY=ingest,trace``) only the
named ones (a name is the module's, without ``bench_``: producer, correlate, ingest,
trace, verify, notify, report, collect, collect_otlp), and then updates their entries in
``bench-results.json``, keeping the others. A benchmark is a function returning a list of
:class:`tests.bench.results.Entry`; add it to :data:`BENCHMARKS`.

Environment: ``CUSTODY_BENCH_EVENTS`` (events per producer run, default 100000),
``CUSTODY_BENCH_CORRELATE_EVENTS`` (events per correlator run, default 30000),
``CUSTODY_BENCH_INGEST_EVENTS`` (events per ingest run, default 200000),
``CUSTODY_BENCH_TRACE_EVENTS`` (events stored for the trace latency, default 10000000),
``CUSTODY_BENCH_VERIFY_EVENTS`` (events stored for verify, default 100000),
``CUSTODY_BENCH_NOTIFY_ALERTS`` (alerts posted per notify run, default 20000),
``CUSTODY_BENCH_REPORT_EVENTS`` (events of the one tenant reported on, default 10000000),
``CUSTODY_BENCH_COLLECT_DECISIONS`` / ``CUSTODY_BENCH_COLLECT_LINES`` (OPA decisions
uploaded / Vault audit lines followed per collect run, default 20000 each),
``CUSTODY_BENCH_COLLECT_SPANS`` (OTLP spans exported per collect_otlp run, default 20480),
``CUSTODY_BENCH_COLLECT_CLIENTS`` (OPA clients uploading at once, default 1),
``CUSTODY_BENCH_PROFILE=1`` (also print a profile of the SDK's publish path) and
``CUSTODY_BENCH_PYSPY`` / ``CUSTODY_BENCH_INGEST_PYSPY`` / ``CUSTODY_BENCH_NOTIFY_PYSPY``
(a file: record the first correlator / ingest / notify run with py-spy; for collect
``CUSTODY_BENCH_COLLECT_OPA_PYSPY`` / ``CUSTODY_BENCH_COLLECT_VAULT_PYSPY`` /
``CUSTODY_BENCH_COLLECT_OTLP_PYSPY``, see
:func:`tests.bench.results.first_run_profile`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.bench import (
    bench_collect,
    bench_collect_otlp,
    bench_correlate,
    bench_correlate_state,
    bench_ingest,
    bench_notify,
    bench_producer,
    bench_report,
    bench_trace,
    bench_verify,
)
from tests.bench.results import Entry

Benchmark = Callable[[], list[Entry]]

BENCHMARKS: list[Benchmark] = [
    bench_producer.run,
    bench_correlate.run,
    bench_correlate_state.run,
    bench_ingest.run,
    bench_trace.run,
    bench_verify.run,
    bench_notify.run,
    bench_report.run,
    bench_collect.run,
    bench_collect_otlp.run,
]

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


def name_of(benchmark: Benchmark) -> str:
    """``ingest`` for ``tests.bench.bench_ingest.run``."""
    return benchmark.__module__.rsplit(".", 1)[-1].removeprefix("bench_")


def selected(names: list[str]) -> list[Benchmark]:
    """The benchmarks named (all of them, in order, if none is); exits on an unknown name."""
    if not names:
        return list(BENCHMARKS)
    known = {name_of(benchmark): benchmark for benchmark in BENCHMARKS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}")
    return [benchmark for name, benchmark in known.items() if name in names]


def merged(entries: list[Entry], path: Path) -> list[Entry]:
    """The entries of ``path`` with those of ``entries`` replaced or added (by name)."""
    try:
        previous: list[Entry] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        previous = []
    fresh = {item["name"]: item for item in entries}
    kept = [item for item in previous if item["name"] not in fresh]
    return kept + entries


def main(argv: list[str] | None = None) -> None:
    """Run the selected benchmarks in order, then report."""
    names = sys.argv[1:] if argv is None else argv
    if not names and os.environ.get("CUSTODY_BENCH_ONLY"):
        names = [n.strip() for n in os.environ["CUSTODY_BENCH_ONLY"].split(",") if n.strip()]
    benchmarks = selected(names)
    entries = [result for benchmark in benchmarks for result in benchmark()]
    Console().print(render(entries))
    written = entries if len(benchmarks) == len(BENCHMARKS) else merged(entries, RESULTS_PATH)
    RESULTS_PATH.write_text(json.dumps(written, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS_PATH}")


if __name__ == "__main__":
    main()
