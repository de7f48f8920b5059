"""Pydantic models mirroring the Avro schemas (``schemas/avro/``), used at the edges.

An event is one class per ``event_type`` (``AccessEvent``, ``DelegationEvent``, ...), all
sharing :class:`Envelope`; :data:`CustodyEvent` is their union, discriminated by
``event_type``. The JSON form (``custody publish``, fixtures, ``--json`` output) is
``model_dump(mode="json")``: ``body`` is an object, timestamps are ISO-8601 UTC strings.

Timestamps must carry a timezone (a naive time is ambiguous evidence) and are held in UTC
with microsecond precision, as ``timestamp-micros`` carries them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum, auto
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must include a timezone (ISO-8601 with Z or an offset)")
    return value.astimezone(UTC)


UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _uuid(value: str) -> str:
    # A regex, not uuid.UUID(): this runs once per published event.
    if not UUID_PATTERN.fullmatch(value):
        raise ValueError("must be a UUID")
    return value


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _sha256_hex(value: str | None) -> str | None:
    if value is not None and not _SHA256_HEX.fullmatch(value):
        raise ValueError("must be a lowercase hex SHA-256 (64 characters)")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Id = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(max_length=8192)]
Scopes = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=512)]], Field(max_length=4096)
]
StringMap = Annotated[dict[str, Text], Field(max_length=256)]


class _Model(BaseModel):
    # Validation errors never echo input: a rejected value may be a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _Named(StrEnum):
    """An enumeration whose values are its members' names, as the Avro enums spell them."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[Any]) -> str:
        return name


class EventType(_Named):
    TASK_DECLARED = auto()
    AUTHZ_DECISION = auto()
    CREDENTIAL_ISSUED = auto()
    ACCESS = auto()
    DELEGATION = auto()
    APPROVAL = auto()
    BREAK_GLASS = auto()
    CREDENTIAL_REVOKED = auto()
    TASK_COMPLETED = auto()
    # Since schema v2; appended, as Avro enum symbols are, so older symbols keep their index.
    CREDENTIAL_RENEWED = auto()


class ActorKind(_Named):
    AGENT = auto()
    HUMAN = auto()
    SERVICE = auto()
    BROKER = auto()
    POLICY_ENGINE = auto()


class Decision(_Named):
    ALLOW = auto()
    DENY = auto()


class CredentialKind(_Named):
    JWT = auto()
    API_KEY = auto()
    DB_CREDENTIAL = auto()
    CLOUD_SESSION = auto()
    OTHER = auto()


class AccessOutcome(_Named):
    SUCCESS = auto()
    FAILURE = auto()
    DENIED = auto()


class RevocationReason(_Named):
    TASK_ENDED = auto()
    EXPIRED = auto()
    MANUAL = auto()
    COMPROMISED = auto()
    ROTATED = auto()


class TaskOutcome(_Named):
    SUCCEEDED = auto()
    FAILED = auto()
    CANCELLED = auto()


class Actor(_Model):
    """Who emitted the event: a workload identity and the process it ran in."""

    workload_id: Id
    kind: ActorKind
    instance_id: Id
    on_behalf_of: Id | None = None


# ---- bodies ---------------------------------------------------------------------------


class TaskDeclared(_Model):
    purpose: Text
    requested_scopes: Scopes
    deadline: UtcDatetime | None = None


class AuthzDecision(_Model):
    decision_id: Id
    policy_engine: Id
    policy_id: Id
    policy_version: Id
    decision: Decision
    resource: Id
    action: Id
    data_scope: Scopes
    reasons: list[Text]
    context: StringMap


class CredentialIssued(_Model):
    token_id: Id
    token_subject: Id
    credential_kind: CredentialKind
    audience: Id
    scopes: Scopes
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    decision_id: Id
    parent_token_id: Id | None = None

    @model_validator(mode="after")
    def _expires_after_issue(self) -> CredentialIssued:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class Access(_Model):
    token_id: Id
    tool: Id
    resource: Id
    action: Id
    data_scope: Scopes
    decision_id: Id | None = None
    outcome: AccessOutcome
    detail: Text | None = None


class Delegation(_Model):
    delegator: Id
    delegatee: Id
    child_task_id: Id
    scopes: Scopes
    decision_id: Id


class Approval(_Model):
    approval_id: Id
    approver: Id
    approves: Id
    scopes: Scopes
    expires_at: UtcDatetime | None = None
    reason: Text


class BreakGlass(_Model):
    break_glass_id: Id
    reason: Text
    standing_access_unavailable: Text
    approval_id: Id | None = None
    expires_at: UtcDatetime


class CredentialRevoked(_Model):
    token_id: Id
    reason: RevocationReason
    revoked_by: Id


class TaskCompleted(_Model):
    outcome: TaskOutcome
    detail: Text | None = None


class CredentialRenewed(_Model):
    token_id: Id
    expires_at: UtcDatetime
    renewed_by: Id


# ---- envelope --------------------------------------------------------------------------


