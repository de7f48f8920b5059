"""Waiting for a condition with a deadline, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed; whether it held.
    For a caller that records what it measured before asserting."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def until(
    condition: Callable[[], bool],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.3,
) -> None:
    """Poll ``condition`` until it holds; past ``timeout`` seconds fail saying ``what``
    (a callable is asked then, to tell what is missing)."""
    if not poll(condition, timeout, interval):
        said = what() if callable(what) else what
        raise AssertionError(f"{said}: not after {timeout}s")
