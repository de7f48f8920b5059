"""The state of one custody tree, as the correlator keeps it between events.

Plain dataclasses (this is the hot path), times as integer microseconds since the epoch,
and a JSON form for the faust table's changelog. JSON rather than pickle: a changelog
topic is data, and unpickling data from a topic would let whoever can write to it run
code in the worker.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field, fields
from typing import Any

from processors.correlation.state_format import check_format, stamp


@dataclass(slots=True)
class TaskRec:
    task_id: str
    parent_task_id: str | None
    depth: int
    first_event_id: str
    first_us: int
    workload_id: str
    kind: str
    instance_id: str
    on_behalf_of: str | None
    declared_event_id: str | None = None
    declared_us: int | None = None
    purpose: str | None = None
    requested_scopes: list[str] = field(default_factory=list)
    completed_event_id: str | None = None
    completed_us: int | None = None
    outcome: str | None = None


@dataclass(slots=True)
class TokenRec:
    token_id: str
    task_id: str
    issued_event_id: str
    event_us: int
    subject: str
    credential_kind: str
    audience: str
    scopes: list[str]
    issued_us: int
    expires_us: int
    decision_id: str
    parent_token_id: str | None
    expired: bool = False


@dataclass(slots=True)
class RevocationRec:
    token_id: str
    event_id: str
    us: int
    reason: str
    revoked_by: str


@dataclass(slots=True)
class RenewalRec:
    token_id: str
    event_id: str
    us: int
    expires_us: int
    renewed_by: str
    # How many times the token's renewed expiry moved later: the credential's state
    # version counts it, so each renewal that moved it gives a newer version.
    moves: int = 1


@dataclass(slots=True)
class DecisionRec:
    decision_id: str
    event_id: str
    us: int
    task_id: str
    allow: bool
    resource: str
    action: str
    data_scope: list[str]


@dataclass(slots=True)
class AccessRec:
    event_id: str
    us: int
    task_id: str
    token_id: str
    workload_id: str
    instance_id: str
    tool: str
    resource: str
    action: str
    data_scope: list[str]
    decision_id: str | None
    outcome: str


@dataclass(slots=True)
class DelegationRec:
    event_id: str
    us: int
    task_id: str
    child_task_id: str
    delegator: str
    delegatee: str
    scopes: list[str]
    decision_id: str


@dataclass(slots=True)
class ApprovalRec:
    approval_id: str
    event_id: str
    us: int
    approver: str
    approves: str
    scopes: list[str]
    human: bool


@dataclass(slots=True)
class BreakGlassRec:
    break_glass_id: str
    event_id: str
    us: int
    task_id: str
    workload_id: str
    on_behalf_of: str | None
    approval_id: str | None
    expires_us: int


_RECORDS: dict[str, type] = {
    "tasks": TaskRec,
    "tokens": TokenRec,
    "revocations": RevocationRec,
    "renewals": RenewalRec,
    "decisions": DecisionRec,
    "delegations": DelegationRec,
    "approvals": ApprovalRec,
    "break_glass": BreakGlassRec,
}


@dataclass(slots=True)
class TreeState:
    """Everything known about one custody tree, keyed by the ids that join events."""

    tenant: str
    root_task_id: str
    last_event_us: int = 0
    tasks: dict[str, TaskRec] = field(default_factory=dict)
    tokens: dict[str, TokenRec] = field(default_factory=dict)
    # token_id -> the earliest revocation (by event time)
    revocations: dict[str, RevocationRec] = field(default_factory=dict)
    # token_id -> the renewal with the latest expires_at, also of a token not yet issued
    renewals: dict[str, RenewalRec] = field(default_factory=dict)
    decisions: dict[str, DecisionRec] = field(default_factory=dict)
    # token_id -> accesses with that token, kept for joins with late issuance/revocation
    accesses: dict[str, list[AccessRec]] = field(default_factory=dict)
    # child_task_id -> the delegation that created it
    delegations: dict[str, DelegationRec] = field(default_factory=dict)
    approvals: dict[str, ApprovalRec] = field(default_factory=dict)
    break_glass: dict[str, BreakGlassRec] = field(default_factory=dict)
    # the accesses kept, and the alerts about what is kept (processors/correlation/retention.py)
    seen_event_ids: set[str] = field(default_factory=set)
    fired_alert_ids: set[str] = field(default_factory=set)
    # heap of (due time in us, check kind, subject key)
    deadlines: list[tuple[int, str, str]] = field(default_factory=list)
    # the latest deadline ever scheduled: retention counts from it too
    horizon_us: int = 0

    def schedule(self, due_us: int, kind: str, key: str) -> None:
        heapq.heappush(self.deadlines, (due_us, kind, key))
        if due_us > self.horizon_us:
            self.horizon_us = due_us

    @property
    def next_deadline_us(self) -> int | None:
        return self.deadlines[0][0] if self.deadlines else None

    def to_json(self) -> bytes:
        """The changelog form of this state."""
        data: dict[str, Any] = {
            "tenant": self.tenant,
            "root_task_id": self.root_task_id,
            "last_event_us": self.last_event_us,
            "seen_event_ids": sorted(self.seen_event_ids),
            "fired_alert_ids": sorted(self.fired_alert_ids),
            "deadlines": self.deadlines,
            "horizon_us": self.horizon_us,
            "accesses": {k: [_row(a) for a in v] for k, v in self.accesses.items()},
        }
        for name in _RECORDS:
            data[name] = {k: _row(v) for k, v in getattr(self, name).items()}
        return json.dumps(stamp(data), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TreeState:
        """A state from its changelog form; raises :class:`StateFormatError` for a form
        saved by a newer format."""
        data = json.loads(raw)
        check_format(data, "tree state")
        state = cls(data["tenant"], data["root_task_id"], data["last_event_us"])
        state.seen_event_ids = set(data["seen_event_ids"])
        state.fired_alert_ids = set(data["fired_alert_ids"])
        state.deadlines = [(int(d[0]), str(d[1]), str(d[2])) for d in data["deadlines"]]
        heapq.heapify(state.deadlines)
        # Saved before the horizon was kept: the pending deadlines are the latest known.
        pending = max((d[0] for d in state.deadlines), default=0)
        state.horizon_us = int(data.get("horizon_us", pending))
        state.accesses = {k: [AccessRec(*a) for a in v] for k, v in data["accesses"].items()}
        for name, record in _RECORDS.items():
            # Format 1 saved no renewals (the contract had none before schema v2).
            saved = data.get(name, {}) if name == "renewals" else data[name]
            setattr(state, name, {k: record(*v) for k, v in saved.items()})
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TreeState):
            return NotImplemented
        return all(
            _comparable(getattr(self, f.name)) == _comparable(getattr(other, f.name))
            for f in fields(self)
        )


def _row(record: Any) -> list[Any]:
    """A record's fields in declaration order: the stored form is positional, as
    ``asdict`` walks every value recursively and costs several times more per write."""
    return [getattr(record, name) for name in record.__slots__]


def _comparable(value: Any) -> Any:
    """Order-free form of a state field (accesses and deadlines arrive in any order)."""
    if isinstance(value, list):
        return sorted(map(repr, value))
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value