class Envelope(_Model):
    """Fields every event carries.

    ``producer_instance``, ``seq`` and ``prev_hash`` form the hash chain. They are ``None``
    only on an event not yet stamped by a publisher (the SDK and ``custody publish`` stamp
    them with their own instance's chain); the encoder refuses an unstamped event, so none
    ever reaches the wire. An event that arrives stamped (a replay, another publisher's
    record) names ``producer_instance`` and ``seq`` together and passes through as is.
    """

    event_id: Annotated[str, AfterValidator(_uuid)]
    event_type: EventType
    event_time: UtcDatetime
    tenant: Id
    producer: Id
    root_task_id: Id
    task_id: Id
    parent_task_id: Id | None = None
    depth: Annotated[int, Field(ge=0, le=2**31 - 1)]
    actor: Actor
    producer_instance: Id | None = None
    seq: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    prev_hash: Annotated[str | None, AfterValidator(_sha256_hex)] = None
    attributes: StringMap = Field(default_factory=dict)

    @model_validator(mode="after")
    def _tree_position(self) -> Envelope:
        if self.depth == 0:
            if self.parent_task_id is not None:
                raise ValueError("parent_task_id must be null at depth 0 (the root)")
            if self.task_id != self.root_task_id:
                raise ValueError("at depth 0 task_id must equal root_task_id")
        elif self.parent_task_id is None:
            raise ValueError("parent_task_id is required when depth > 0")
        if self.prev_hash is not None and self.seq is None:
            raise ValueError("prev_hash given without seq")
        if (self.seq is None) != (self.producer_instance is None):
            # A publisher can continue only its own chain: it cannot know where another
            # instance's numbering stands, so an event names both or neither.
            raise ValueError("producer_instance and seq are given together or not at all")
        return self

    @property
    def is_stamped(self) -> bool:
        """True once the hash-chain fields are set and the event may be encoded."""
        return self.producer_instance is not None and self.seq is not None


OBSERVE_ONLY_ATTRIBUTE = "custody.observe_only"
"""An access whose ``attributes`` set this to ``"true"`` comes from an observe-only source
(an agent runtime's spans, which carry no credentials or decisions): it is recorded and
judged by every rule but UNAUTHORIZED_ACCESS."""


class TaskDeclaredEvent(Envelope):
    """A task declared its purpose and the scopes it asks for."""

    event_type: Literal[EventType.TASK_DECLARED]
    body: TaskDeclared


class AuthzDecisionEvent(Envelope):
    """A policy engine allowed or denied an action."""

    event_type: Literal[EventType.AUTHZ_DECISION]
    body: AuthzDecision


class CredentialIssuedEvent(Envelope):
    """A broker issued a short-lived credential."""

    event_type: Literal[EventType.CREDENTIAL_ISSUED]
    body: CredentialIssued


class AccessEvent(Envelope):
    """A workload used a credential through a tool."""

    event_type: Literal[EventType.ACCESS]
    body: Access


class DelegationEvent(Envelope):
    """A task handed work to a child task."""

    event_type: Literal[EventType.DELEGATION]
    body: Delegation


class ApprovalEvent(Envelope):
    """A human approved a task or a break-glass."""

    event_type: Literal[EventType.APPROVAL]
    body: Approval


class BreakGlassEvent(Envelope):
    """Emergency access outside standing policy."""

    event_type: Literal[EventType.BREAK_GLASS]
    body: BreakGlass


class CredentialRevokedEvent(Envelope):
    """A credential was revoked."""

    event_type: Literal[EventType.CREDENTIAL_REVOKED]
    body: CredentialRevoked


class TaskCompletedEvent(Envelope):
    """A task ended with an outcome."""

    event_type: Literal[EventType.TASK_COMPLETED]
    body: TaskCompleted


class CredentialRenewedEvent(Envelope):
    """A broker renewed a credential: its expiry moved to ``body.expires_at``."""

    event_type: Literal[EventType.CREDENTIAL_RENEWED]
    body: CredentialRenewed


CustodyEvent = Annotated[
    TaskDeclaredEvent
    | AuthzDecisionEvent
    | CredentialIssuedEvent
    | AccessEvent
    | DelegationEvent
    | ApprovalEvent
    | BreakGlassEvent
    | CredentialRevokedEvent
    | TaskCompletedEvent
    | CredentialRenewedEvent,
    Field(discriminator="event_type"),
]
"""Any event; validate with :data:`EVENT_ADAPTER`."""

EVENT_ADAPTER: TypeAdapter[CustodyEvent] = TypeAdapter(CustodyEvent)


def _annotation(model: type[Envelope], field: str) -> Any:
    return model.model_fields[field].annotation


EVENT_MODELS: dict[EventType, type[Envelope]] = {
    get_args(_annotation(model, "event_type"))[0]: model
    for model in get_args(get_args(CustodyEvent)[0])
}
"""The model of each event type, in the contract's order."""

BODY_MODELS: dict[EventType, type[_Model]] = {
    event_type: _annotation(model, "body") for event_type, model in EVENT_MODELS.items()
}
"""The body model of each event type."""


