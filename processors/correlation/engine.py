"""The correlator: a pure, deterministic state machine over one custody tree.

``observe(state, event)`` folds one event into the tree's state; ``expire(state,
watermark)`` runs the checks whose deadline the watermark has passed. Both return the
alerts and state changes they produce. Nothing here reads a clock or touches Kafka: the
faust worker passes the watermark and the detection time in.

Judged by event time, whatever the arrival order. A check that needs a piece that may
still come (a revocation, a declaration, a decision, a named task) is scheduled at
*event time + grace* and decided when the watermark passes that deadline, so any order of
the same events within the allowed lateness gives the same alerts. Checks between two
facts (an access after a revocation) fire as soon as both are known. Everything that
depends on which event came first takes the earliest by event time (ties by event id).
A duplicated event (same ``event_id``) changes nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Unpack

from processors.correlation import renewals
from processors.correlation.alerts import AlertAbout, from_micros, make_alert
from processors.correlation.retention import forget_settled
from processors.correlation.tree import (
    AccessRec,
    ApprovalRec,
    BreakGlassRec,
    DecisionRec,
    DelegationRec,
    RenewalRec,
    RevocationRec,
    TaskRec,
    TokenRec,
    TreeState,
)
from schemas.models import (
    OBSERVE_ONLY_ATTRIBUTE,
    AccessEvent,
    Actor,
    AlertType,
    ApprovalEvent,
    AuthzDecisionEvent,
    BreakGlassEvent,
    CredentialIssuedEvent,
    CredentialLifecycle,
    CredentialRenewedEvent,
    CredentialRevokedEvent,
    CredentialState,
    DelegationEvent,
    DelegationState,
    Envelope,
    StateChange,
    StateKind,
    TaskCompletedEvent,
    TaskDeclaredEvent,
    TaskState,
    TaskStatus,
)
from schemas.models import Alert as AlertRecord

_US = 1_000_000

# Deadline kinds
UNREVOKED = "unrevoked"
ORPHANED = "orphaned"
UNAUTHORIZED = "unauthorized"
ESCALATION = "escalation"
BROKEN_CHAIN = "broken_chain"
BG_UNAPPROVED = "bg_unapproved"
BG_OVERDUE = "bg_overdue"
EXPIRY = "expiry"
EXPIRED_USE = "expired_use"
_SEP = renewals.SEP


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    """The time rules, in microseconds (see :class:`producers.settings.Settings`)."""

    grace_us: int
    max_credential_ttl_us: int

    @classmethod
    def of(cls, grace_seconds: float, max_credential_ttl_seconds: float) -> CorrelationConfig:
        return cls(int(grace_seconds * _US), int(max_credential_ttl_seconds * _US))


@dataclass(slots=True)
class Output:
    """What one step produced."""

    alerts: list[AlertRecord] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)


def to_micros(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


_EPOCH = from_micros(0)


class _Step:
    """One call's working set: the state, the config, the output and detection time."""

    def __init__(self, state: TreeState, config: CorrelationConfig, detected_at: datetime) -> None:
        self.state = state
        self.config = config
        self.detected_at = detected_at
        self.out = Output()

    # ---- emitting -------------------------------------------------------------------

    def alert(
        self,
        alert_type: AlertType,
        subject: str,
        event_time_us: int,
        evidence: list[str],
        detail: str,
        **about: Unpack[AlertAbout],
    ) -> None:
        record = make_alert(
            alert_type,
            tenant=self.state.tenant,
            root_task_id=self.state.root_task_id,
            subject=subject,
            event_time_us=event_time_us,
            detected_at=self.detected_at,
            evidence=evidence,
            detail=detail,
            **about,
        )
        if record.alert_id not in self.state.fired_alert_ids:
            self.state.fired_alert_ids.add(record.alert_id)
            self.out.alerts.append(record)

    def _change(
        self,
        kind: StateKind,
        key: str,
        version: int,
        updated_us: int,
        sources: list[str],
        **payload: Any,
    ) -> None:
        self.out.changes.append(
            StateChange(
                kind=kind,
                tenant=self.state.tenant,
                root_task_id=self.state.root_task_id,
                key=key,
                version=version,
                updated_at=from_micros(updated_us),
                source_event_ids=sorted(set(sources)),
                **payload,
            )
        )

    def task_changed(self, task: TaskRec) -> None:
        status = (
            TaskStatus.COMPLETED
            if task.completed_us is not None
            else TaskStatus.DECLARED
            if task.declared_us is not None
            else TaskStatus.PENDING
        )
        sources = [
            e for e in (task.first_event_id, task.declared_event_id, task.completed_event_id) if e
        ]
        self._change(
            StateKind.TASK,
            task.task_id,
            1 + (task.declared_us is not None) + (task.completed_us is not None),
            max(u for u in (task.first_us, task.declared_us, task.completed_us) if u is not None),
            sources,
            task=TaskState(
                task_id=task.task_id,
                parent_task_id=task.parent_task_id,
                depth=task.depth,
                actor=Actor(
                    workload_id=task.workload_id,
                    kind=task.kind,
                    instance_id=task.instance_id,
                    on_behalf_of=task.on_behalf_of,
                ),
                purpose=task.purpose,
                requested_scopes=task.requested_scopes,
                status=status,
                outcome=task.outcome,
                declared_at=_opt_time(task.declared_us),
                completed_at=_opt_time(task.completed_us),
            ),
        )

    def token_changed(self, token: TokenRec) -> None:
        revocation = self.state.revocations.get(token.token_id)
        revoked = revocation is not None and revocation.us < token.expires_us
        lifecycle = (
            CredentialLifecycle.REVOKED
            if revoked
            else CredentialLifecycle.EXPIRED
            if token.expired
            else CredentialLifecycle.ACTIVE
        )
        renewal = renewals.source(self.state, token)
        sources = [token.issued_event_id] + ([revocation.event_id] if revocation else [])
        sources += [renewal.event_id] if renewal else []
        updated = max(token.event_us, revocation.us if revocation else 0)
        updated = max(updated, renewal.us if renewal else 0)
        if token.expired:
            updated = max(updated, token.expires_us)
        # Each renewal that moves the expiry counts twice: it may also undo an expiry.
        moves = renewals.moves(self.state, token.token_id)
        self._change(
            StateKind.CREDENTIAL,
            token.token_id,
            1 + (revocation is not None) + token.expired + 2 * moves,
            updated,
            sources,
            credential=CredentialState(
                token_id=token.token_id,
                task_id=token.task_id,
                token_subject=token.subject,
                credential_kind=token.credential_kind,
                audience=token.audience,
                scopes=token.scopes,
                issued_at=from_micros(token.issued_us),
                expires_at=from_micros(token.expires_us),
                decision_id=token.decision_id,
                parent_token_id=token.parent_token_id,
                state=lifecycle,
                revoked_at=_opt_time(revocation.us if revocation else None),
                revocation_reason=revocation.reason if revocation else None,
                revoked_by=revocation.revoked_by if revocation else None,
            ),
        )

    def delegation_changed(self, delegation: DelegationRec) -> None:
        self._change(
            StateKind.DELEGATION,
            delegation.child_task_id,
            1,
            delegation.us,
            [delegation.event_id],
            delegation=DelegationState(
                delegator=delegation.delegator,
                delegatee=delegation.delegatee,
                parent_task_id=delegation.task_id,
                child_task_id=delegation.child_task_id,
                scopes=delegation.scopes,
                decision_id=delegation.decision_id,
                delegated_at=from_micros(delegation.us),
            ),
        )


