"""Helpers for the three kinds of publishers: agent runtimes, policy engines and
credential brokers. Each binds a producer to a :class:`producers.events.Source` and speaks
in the publisher's own verbs.

Credential brokers publish synchronously ("evidence before access"): ``issued`` returns
only once the broker acknowledged the event and raises
:class:`producers.producer.DeliveryError` otherwise, so the caller can refuse to hand out
a token whose issuance was not recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from producers import events
from producers.context import CustodyContext
from producers.events import Source
from producers.producer import CustodyProducer, DeliveryReport
from schemas.models import (
    AccessOutcome,
    CredentialKind,
    Decision,
    RevocationReason,
    TaskOutcome,
)


class AgentRecorder:
    """What an agent runtime records: tasks, delegations, tool accesses, completion."""

    def __init__(self, producer: CustodyProducer, source: Source) -> None:
        self.producer = producer
        self.source = source

    def declare_task(
        self, ctx: CustodyContext, purpose: str, requested_scopes: Sequence[str], **extra: Any
    ) -> None:
        self.producer.publish(
            events.task_declared(
                self.source, ctx, purpose=purpose, requested_scopes=requested_scopes, **extra
            )
        )

    def delegate(
        self,
        ctx: CustodyContext,
        delegatee: str,
        scopes: Sequence[str],
        decision_id: str,
        child_task_id: str | None = None,
        **extra: Any,
    ) -> CustodyContext:
        """Record a delegation and return the child's context to hand to the delegatee."""
        child = ctx.child(child_task_id)
        self.producer.publish(
            events.delegation(
                self.source,
                ctx,
                child=child,
                delegator=self.source.actor.workload_id,
                delegatee=delegatee,
                scopes=scopes,
                decision_id=decision_id,
                **extra,
            )
        )
        return child

    def access(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        tool: str,
        resource: str,
        action: str,
        data_scope: Sequence[str],
        outcome: AccessOutcome | str,
        decision_id: str | None = None,
        **extra: Any,
    ) -> None:
        self.producer.publish(
            events.access(
                self.source,
                ctx,
                token_id=token_id,
                tool=tool,
                resource=resource,
                action=action,
                data_scope=data_scope,
                outcome=outcome,
                decision_id=decision_id,
                **extra,
            )
        )

    def complete(self, ctx: CustodyContext, outcome: TaskOutcome | str, **extra: Any) -> None:
        self.producer.publish(events.task_completed(self.source, ctx, outcome=outcome, **extra))


class PolicyEngineRecorder:
    """What a policy engine records: each decision with its policy and reasons."""

    def __init__(self, producer: CustodyProducer, source: Source) -> None:
        self.producer = producer
        self.source = source

    def decision(
        self,
        ctx: CustodyContext,
        *,
        policy_id: str,
        policy_version: str,
        decision: Decision | str,
        resource: str,
        action: str,
        data_scope: Sequence[str],
        reasons: Sequence[str],
        context: Mapping[str, str] | None = None,
        decision_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Record a decision; returns its ``decision_id`` for the credential and access."""
        decision_id = decision_id or str(uuid.uuid4())
        self.producer.publish(
            events.authz_decision(
                self.source,
                ctx,
                decision_id=decision_id,
                policy_engine=self.source.producer,
                policy_id=policy_id,
                policy_version=policy_version,
                decision=decision,
                resource=resource,
                action=action,
                data_scope=data_scope,
                reasons=reasons,
                context=context,
                **extra,
            )
        )
        return decision_id


class CredentialBrokerRecorder:
    """What a credential broker records, synchronously: issuance and revocation."""

    def __init__(self, producer: CustodyProducer, source: Source) -> None:
        self.producer = producer
        self.source = source

    def issued(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        token_subject: str,
        credential_kind: CredentialKind | str,
        audience: str,
        scopes: Sequence[str],
        issued_at: datetime,
        expires_at: datetime,
        decision_id: str,
        parent_token_id: str | None = None,
        **extra: Any,
    ) -> DeliveryReport:
        """Record an issuance; hand the token out only if this returns."""
        return self.producer.publish_sync(
            events.credential_issued(
                self.source,
                ctx,
                token_id=token_id,
                token_subject=token_subject,
                credential_kind=credential_kind,
                audience=audience,
                scopes=scopes,
                issued_at=issued_at,
                expires_at=expires_at,
                decision_id=decision_id,
                parent_token_id=parent_token_id,
                **extra,
            )
        )

    def revoked(
        self,
        ctx: CustodyContext,
        *,
        token_id: str,
        reason: RevocationReason | str,
        **extra: Any,
    ) -> DeliveryReport:
        return self.producer.publish_sync(
            events.credential_revoked(
                self.source,
                ctx,
                token_id=token_id,
                reason=reason,
                revoked_by=self.source.actor.workload_id,
                **extra,
            )
        )
