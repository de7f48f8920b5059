"""The report as evidence: its canonical form and the SHA-256 digests that seal it.

- The canonical form is JSON with sorted keys, no insignificant whitespace and UTF-8, so
  one report has one byte string whoever serialises it.
- ``integrity.sections`` holds the digest of each section computed from ClickHouse, and
  ``integrity.evidence_sha256`` that of the producer chains it covers (each instance's
  count, first and last ``seq`` and the hashes at both ends: the chain links commit to
  every event between them).
- ``integrity.report_sha256`` is the digest of the whole report without that field: a
  number edited in the file no longer matches it.

``custody report verify`` recomputes the digest of the file, then the sections from
ClickHouse for the same tenant, period and settings, and says which no longer hold.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

# The sections recomputed from ClickHouse; the rest (when it was made, where the explorer
# was) describe the report, not the evidence.
EVIDENCE_SECTIONS = (
    "counts",
    "controls",
    "inventory",
    "break_glass",
    "delegations",
    "frameworks",
    "evidence",
)


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical form of ``value``."""
    return hashlib.sha256(canonical(value)).hexdigest()


def seal(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with its ``integrity`` section: per-section digests, then the digest of
    the whole."""
    sealed = copy.deepcopy(report)
    sealed["integrity"] = {
        "algorithm": "sha256 over canonical JSON (sorted keys, no spaces, UTF-8)",
        "sections": {name: digest(sealed[name]) for name in EVIDENCE_SECTIONS},
        "evidence_sha256": digest(sealed["evidence"]["chains"]),
    }
    sealed["integrity"]["report_sha256"] = self_digest(sealed)
    return sealed


def self_digest(report: dict[str, Any]) -> str:
    """The digest of ``report`` without its ``integrity.report_sha256``."""
    body = copy.deepcopy(report)
    body.get("integrity", {}).pop("report_sha256", None)
    return digest(body)


def differences(report: dict[str, Any], recomputed: dict[str, Any]) -> list[str]:
    """What no longer holds: the report's own digest, and each section whose content
    differs from ``recomputed`` (the same report built again from ClickHouse)."""
    found = []
    if self_digest(report) != report.get("integrity", {}).get("report_sha256"):
        found.append("report_sha256: the file was changed after it was sealed")
    for name in EVIDENCE_SECTIONS:
        if digest(report.get(name)) != digest(recomputed.get(name)):
            found.append(f"{name}: ClickHouse now gives other figures")
    return found