def _opt_time(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)


def _earlier(new_us: int, new_id: str, old_us: int, old_id: str) -> bool:
    return (new_us, new_id) < (old_us, old_id)


# ---- observing events -------------------------------------------------------------------


def observe(
    state: TreeState | None,
    event: Envelope,
    config: CorrelationConfig,
    detected_at: datetime,
) -> tuple[TreeState, Output]:
    """Fold ``event`` into its tree's state (a new state when ``state`` is None)."""
    if state is None:
        state = TreeState(event.tenant, event.root_task_id)
    step = _Step(state, config, detected_at)
    if event.event_id in state.seen_event_ids:
        return state, step.out
    if isinstance(event, AccessEvent):
        # The one kind of event not idempotent by construction (see retention.py).
        state.seen_event_ids.add(event.event_id)
    us = to_micros(event.event_time)
    state.last_event_us = max(state.last_event_us, us)
    _task_seen(step, event, us)
    handler = _HANDLERS[type(event)]
    handler(step, event, us)
    return state, step.out


def _task_seen(step: _Step, event: Envelope, us: int) -> None:
    """Record that ``event.task_id`` appeared, and schedule the check of its parent."""
    state = step.state
    task = state.tasks.get(event.task_id)
    declaring = isinstance(event, TaskDeclaredEvent)
    if task is None:
        task = TaskRec(
            task_id=event.task_id,
            parent_task_id=event.parent_task_id,
            depth=event.depth,
            first_event_id=event.event_id,
            first_us=us,
            workload_id=event.actor.workload_id,
            kind=str(event.actor.kind),
            instance_id=event.actor.instance_id,
            on_behalf_of=event.actor.on_behalf_of,
        )
        state.tasks[event.task_id] = task
        if not declaring:
            step.task_changed(task)
    elif _earlier(us, event.event_id, task.first_us, task.first_event_id):
        task.first_us, task.first_event_id = us, event.event_id
        if task.declared_event_id is None:
            # Until the declaration arrives, the earliest event speaks for the task.
            _set_actor(task, event.actor)
    else:
        return
    # The task's earliest event is (now) this one: the parent it names must appear by
    # this event's time + grace, whether or not it has arrived yet.
    if event.parent_task_id is not None:
        state.schedule(us + step.config.grace_us, BROKEN_CHAIN, event.parent_task_id)


