"""Temporary: the names tests import from before the correlator was split into
:mod:`processors.correlator`; to be removed once they import from there."""

from processors.correlator.app import APP_ID, build_app, run_worker
from processors.correlator.codec import stored_form, stored_state, tree_key
from processors.correlator.step import CHAIN_LINKS, WATERMARK_KEY, Correlation, Outbound

__all__ = [
    "APP_ID",
    "CHAIN_LINKS",
    "WATERMARK_KEY",
    "Correlation",
    "Outbound",
    "build_app",
    "run_worker",
    "stored_form",
    "stored_state",
    "tree_key",
]
