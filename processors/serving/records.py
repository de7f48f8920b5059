"""What serving reads from ClickHouse, as named, typed records.

Rows leave ClickHouse as dicts of JSON-ready values (:data:`processors.storage.backend.Row`).
The read functions (``trace``, the explorer's search and token view, ``alerts``) turn each
into a record here, by :func:`read`, right where the query returns; the custody graph, the
PROV export and the terminal view read fields, not keys. :meth:`Record.as_json` gives a
record back as the JSON the CLI and the query API answer: the query's columns as keys, in
its order, and the values as ClickHouse returned them (timestamps as ISO-8601 UTC strings
ending in ``Z``, arrays as lists).

A record is built from a row by column name with no validation of the values: the tables'
types are the check, and ``custody trace`` pays a couple of microseconds a row for it. A
query that lacks a field's column fails at once with the name of that column.

These are stored rows, not the contract's events: ``Access`` here is an ``ACCESS`` event as
the ``events`` table holds it, beside :class:`schemas.models.Access`, the event's body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from processors.serving.reader import Reader
from processors.storage.backend import Row


class Record:
    """A record of serving: one field per JSON key (per column, for a row read from ClickHouse)."""

    __slots__ = ()
    # Set by @dataclass on every record: its fields' names, in order.
    __match_args__: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The record's fields, in the order of its JSON keys."""
        return cls.__match_args__

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The record of a row holding (at least) a column for each field."""
        return cls(*map(row.__getitem__, cls.columns()))

    def as_json(self) -> dict[str, Any]:
        """The record as the CLI and the query API answer it."""
        return {name: getattr(self, name) for name in self.columns()}


R = TypeVar("R", bound=Record)


def read(reader: Reader, record: type[R], sql: str, params: Mapping[str, object]) -> list[R]:
    """The rows of a read-only query, each as a ``record``."""
    return [record.from_row(row) for row in reader.select(sql, params)]


@dataclass(frozen=True, slots=True)
class TreeKey(Record):
    """Which custody tree a task belongs to (``task_roots``)."""

    tenant: str
    root_task_id: str


@dataclass(frozen=True, slots=True)
class Actor(Record):
    """Who ran a task: the workload identity, and the human it acted for, if any."""

    workload_id: str
    kind: str
    instance_id: str
    on_behalf_of: str | None


@dataclass(frozen=True, slots=True)
class Task(Record):
    """A task's latest state (``tasks``); its actor's columns nest as ``actor``."""

    task_id: str
    parent_task_id: str | None
    depth: int
    actor: Actor
    purpose: str | None
    requested_scopes: list[str]
    status: str
    outcome: str | None
    declared_at: str | None
    completed_at: str | None

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The task of a ``tasks`` row, its actor from ``workload_id``, ``actor_kind``,
        ``instance_id`` and ``on_behalf_of``."""
        return cls(
            task_id=row["task_id"],
            parent_task_id=row["parent_task_id"],
            depth=row["depth"],
            actor=Actor(
                workload_id=row["workload_id"],
                kind=row["actor_kind"],
                instance_id=row["instance_id"],
                on_behalf_of=row["on_behalf_of"],
            ),
            purpose=row["purpose"],
            requested_scopes=row["requested_scopes"],
            status=row["status"],
            outcome=row["outcome"],
            declared_at=row["declared_at"],
            completed_at=row["completed_at"],
        )

    def as_json(self) -> dict[str, Any]:
        """The task, its actor as a nested object."""
        return {**Record.as_json(self), "actor": self.actor.as_json()}


@dataclass(frozen=True, slots=True)
class Delegation(Record):
    """A delegation from a parent task to its child (``delegations``)."""

    delegator: str
    delegatee: str
    parent_task_id: str
    child_task_id: str
    scopes: list[str]
    decision_id: str
    delegated_at: str


@dataclass(frozen=True, slots=True)
class Credential(Record):
    """A credential's latest state (``credentials``); ``state`` as trace reports it."""

    token_id: str
    task_id: str
    token_subject: str
    credential_kind: str
    audience: str
    scopes: list[str]
    issued_at: str
    expires_at: str
    decision_id: str
    parent_token_id: str | None
    state: str
    revoked_at: str | None
    revocation_reason: str | None
    revoked_by: str | None


@dataclass(frozen=True, slots=True)
class StoredCredential(Record):
    """A credential with the tree that holds it (the explorer's token view)."""

    tenant: str
    root_task_id: str
    credential: Credential

    @classmethod
    def from_row(cls, row: Row) -> Self:
        """The credential of a ``credentials`` row that also names its tree."""
        return cls(row["tenant"], row["root_task_id"], Credential.from_row(row))

    def as_json(self) -> dict[str, Any]:
        """The credential's columns after its tenant and root task."""
        return {
            "tenant": self.tenant,
            "root_task_id": self.root_task_id,
            **self.credential.as_json(),
        }