def _set_actor(task: TaskRec, actor: Actor) -> None:
    task.workload_id, task.kind = actor.workload_id, str(actor.kind)
    task.instance_id, task.on_behalf_of = actor.instance_id, actor.on_behalf_of


def _on_task_declared(step: _Step, event: TaskDeclaredEvent, us: int) -> None:
    task = step.state.tasks[event.task_id]
    if task.declared_event_id is not None and not _earlier(
        us, event.event_id, task.declared_us or 0, task.declared_event_id
    ):
        return
    task.declared_event_id, task.declared_us = event.event_id, us
    task.purpose, task.requested_scopes = event.body.purpose, list(event.body.requested_scopes)
    _set_actor(task, event.actor)
    step.task_changed(task)
    _recheck_outgoing_delegations(step, event.task_id)
    for approval in list(step.state.approvals.values()):
        if approval.approves == event.task_id:
            _check_self_approval(step, approval)


def _on_task_completed(step: _Step, event: TaskCompletedEvent, us: int) -> None:
    task = step.state.tasks[event.task_id]
    if task.completed_event_id is not None and not _earlier(
        us, event.event_id, task.completed_us or 0, task.completed_event_id
    ):
        return
    task.completed_event_id, task.completed_us = event.event_id, us
    task.outcome = str(event.body.outcome)
    step.task_changed(task)
    for token in step.state.tokens.values():
        if token.task_id == event.task_id:
            step.state.schedule(us + step.config.grace_us, UNREVOKED, token.token_id)


def _on_decision(step: _Step, event: AuthzDecisionEvent, us: int) -> None:
    body = event.body
    old = step.state.decisions.get(body.decision_id)
    if old is not None and not _earlier(us, event.event_id, old.us, old.event_id):
        return
    step.state.decisions[body.decision_id] = DecisionRec(
        decision_id=body.decision_id,
        event_id=event.event_id,
        us=us,
        task_id=event.task_id,
        allow=body.decision == "ALLOW",
        resource=body.resource,
        action=body.action,
        data_scope=list(body.data_scope),
    )


