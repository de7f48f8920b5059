"""Print ``faults-results.json`` as a markdown table, the source of the one in
``docs/faults.md``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.faults.conftest import ROOT


def table(results: dict[str, Any]) -> str:
    """The results as a markdown table: area, what was tried, survived, measured."""
    lines = [
        "| area | tried | survived | measured |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["results"]:
        measured = ", ".join(f"{k} {v}" for k, v in row["measured"].items())
        survived = "yes" if row["survived"] else "**NO**"
        lines.append(f"| {row['area']} | {row['tried']} | {survived} | {measured} |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "faults-results.json"
    print(table(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
