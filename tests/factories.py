"""Moved to :mod:`tests.support.samples`. Kept while tests/integration/test_publish.py, owned
elsewhere, still imports from here; delete once it imports ``tests.support.samples``."""

from tests.support.samples import json_form, many_trees, one_of_each, stamped

__all__ = ["json_form", "many_trees", "one_of_each", "stamped"]