def _on_issued(step: _Step, event: CredentialIssuedEvent, us: int) -> None:
    body, state, config = event.body, step.state, step.config
    # Judged on every issuance, also a later duplicate of the token id: which one is kept
    # below must not decide whether this alert exists.
    lifetime = to_micros(body.expires_at) - to_micros(body.issued_at)
    _long_lived(step, event, body.token_id, lifetime, "lifetime", body.token_subject)
    old = state.tokens.get(body.token_id)
    if old is not None and not _earlier(us, event.event_id, old.event_us, old.issued_event_id):
        return
    token = TokenRec(
        token_id=body.token_id,
        task_id=event.task_id,
        issued_event_id=event.event_id,
        event_us=us,
        subject=body.token_subject,
        credential_kind=str(body.credential_kind),
        audience=body.audience,
        scopes=list(body.scopes),
        issued_us=to_micros(body.issued_at),
        expires_us=to_micros(body.expires_at),
        decision_id=body.decision_id,
        parent_token_id=body.parent_token_id,
    )
    state.tokens[body.token_id] = token
    renewals.extend(state, token)
    step.token_changed(token)
    state.schedule(us + config.grace_us, ORPHANED, token.token_id)
    state.schedule(token.expires_us, EXPIRY, token.token_id)
    task = state.tasks.get(token.task_id)
    if task is not None and task.completed_us is not None:
        state.schedule(task.completed_us + config.grace_us, UNREVOKED, token.token_id)
    for bg in state.break_glass.values():
        if bg.task_id == token.task_id and token.issued_us >= bg.us:
            state.schedule(
                bg.expires_us + config.grace_us,
                BG_OVERDUE,
                bg.break_glass_id + _SEP + token.token_id,
            )
    for access in state.accesses.get(token.token_id, []):
        _check_access_against_token(step, access, token)


def _on_revoked(step: _Step, event: CredentialRevokedEvent, us: int) -> None:
    body, state = event.body, step.state
    old = state.revocations.get(body.token_id)
    if old is not None and not _earlier(us, event.event_id, old.us, old.event_id):
        return
    revocation = RevocationRec(body.token_id, event.event_id, us, str(body.reason), body.revoked_by)
    state.revocations[body.token_id] = revocation
    token = state.tokens.get(body.token_id)
    if token is not None:
        step.token_changed(token)
    for access in state.accesses.get(body.token_id, []):
        _check_access_after_revocation(step, access, revocation)


def _on_renewed(step: _Step, event: CredentialRenewedEvent, us: int) -> None:
    body, state = event.body, step.state
    expires_us = to_micros(body.expires_at)
    token = state.tokens.get(body.token_id)
    subject = token.subject if token else None
    _long_lived(step, event, body.token_id, expires_us - us, "renewed lifetime", subject)
    renewal = RenewalRec(body.token_id, event.event_id, us, expires_us, body.renewed_by)
    if not renewals.keep(state, renewal) or token is None or not renewals.extend(state, token):
        return
    # An expiry the watermark already passed is undone; its new one is scheduled.
    token.expired = False
    step.token_changed(token)
    state.schedule(token.expires_us, EXPIRY, token.token_id)


def _long_lived(
    step: _Step, event: Envelope, token_id: str, lifetime: int, what: str, subject: str | None
) -> None:
    # The subject is the token: one alert per token, whether its issuance or a renewal
    # (its lifetime counted from the renewal) first went past the maximum.
    limit = step.config.max_credential_ttl_us
    if lifetime > limit:
        step.alert(
            AlertType.LONG_LIVED_CREDENTIAL,
            token_id,
            to_micros(event.event_time),
            [event.event_id],
            f"{what} {lifetime / _US:.0f}s exceeds the maximum {limit / _US:.0f}s",
            task_id=event.task_id,
            token_id=token_id,
            workload_id=subject,
        )


def _on_access(step: _Step, event: AccessEvent, us: int) -> None:
    body, state = event.body, step.state
    access = AccessRec(
        event_id=event.event_id,
        us=us,
        task_id=event.task_id,
        token_id=body.token_id,
        workload_id=event.actor.workload_id,
        instance_id=event.actor.instance_id,
        tool=body.tool,
        resource=body.resource,
        action=body.action,
        data_scope=list(body.data_scope),
        decision_id=body.decision_id,
        outcome=str(body.outcome),
    )
    state.accesses.setdefault(body.token_id, []).append(access)
    token = state.tokens.get(body.token_id)
    if token is not None:
        _check_access_against_token(step, access, token)
    revocation = state.revocations.get(body.token_id)
    if revocation is not None:
        _check_access_after_revocation(step, access, revocation)
    # An observe-only source's accesses name no decisions by design: never unauthorized.
    if access.outcome != "DENIED" and event.attributes.get(OBSERVE_ONLY_ATTRIBUTE) != "true":
        key = body.token_id + _SEP + event.event_id
        state.schedule(us + step.config.grace_us, UNAUTHORIZED, key)


