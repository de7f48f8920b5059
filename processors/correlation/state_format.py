"""The format version of the correlator's saved state (tree states, chain prefixes and
pending chain links in the changelog topics).

Every saved record carries ``"format": STATE_FORMAT``. A record without the key was
written before versioning (format 0), whose layout format 1 keeps unchanged, so it reads
as is. Format 2 adds a tree's renewals (``renewals``: schema v2's ``CREDENTIAL_RENEWED``
moves a token's expiry); a format 1 tree reads as one without renewals, and a worker of
format 1 refuses a format 2 tree rather than judge accesses by the expiries it would miss.
A record from a newer format is refused loudly instead of being read as a positional
layout it does not have: judging events against a misread state would raise false alerts
or hide real ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STATE_FORMAT = 2
_KEY = "format"


class StateFormatError(ValueError):
    """Saved state written in a format this worker cannot read."""


def stamp(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the current format version added (in place, for the hot path)."""
    data[_KEY] = STATE_FORMAT
    return data


def check_format(data: Mapping[str, Any], what: str) -> None:
    """Raise :class:`StateFormatError` naming ``what`` and the remedy when ``data`` was
    saved in a format newer than :data:`STATE_FORMAT`."""
    version = data.get(_KEY, 0)
    if not isinstance(version, int) or version < 0:
        raise StateFormatError(f"{what}: saved state has an invalid format version {version!r}")
    if version > STATE_FORMAT:
        raise StateFormatError(
            f"{what} was saved in correlator state format {version}, but this worker reads "
            f"formats 0 to {STATE_FORMAT}: run a Custody release that reads format "
            f"{version}, or rebuild the state from the events topic (docs/operations.md, "
            f"'Correlator state')"
        )
