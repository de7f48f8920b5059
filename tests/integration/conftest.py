"""Integration fixtures: a real Tansu broker per test, on a free loopback port, and settings
pointing at it (tests/support/broker.py); an embedded engine migrated for the test
(tests/support/stored.py); custody collect's service on that broker
(tests/support/collect.py)."""

from tests.support.broker import broker, settings
from tests.support.collect import collector
from tests.support.stored import backend

__all__ = ["backend", "broker", "collector", "settings"]