def _on_delegation(step: _Step, event: DelegationEvent, us: int) -> None:
    body, state = event.body, step.state
    old = state.delegations.get(body.child_task_id)
    if old is not None and not _earlier(us, event.event_id, old.us, old.event_id):
        return
    delegation = DelegationRec(
        event_id=event.event_id,
        us=us,
        task_id=event.task_id,
        child_task_id=body.child_task_id,
        delegator=body.delegator,
        delegatee=body.delegatee,
        scopes=list(body.scopes),
        decision_id=body.decision_id,
    )
    state.delegations[body.child_task_id] = delegation
    step.delegation_changed(delegation)
    if body.delegator == body.delegatee:
        step.alert(
            AlertType.DELEGATION_IDENTITY_REUSE,
            body.child_task_id,
            us,
            [event.event_id],
            f"{body.delegatee} delegated to itself: no distinct identity for this step",
            task_id=body.child_task_id,
            workload_id=body.delegatee,
        )
    state.schedule(us + step.config.grace_us, BROKEN_CHAIN, body.child_task_id)
    state.schedule(us + step.config.grace_us, ESCALATION, body.child_task_id)
    _check_escalation(step, delegation, final=False)
    # The child's own delegations can now be judged against what it was granted.
    _recheck_outgoing_delegations(step, body.child_task_id)


def _on_approval(step: _Step, event: ApprovalEvent, us: int) -> None:
    body, state = event.body, step.state
    old = state.approvals.get(body.approval_id)
    if old is not None and not _earlier(us, event.event_id, old.us, old.event_id):
        return
    approval = ApprovalRec(
        body.approval_id,
        event.event_id,
        us,
        body.approver,
        body.approves,
        list(body.scopes),
        human=event.actor.kind == "HUMAN",
    )
    state.approvals[body.approval_id] = approval
    # The requester is known once the approved task's declaration (or the break-glass)
    # is: that arrival re-runs this check, so no deadline is needed.
    _check_self_approval(step, approval)


def _on_break_glass(step: _Step, event: BreakGlassEvent, us: int) -> None:
    body, state, config = event.body, step.state, step.config
    old = state.break_glass.get(body.break_glass_id)
    if old is not None and not _earlier(us, event.event_id, old.us, old.event_id):
        return
    bg = BreakGlassRec(
        break_glass_id=body.break_glass_id,
        event_id=event.event_id,
        us=us,
        task_id=event.task_id,
        workload_id=event.actor.workload_id,
        on_behalf_of=event.actor.on_behalf_of,
        approval_id=body.approval_id,
        expires_us=to_micros(body.expires_at),
    )
    state.break_glass[body.break_glass_id] = bg
    state.schedule(us + config.grace_us, BG_UNAPPROVED, body.break_glass_id)
    for token in state.tokens.values():
        if token.task_id == bg.task_id and token.issued_us >= bg.us:
            state.schedule(
                bg.expires_us + config.grace_us,
                BG_OVERDUE,
                bg.break_glass_id + _SEP + token.token_id,
            )
    for approval in list(state.approvals.values()):
        if approval.approves == bg.break_glass_id:
            _check_self_approval(step, approval)


_HANDLERS: dict[type[Envelope], Callable[[_Step, Any, int], None]] = {
    TaskDeclaredEvent: _on_task_declared,
    TaskCompletedEvent: _on_task_completed,
    AuthzDecisionEvent: _on_decision,
    CredentialIssuedEvent: _on_issued,
    CredentialRevokedEvent: _on_revoked,
    CredentialRenewedEvent: _on_renewed,
    AccessEvent: _on_access,
    DelegationEvent: _on_delegation,
    ApprovalEvent: _on_approval,
    BreakGlassEvent: _on_break_glass,
}


# ---- checks between two known facts ----------------------------------------------------