def validate_event(data: Any) -> CustodyEvent:
    """Validate a JSON-form or Python-form event (dict) into its model."""
    event_type = data.get("event_type") if isinstance(data, dict) else None
    # StrEnum members hash like their values, so the JSON form's strings find their model.
    model = EVENT_MODELS.get(event_type) if isinstance(event_type, str) else None  # type: ignore[call-overload]
    if model is None:
        # The union reports a missing or unknown event_type as such.
        return EVENT_ADAPTER.validate_python(data)
    # Dispatching by hand is ~40% faster than pydantic's tagged union on this hot path;
    # the validator is what model_validate calls, without its per-call argument handling.
    return cast(CustodyEvent, model.__pydantic_validator__.validate_python(data))


# ---- alerts and state changes ---------------------------------------------------------


class AlertType(_Named):
    UNREVOKED_TOKEN = auto()
    ORPHANED_TOKEN = auto()
    TOKEN_USED_AFTER_REVOCATION = auto()
    TOKEN_USED_AFTER_EXPIRY = auto()
    SHARED_CREDENTIAL = auto()
    SCOPE_ESCALATION = auto()
    DELEGATION_IDENTITY_REUSE = auto()
    UNAUTHORIZED_ACCESS = auto()
    BREAK_GLASS_UNAPPROVED = auto()
    BREAK_GLASS_OVERDUE = auto()
    LONG_LIVED_CREDENTIAL = auto()
    BROKEN_CHAIN = auto()
    SELF_APPROVAL = auto()
    EVIDENCE_GAP = auto()


class Severity(_Named):
    LOW = auto()
    MEDIUM = auto()
    HIGH = auto()
    CRITICAL = auto()


class Alert(_Model):
    """An alert record, as on ``custody.alerts.v1``."""

    alert_id: Id
    alert_type: AlertType
    severity: Severity
    tenant: Id
    root_task_id: Id
    task_id: Id | None = None
    token_id: Id | None = None
    workload_id: Id | None = None
    event_time: UtcDatetime
    detected_at: UtcDatetime
    evidence_event_ids: list[Id]
    detail: Text


class StateKind(_Named):
    TASK = auto()
    DELEGATION = auto()
    CREDENTIAL = auto()


class TaskStatus(_Named):
    PENDING = auto()
    DECLARED = auto()
    COMPLETED = auto()


class CredentialLifecycle(_Named):
    ACTIVE = auto()
    REVOKED = auto()
    EXPIRED = auto()


class TaskState(_Model):
    task_id: Id
    parent_task_id: Id | None = None
    depth: int
    actor: Actor
    purpose: Text | None = None
    requested_scopes: Scopes
    status: TaskStatus
    outcome: TaskOutcome | None = None
    declared_at: UtcDatetime | None = None
    completed_at: UtcDatetime | None = None


class DelegationState(_Model):
    delegator: Id
    delegatee: Id
    parent_task_id: Id
    child_task_id: Id
    scopes: Scopes
    decision_id: Id
    delegated_at: UtcDatetime


class CredentialState(_Model):
    token_id: Id
    task_id: Id
    token_subject: Id
    credential_kind: CredentialKind
    audience: Id
    scopes: Scopes
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    decision_id: Id
    parent_token_id: Id | None = None
    state: CredentialLifecycle
    revoked_at: UtcDatetime | None = None
    revocation_reason: RevocationReason | None = None
    revoked_by: Id | None = None


class StateChange(_Model):
    """A state change of the custody graph, as on ``custody.state.v1`` (latest version wins)."""

    kind: StateKind
    tenant: Id
    root_task_id: Id
    key: Id
    version: Annotated[int, Field(ge=0)]
    updated_at: UtcDatetime
    source_event_ids: list[Id]
    task: TaskState | None = None
    delegation: DelegationState | None = None
    credential: CredentialState | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> StateChange:
        present = {
            StateKind.TASK: self.task is not None,
            StateKind.DELEGATION: self.delegation is not None,
            StateKind.CREDENTIAL: self.credential is not None,
        }
        if not present[StateKind(self.kind)] or sum(present.values()) != 1:
            raise ValueError(f"exactly the {str(self.kind).lower()} payload must be set")
        return self


def field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field path, reason)`` for each problem, e.g. ``("body.token_id", "Field required")``.

    Built from the messages only, never the input values: an invalid field may hold a
    secret, and these reasons go to stderr, logs and the dead-letter topic.
    """
    tags = {str(t) for t in EventType}
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        if loc and loc[0] in tags:
            loc = loc[1:]
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "union_tag_not_found":
            loc, reason = ["event_type"], "Field required"
        elif error["type"] == "union_tag_invalid":
            loc, reason = ["event_type"], f"must be one of {', '.join(sorted(tags))}"
        problems.append((".".join(loc) or "(event)", reason))
    return problems


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every invalid field and why, without any input value."""
    return "; ".join(f"{field}: {reason}" for field, reason in field_errors(exc))
