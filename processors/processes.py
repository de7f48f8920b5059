"""Whether a local process runs, as /proc tells it."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Whether process ``pid`` runs. A killed process nobody reaped lingers as a zombie,
    which signal 0 still reaches and whose /proc entry exists: its command line is
    empty."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False