def _check_access_against_token(step: _Step, access: AccessRec, token: TokenRec) -> None:
    common = {
        "task_id": access.task_id,
        "token_id": token.token_id,
        "workload_id": access.workload_id,
    }
    evidence = [access.event_id, token.issued_event_id]
    if access.us > token.expires_us:
        # A renewal still to come may cover it: decided at the access + grace.
        key = token.token_id + _SEP + access.event_id
        step.state.schedule(access.us + step.config.grace_us, EXPIRED_USE, key)
    if token.subject not in (access.workload_id, access.instance_id):
        step.alert(
            AlertType.SHARED_CREDENTIAL,
            access.event_id,
            access.us,
            evidence,
            f"issued to {token.subject}, used by {access.workload_id} ({access.instance_id})",
            **common,
        )
    outside = sorted(set(access.data_scope) - set(token.scopes))
    if outside:
        step.alert(
            AlertType.SCOPE_ESCALATION,
            access.event_id,
            access.us,
            evidence,
            f"access touched {', '.join(outside)} outside the token's scopes",
            **common,
        )


def _check_access_after_revocation(
    step: _Step, access: AccessRec, revocation: RevocationRec
) -> None:
    if access.us > revocation.us:
        step.alert(
            AlertType.TOKEN_USED_AFTER_REVOCATION,
            access.event_id,
            access.us,
            [access.event_id, revocation.event_id],
            f"used {(access.us - revocation.us) / _US:.0f}s after revocation ({revocation.reason})",
            task_id=access.task_id,
            token_id=access.token_id,
            workload_id=access.workload_id,
        )


def _held_scopes(state: TreeState, task_id: str) -> tuple[set[str] | None, bool, list[str]]:
    """What a task holds: what it was granted by delegation, or for a root task what it
    declared; whether that is final; and the events it comes from."""
    incoming = state.delegations.get(task_id)
    if incoming is not None:
        return set(incoming.scopes), True, [incoming.event_id]
    task = state.tasks.get(task_id)
    if task is not None and task.declared_event_id is not None:
        final = task.depth == 0
        return set(task.requested_scopes), final, [task.declared_event_id]
    return None, False, []


def _check_escalation(step: _Step, delegation: DelegationRec, final: bool) -> None:
    held, known, sources = _held_scopes(step.state, delegation.task_id)
    if held is None or not (known or final):
        return
    widened = sorted(set(delegation.scopes) - held)
    if widened:
        step.alert(
            AlertType.SCOPE_ESCALATION,
            "delegation:" + delegation.child_task_id,
            delegation.us,
            [delegation.event_id, *sources],
            f"delegation to {delegation.delegatee} grants {', '.join(widened)}, "
            "which the delegating task did not hold",
            task_id=delegation.child_task_id,
            workload_id=delegation.delegatee,
        )


def _recheck_outgoing_delegations(step: _Step, task_id: str) -> None:
    for delegation in list(step.state.delegations.values()):
        if delegation.task_id == task_id:
            _check_escalation(step, delegation, final=False)


def _requester(state: TreeState, approves: str) -> tuple[str | None, str | None]:
    """The human an approved task or break-glass acts for, and the event that says so."""
    task = state.tasks.get(approves)
    if task is not None and task.declared_event_id is not None:
        return task.on_behalf_of, task.declared_event_id
    bg = state.break_glass.get(approves)
    if bg is not None:
        return bg.on_behalf_of or bg.workload_id, bg.event_id
    return None, None


def _check_self_approval(step: _Step, approval: ApprovalRec) -> None:
    requester, source = _requester(step.state, approval.approves)
    if requester is None or source is None:
        return
    if requester == approval.approver:
        step.alert(
            AlertType.SELF_APPROVAL,
            approval.approval_id,
            approval.us,
            [approval.event_id, source],
            f"{approval.approver} approved {approval.approves}, which acts for them",
            task_id=approval.approves if approval.approves in step.state.tasks else None,
            workload_id=approval.approver,
        )


# ---- deadlines -------------------------------------------------------------------------


