"""What the benchmarks measure with: nearest-rank percentiles, and py-spy sampling of a
worker process."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, math.ceil(fraction * len(values)))
    return values[min(rank, len(values)) - 1]


@contextmanager
def py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Sample ``pid`` with py-spy while the block runs (nothing if ``output`` is None): an
    ``.svg`` flame graph, or collapsed stacks for any other suffix."""
    if output is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    kind = "flamegraph" if output.suffix == ".svg" else "raw"
    command = [
        str(spy),
        "record",
        "--pid",
        str(pid),
        "-o",
        str(output),
        "-f",
        kind,
        "-r",
        "200",
        "--nonblocking",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
