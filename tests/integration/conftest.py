"""Integration fixtures: a real Tansu broker per test, on a free loopback port, and settings
pointing at it (tests/support/broker.py).

``RunningBroker``, ``read_to_end`` and ``run_custody`` stay importable from here while
tests/integration/test_publish.py, owned elsewhere, imports them from this module."""

from tests.support.broker import RunningBroker, broker, read_to_end, run_custody, settings

__all__ = ["RunningBroker", "broker", "read_to_end", "run_custody", "settings"]
