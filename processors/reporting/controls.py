"""The report's controls: each one's measure over the period, its status and its
exceptions.

An exception is an alert the correlator raised in the period: every alert type belongs to
exactly one control (:data:`EXCEPTIONS_OF`), so every planted misbehaviour lands in one
place, linked to its tree and its evidence. A control's measures come from the period's
counts (what was done) beside its exceptions (where it was not), so an auditor sees the
rate as well as the cases; :mod:`processors.reporting.queries` holds the SQL.

Status: ``EFFECTIVE`` with no exception, ``EXCEPTIONS`` with some, ``NOT_EXERCISED`` when
the period holds nothing the control governs (no break-glass, say) and no exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.models import AlertType

Row = Mapping[str, Any]

EXCEPTIONS_OF: dict[str, tuple[AlertType, ...]] = {
    "workload_identity": (AlertType.SHARED_CREDENTIAL,),
    "decision_before_access": (AlertType.UNAUTHORIZED_ACCESS,),
    "ephemeral_credentials": (
        AlertType.UNREVOKED_TOKEN,
        AlertType.ORPHANED_TOKEN,
        AlertType.TOKEN_USED_AFTER_EXPIRY,
        AlertType.TOKEN_USED_AFTER_REVOCATION,
    ),
    "human_approval_separation": (AlertType.SELF_APPROVAL,),
    "delegation_accountability": (
        AlertType.SCOPE_ESCALATION,
        AlertType.DELEGATION_IDENTITY_REUSE,
    ),
    "break_glass_governed": (AlertType.BREAK_GLASS_UNAPPROVED, AlertType.BREAK_GLASS_OVERDUE),
    "batch_token_rotation": (AlertType.LONG_LIVED_CREDENTIAL,),
    "evidence_integrity": (AlertType.BROKEN_CHAIN, AlertType.EVIDENCE_GAP),
}
CONTROL_OF = {kind: control for control, kinds in EXCEPTIONS_OF.items() for kind in kinds}


@dataclass(frozen=True)
class Facts:
    """What the controls are measured on: the period's counts, its credentials' figures,
    its delegations by depth and its producer chains."""

    counts: Row
    credentials: Row
    delegations: Sequence[Row]
    chains: Sequence[Row]


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _identity(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    accesses = int(facts.counts["accesses"])
    return {
        "accesses": accesses,
        "acting_identities": facts.counts["acting_identities"],
        "accesses_with_a_shared_credential": exceptions,
        "share_bound_to_own_identity": _share(accesses - exceptions, accesses),
    }, accesses


def _decisions(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    accesses = int(facts.counts["accesses"])
    return {
        "accesses": accesses,
        "decisions": facts.counts["decisions"],
        "accesses_naming_a_decision": facts.counts["accesses_naming_a_decision"],
        "accesses_without_a_prior_allow": exceptions,
        "share_with_a_prior_allow": _share(accesses - exceptions, accesses),
    }, accesses


def _ephemeral(facts: Facts, _exceptions: int) -> tuple[dict[str, Any], int]:
    figures = facts.credentials
    issued = int(figures["issued"])
    return {
        "issued": issued,
        "revoked": figures["revoked"],
        "share_revoked": _share(int(figures["revoked"]), issued),
        "of_completed_tasks": figures["of_completed_tasks"],
        "revoked_within_grace": figures["revoked_within_grace"],
        "share_revoked_within_grace": _share(
            int(figures["revoked_within_grace"]), int(figures["of_completed_tasks"])
        ),
        "median_lifetime_seconds": _seconds(figures["median_lifetime_seconds"], issued),
        "max_lifetime_seconds": _seconds(figures["max_lifetime_seconds"], issued),
        "long_lived": figures["long_lived"],
        "live_at_period_end": figures["live_at_end"],
    }, issued


def _seconds(value: Any, population: int) -> int | None:
    return int(float(value)) if population else None


def _approvals(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    approvals = int(facts.counts["approvals"])
    return {"approvals": approvals, "self_approvals": exceptions}, approvals


def _delegation(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    total = sum(int(row["delegations"]) for row in facts.delegations)
    with_decision = sum(int(row["with_decision"]) for row in facts.delegations)
    return {
        "delegations": total,
        "with_an_authorization_record": with_decision,
        "share_authorized": _share(with_decision, total),
        "escalations_and_identity_reuse": exceptions,
    }, total


def _break_glass(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    used = int(facts.counts["break_glass"])
    return {"break_glass": used, "unapproved_or_overdue": exceptions}, used


def _rotation(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    rotations = int(facts.counts["rotations"])
    return {
        "rotations": rotations,
        "long_lived_credentials": exceptions,
    }, rotations + exceptions


def _integrity(facts: Facts, exceptions: int) -> tuple[dict[str, Any], int]:
    broken = [row for row in facts.chains if not chain_whole(row)]
    return {
        "producer_instances": len(facts.chains),
        "events": sum(int(row["events"]) for row in facts.chains),
        # Informational: an instance's events are numbered in publishing order, so one
        # whose other events lie outside the period is counted too; the chain alerts (over
        # whole chains) decide, and `custody verify` re-hashes the links.
        "instances_not_contiguous_in_period": len(broken),
        "chain_alerts": exceptions,
    }, len(facts.chains)


def chain_whole(row: Row) -> bool:
    """Whether a producer instance's events in the period are numbered without a gap or
    a repeat (its links are re-hashed by ``custody verify``)."""
    span = int(row["last_seq"]) - int(row["first_seq"]) + 1
    return int(row["events"]) == int(row["distinct_seqs"]) == span


Measure = Callable[[Facts, int], tuple[dict[str, Any], int]]
MEASURES: dict[str, Measure] = {
    "workload_identity": _identity,
    "decision_before_access": _decisions,
    "ephemeral_credentials": _ephemeral,
    "human_approval_separation": _approvals,
    "delegation_accountability": _delegation,
    "break_glass_governed": _break_glass,
    "batch_token_rotation": _rotation,
    "evidence_integrity": _integrity,
}


def status(exceptions: int, population: int) -> str:
    """A control's status from its exceptions and how much it governed."""
    if exceptions:
        return "EXCEPTIONS"
    return "EFFECTIVE" if population else "NOT_EXERCISED"


def evaluate(control: str, facts: Facts, exceptions: Sequence[Row]) -> dict[str, Any]:
    """The control's measure, status and exceptions (alert rows of its types)."""
    measure, population = MEASURES[control](facts, len(exceptions))
    return {
        "id": control,
        "status": status(len(exceptions), population),
        "measure": measure,
        "alert_types": [kind.name for kind in EXCEPTIONS_OF[control]],
        "exceptions": list(exceptions),
    }
