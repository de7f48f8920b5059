"""Sample events for tests: one valid event of every type, and realistic custody trees."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from producers import events
from producers.context import CustodyContext
from producers.events import Source
from schemas.models import Envelope

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)

AGENT = Source.of(
    "acme", "agent-runtime", "spiffe://acme/agent/planner", "AGENT", "pod-1", "alice@acme"
)
HELPER = Source.of("acme", "agent-runtime", "spiffe://acme/agent/coder", "AGENT", "pod-2")
POLICY = Source.of("acme", "policy.opa", "spiffe://acme/policy/opa", "POLICY_ENGINE", "opa-0")
BROKER = Source.of("acme", "broker.vault", "spiffe://acme/broker/vault", "BROKER", "vault-0")
HUMAN = Source.of("acme", "approvals", "user:bob@acme", "HUMAN", "portal-1")


def one_of_each(root: CustodyContext | None = None) -> list[Envelope]:
    """One valid event of each of the nine types, in a two-level tree."""
    ctx = root or CustodyContext.new_root()
    child = ctx.child()
    issued = T0 + timedelta(seconds=2)
    return [
        events.task_declared(
            AGENT, ctx, purpose="report", requested_scopes=["crm:read"], event_time=T0
        ),
        events.authz_decision(
            POLICY,
            ctx,
            decision_id="dec-1",
            policy_engine="opa",
            policy_id="p",
            policy_version="7",
            decision="ALLOW",
            resource="crm://accounts",
            action="read",
            data_scope=["crm:read"],
            reasons=["purpose matches"],
            context={"ip": "10.0.0.1"},
            event_time=T0 + timedelta(seconds=1),
        ),
        events.credential_issued(
            BROKER,
            ctx,
            token_id="tok-1",
            token_subject=AGENT.actor.workload_id,
            credential_kind="JWT",
            audience="crm",
            scopes=["crm:read"],
            issued_at=issued,
            expires_at=issued + timedelta(minutes=15),
            decision_id="dec-1",
            event_time=issued,
        ),
        events.access(
            AGENT,
            ctx,
            token_id="tok-1",
            tool="crm.search",
            resource="crm://accounts",
            action="read",
            data_scope=["crm:read"],
            outcome="SUCCESS",
            decision_id="dec-1",
            detail="42 rows",
            event_time=T0 + timedelta(seconds=3),
        ),
        events.delegation(
            AGENT,
            ctx,
            child=child,
            delegator=AGENT.actor.workload_id,
            delegatee=HELPER.actor.workload_id,
            scopes=["crm:read"],
            decision_id="dec-1",
            event_time=T0 + timedelta(seconds=4),
        ),
        events.approval(
            HUMAN,
            child,
            approval_id="appr-1",
            approver="bob@acme",
            approves=child.task_id,
            scopes=["crm:read"],
            reason="ok",
            expires_at=T0 + timedelta(hours=1),
            event_time=T0 + timedelta(seconds=5),
        ),
        events.break_glass(
            HELPER,
            child,
            break_glass_id="bg-1",
            reason="incident 42",
            standing_access_unavailable="on-call role not provisioned",
            approval_id="appr-1",
            expires_at=T0 + timedelta(hours=1),
            event_time=T0 + timedelta(seconds=6),
        ),
        events.credential_revoked(
            BROKER,
            ctx,
            token_id="tok-1",
            reason="TASK_ENDED",
            revoked_by=BROKER.actor.workload_id,
            event_time=T0 + timedelta(seconds=7),
        ),
        events.task_completed(
            AGENT, ctx, outcome="SUCCEEDED", detail=None, event_time=T0 + timedelta(seconds=8)
        ),
    ]


def stamped(event: Envelope, seq: int = 1, instance: str = "test/1") -> Envelope:
    """A copy of ``event`` with hash-chain fields set, ready to encode."""
    return event.model_copy(update={"producer_instance": instance, "seq": seq})


def json_form(event: Envelope) -> dict[str, object]:
    """The JSON-lines form of an unstamped event, as a service would write it."""
    data = event.model_dump(mode="json")
    for key in ("producer_instance", "seq", "prev_hash"):
        data.pop(key)
    return data


def many_trees(count: int) -> list[Envelope]:
    """``count`` trees of nine events each, interleaved by position (realistic arrival)."""
    trees = [
        one_of_each(CustodyContext.new_root(f"root-{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(count)
    ]
    return [tree[i] for i in range(9) for tree in trees]