def expire(
    state: TreeState, watermark_us: int, config: CorrelationConfig, detected_at: datetime
) -> tuple[TreeState, Output]:
    """Decide every check whose deadline the watermark has passed, then forget the
    accesses that nothing on time can join any more (and their ids)."""
    step = _Step(state, config, detected_at)
    while state.deadlines and state.deadlines[0][0] <= watermark_us:
        due, kind, key = heapq.heappop(state.deadlines)
        _DEADLINE_CHECKS[kind](step, key, due)
    forget_settled(state, watermark_us - config.grace_us)
    return state, step.out


def _deadline_unrevoked(step: _Step, token_id: str, due: int) -> None:
    state = step.state
    token = state.tokens[token_id]
    task = state.tasks.get(token.task_id)
    if task is None or task.completed_us is None:
        return
    deadline = task.completed_us + step.config.grace_us
    revocation = state.revocations.get(token_id)
    if revocation is not None and revocation.us <= deadline:
        return
    if token.expires_us <= deadline:
        return
    evidence = [token.issued_event_id, task.completed_event_id or ""]
    if revocation is not None:
        evidence.append(revocation.event_id)
    step.alert(
        AlertType.UNREVOKED_TOKEN,
        token_id,
        task.completed_us,
        [e for e in evidence if e],
        f"task {task.task_id} completed; token neither revoked nor expired within "
        f"{step.config.grace_us / _US:.0f}s",
        task_id=task.task_id,
        token_id=token_id,
        workload_id=token.subject,
    )


def _deadline_orphaned(step: _Step, token_id: str, due: int) -> None:
    state = step.state
    token = state.tokens[token_id]
    task = state.tasks.get(token.task_id)
    reasons = []
    evidence = [token.issued_event_id]
    deadline = token.event_us + step.config.grace_us
    if task is None or task.declared_us is None or task.declared_us > deadline:
        reasons.append(f"task {token.task_id} was not declared within the grace period")
    decision = state.decisions.get(token.decision_id)
    if decision is None or not decision.allow or decision.us > deadline:
        reasons.append(f"decision {token.decision_id} is not an ALLOW within the grace period")
        if decision is not None:
            evidence.append(decision.event_id)
    if reasons:
        step.alert(
            AlertType.ORPHANED_TOKEN,
            token_id,
            token.event_us,
            evidence,
            "; ".join(reasons),
            task_id=token.task_id,
            token_id=token_id,
            workload_id=token.subject,
        )


def _covering_decision(state: TreeState, access: AccessRec) -> DecisionRec | None:
    if access.decision_id is not None:
        candidates = (
            [state.decisions[access.decision_id]] if (access.decision_id in state.decisions) else []
        )
    else:
        candidates = [d for d in state.decisions.values() if d.task_id == access.task_id]
    for decision in candidates:
        if (
            decision.allow
            and decision.us <= access.us
            and decision.resource == access.resource
            and decision.action == access.action
            and set(access.data_scope) <= set(decision.data_scope)
        ):
            return decision
    return None


def _deadline_unauthorized(step: _Step, key: str, due: int) -> None:
    # The event id is a UUID; the token id may itself hold the separator.
    token_id, _, event_id = key.rpartition(_SEP)
    state = step.state
    access = next(a for a in state.accesses[token_id] if a.event_id == event_id)
    if _covering_decision(state, access) is not None:
        return
    named = f"decision {access.decision_id}" if access.decision_id else "no decision named"
    step.alert(
        AlertType.UNAUTHORIZED_ACCESS,
        access.event_id,
        access.us,
        [access.event_id],
        f"{access.action} on {access.resource} via {access.tool}: {named}, and no ALLOW "
        "decision before it covers this resource, action and data scope",
        task_id=access.task_id,
        token_id=access.token_id,
        workload_id=access.workload_id,
    )


def _deadline_escalation(step: _Step, child_task_id: str, due: int) -> None:
    _check_escalation(step, step.state.delegations[child_task_id], final=True)