@dataclass(frozen=True, slots=True)
class Event(Record):
    """An event of one type as the ``events`` table holds it: what every type has first."""

    event_type: ClassVar[str]
    event_id: str
    event_time: str
    task_id: str


E = TypeVar("E", bound=Event)


def events_of(rows: Sequence[Row], record: type[E]) -> list[E]:
    """The rows of ``record``'s event type among ``rows``, in their order."""
    return [record.from_row(row) for row in rows if row["event_type"] == record.event_type]


@dataclass(frozen=True, slots=True)
class Decision(Event):
    """An ``AUTHZ_DECISION`` event."""

    event_type: ClassVar[str] = "AUTHZ_DECISION"
    decision_id: str
    policy_engine: str
    policy_id: str
    policy_version: str
    decision: str
    resource: str
    action: str
    data_scope: list[str]
    reasons: list[str]


@dataclass(frozen=True, slots=True)
class Access(Event):
    """An ``ACCESS`` event: a tool used, with a token (or, read from elsewhere, without)."""

    event_type: ClassVar[str] = "ACCESS"
    workload_id: str
    instance_id: str
    token_id: str | None
    tool: str
    resource: str
    action: str
    data_scope: list[str]
    decision_id: str | None
    outcome: str
    detail: str | None


@dataclass(frozen=True, slots=True)
class Approval(Event):
    """An ``APPROVAL`` event: a human approving a task or a break-glass."""

    event_type: ClassVar[str] = "APPROVAL"
    approval_id: str
    approver: str
    approves: str
    scopes: list[str]
    expires_at: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class BreakGlass(Event):
    """A ``BREAK_GLASS`` event."""

    event_type: ClassVar[str] = "BREAK_GLASS"
    workload_id: str
    break_glass_id: str
    reason: str
    standing_access_unavailable: str
    approval_id: str | None
    expires_at: str


@dataclass(frozen=True, slots=True)
class TokenEvent(Record):
    """An event that names a token as its own or as the parent of a rotation."""

    event_id: str
    event_type: str
    event_time: str
    tool: str | None
    resource: str | None
    action: str | None
    outcome: str | None
    reason: str | None
    revoked_by: str | None
    renewed_by: str | None
    expires_at: str | None
    token_id: str | None
    parent_token_id: str | None


@dataclass(frozen=True, slots=True)
class Alert(Record):
    """A stored alert (``alerts``)."""

    alert_id: str
    alert_type: str
    severity: str
    tenant: str
    root_task_id: str
    task_id: str | None
    token_id: str | None
    workload_id: str | None
    event_time: str
    detected_at: str
    evidence_event_ids: list[str]
    detail: str


# The columns of an alert, for every query that reads alerts.
ALERT_COLUMNS = ", ".join(Alert.columns())


@dataclass(frozen=True, slots=True)
class TaskMatch(Record):
    """A task id found by search (``task_roots``)."""

    task_id: str
    tenant: str
    root_task_id: str


@dataclass(frozen=True, slots=True)
class TokenMatch(Record):
    """A token id found by search (``credentials``)."""

    token_id: str
    task_id: str
    tenant: str
    root_task_id: str
    credential_kind: str
    state: str


@dataclass(frozen=True, slots=True)
class WorkloadMatch(Record):
    """A workload found by search: its newest task in one tree (``tasks``)."""

    workload_id: str
    task_id: str
    tenant: str
    root_task_id: str
    last_declared: str


@dataclass(frozen=True, slots=True)
class CustodyTree:
    """One custody tree as ``custody trace`` reads it; a part it lacks is empty."""

    root_task_id: str
    tenant: str
    tasks: Sequence[Task] = ()
    delegations: Sequence[Delegation] = ()
    credentials: Sequence[Credential] = ()
    decisions: Sequence[Decision] = ()
    accesses: Sequence[Access] = ()
    approvals: Sequence[Approval] = ()
    break_glass: Sequence[BreakGlass] = ()
    alerts: Sequence[Alert] = ()

    def as_json(self) -> dict[str, Any]:
        """The documented JSON object of ``custody trace --json``."""
        return {
            "root_task_id": self.root_task_id,
            "tenant": self.tenant,
            "tasks": [task.as_json() for task in self.tasks],
            "delegations": [delegation.as_json() for delegation in self.delegations],
            "credentials": [credential.as_json() for credential in self.credentials],
            "decisions": [decision.as_json() for decision in self.decisions],
            "accesses": [access.as_json() for access in self.accesses],
            "approvals": [approval.as_json() for approval in self.approvals],
            "break_glass": [glass.as_json() for glass in self.break_glass],
            "alerts": [alert.as_json() for alert in self.alerts],
        }
