"""Moved to :mod:`tests.support.stored`. Kept while tests/integration/test_explorer_api.py,
owned elsewhere, still imports from here; delete once it imports ``tests.support.stored``."""

from tests.support.stored import store

__all__ = ["store"]