def _deadline_broken_chain(step: _Step, missing: str, due: int) -> None:
    state = step.state
    # Every event that names the task, whatever order they came in: the earliest one
    # starts the grace period.
    naming = [
        (t.first_us, t.first_event_id) for t in state.tasks.values() if t.parent_task_id == missing
    ]
    delegation = state.delegations.get(missing)
    if delegation is not None:
        naming.append((delegation.us, delegation.event_id))
    if not naming:
        # The event that named it was replaced as its task's earliest by one naming
        # another parent (one task id claimed under two parents): nothing names it now.
        return
    earliest = min(us for us, _ in naming)
    named = state.tasks.get(missing)
    if named is not None and named.first_us <= earliest + step.config.grace_us:
        return
    step.alert(
        AlertType.BROKEN_CHAIN,
        missing,
        earliest,
        [event_id for _, event_id in naming],
        f"task {missing} is named but no event of it came within "
        f"{step.config.grace_us / _US:.0f}s of event time",
        task_id=missing,
    )


def _deadline_bg_unapproved(step: _Step, break_glass_id: str, due: int) -> None:
    state = step.state
    bg = state.break_glass[break_glass_id]
    for approval in state.approvals.values():
        names_it = approval.approves == break_glass_id or approval.approval_id == bg.approval_id
        if names_it and approval.human and approval.us <= bg.us + step.config.grace_us:
            return
    step.alert(
        AlertType.BREAK_GLASS_UNAPPROVED,
        break_glass_id,
        bg.us,
        [bg.event_id],
        f"break-glass {break_glass_id} has no human approval within "
        f"{step.config.grace_us / _US:.0f}s",
        task_id=bg.task_id,
        workload_id=bg.workload_id,
    )


def _deadline_bg_overdue(step: _Step, key: str, due: int) -> None:
    state = step.state
    break_glass_id, token_id = _split_pair(key, state.break_glass, state.tokens)
    bg, token = state.break_glass[break_glass_id], state.tokens[token_id]
    revocation = state.revocations.get(token_id)
    if token.expires_us <= bg.expires_us:
        return
    if revocation is not None and revocation.us <= bg.expires_us:
        return
    step.alert(
        AlertType.BREAK_GLASS_OVERDUE,
        key,
        bg.expires_us,
        [bg.event_id, token.issued_event_id],
        f"token issued under break-glass {break_glass_id} still live after it ended",
        task_id=bg.task_id,
        token_id=token_id,
        workload_id=token.subject,
    )


def _split_pair(key: str, first: dict[str, Any], second: dict[str, Any]) -> tuple[str, str]:
    """``a`` and ``b`` of a key ``a + _SEP + b`` whose parts are keys of ``first`` and
    ``second``: ids may themselves hold the separator."""
    start = 0
    while (at := key.find(_SEP, start)) >= 0:
        a, b = key[:at], key[at + 1 :]
        if a in first and b in second:
            return a, b
        start = at + 1
    raise KeyError(key)


def _deadline_expired_use(step: _Step, key: str, due: int) -> None:
    found = renewals.expired_use(step.state, key)
    if found is None:
        return
    access, token, renewal = found
    step.alert(
        AlertType.TOKEN_USED_AFTER_EXPIRY,
        access.event_id,
        access.us,
        [access.event_id, token.issued_event_id] + ([renewal.event_id] if renewal else []),
        f"used {(access.us - token.expires_us) / _US:.0f}s after it expired"
        + (" (as renewed)" if renewal else ""),
        task_id=access.task_id,
        token_id=token.token_id,
        workload_id=access.workload_id,
    )


def _deadline_expiry(step: _Step, token_id: str, due: int) -> None:
    token = step.state.tokens[token_id]
    # A renewal moved the expiry past this deadline: its own deadline decides.
    if not token.expired and due >= token.expires_us:
        token.expired = True
        step.token_changed(token)


_DEADLINE_CHECKS: dict[str, Callable[[_Step, str, int], None]] = {
    UNREVOKED: _deadline_unrevoked,
    ORPHANED: _deadline_orphaned,
    UNAUTHORIZED: _deadline_unauthorized,
    ESCALATION: _deadline_escalation,
    BROKEN_CHAIN: _deadline_broken_chain,
    BG_UNAPPROVED: _deadline_bg_unapproved,
    BG_OVERDUE: _deadline_bg_overdue,
    EXPIRY: _deadline_expiry,
    EXPIRED_USE: _deadline_expired_use,
}
