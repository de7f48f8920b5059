"""The controls the auditor's report measures: their fixed ids and their titles.

The ids are stable: the report's JSON form, the framework mapping
(``frameworks.yaml``) and :mod:`processors.reporting.controls` all name controls by them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Control:
    """One control: its id and what it asks, as the report titles it."""

    id: str
    title: str


CONTROLS: tuple[Control, ...] = (
    Control(
        "workload_identity",
        "Every action is bound to a workload identity rather than a shared account",
    ),
    Control("decision_before_access", "A machine-readable policy decision precedes every access"),
    Control(
        "ephemeral_credentials",
        "Credentials are issued per task and revoked when the task ends (no long-lived"
        " credentials)",
    ),
    Control(
        "human_approval_separation",
        "Human approval is separate from agent execution (no self-approval)",
    ),
    Control(
        "delegation_accountability",
        "Every delegation step has its own identity event and authorization record (no scope"
        " escalation, no identity reuse)",
    ),
    Control(
        "break_glass_governed",
        "Break-glass has an approver, a reason and an expiry (none unapproved or overdue)",
    ),
    Control("batch_token_rotation", "Batch jobs rotate their tokens"),
    Control(
        "evidence_integrity",
        "Evidence is complete and untampered (hash chains unbroken, no gaps)",
    ),
)

CONTROL_IDS: tuple[str, ...] = tuple(control.id for control in CONTROLS)
