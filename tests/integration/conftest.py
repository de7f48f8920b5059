"""Integration fixtures: a real Tansu broker per test, on a free loopback port, and settings
pointing at it (tests/support/broker.py)."""

from tests.support.broker import broker, settings

__all__ = ["broker", "settings"]
