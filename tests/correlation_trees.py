"""Moved to :mod:`tests.support.trees`. Kept while tests/integration/explorer_fixtures.py,
owned elsewhere, still imports from here; delete once it imports ``tests.support.trees``."""

from tests.support.trees import run

__all__ = ["run"]
