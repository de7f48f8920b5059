"""Custody trees for correlation tests: a clean three-level tree whose every piece can be
changed, and a runner that feeds events to the pure correlator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from processors.correlation.engine import CorrelationConfig, expire, observe, to_micros
from processors.correlation.tree import TreeState
from producers import events
from producers.context import CustodyContext
from producers.events import Source
from schemas.models import (
    Alert,
    CredentialRevokedEvent,
    DelegationEvent,
    Envelope,
    StateChange,
)

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
GRACE = 60
CONFIG = CorrelationConfig.of(grace_seconds=GRACE, max_credential_ttl_seconds=3600)
DETECTED = datetime(2026, 11, 30, tzinfo=UTC)

ALICE = "alice@acme"
PLANNER = Source.of("acme", "runtime", "spiffe://acme/planner", "AGENT", "planner-1", ALICE)
RESEARCHER = Source.of("acme", "runtime", "spiffe://acme/researcher", "AGENT", "res-1", ALICE)
CODER = Source.of("acme", "runtime", "spiffe://acme/coder", "AGENT", "coder-1", ALICE)
POLICY = Source.of("acme", "opa", "spiffe://acme/opa", "POLICY_ENGINE", "opa-0")
VAULT = Source.of("acme", "vault", "spiffe://acme/vault", "BROKER", "vault-0")
BOB = Source.of("acme", "approvals", "user:bob", "HUMAN", "portal-1")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Tree:
    """A clean custody tree: planner -> researcher -> coder, each with a decision, a
    token, an access and a timely revocation, then completion (outermost last).
    ``name`` prefixes its task and token ids; ``offset`` shifts its times (seconds)."""

    name: str = ""
    offset: float = 0
    events: list[Envelope] = field(default_factory=list)

    def at(self, seconds: float) -> datetime:
        return at(self.offset + seconds)

    def __post_init__(self) -> None:
        self.root = CustodyContext.new_root(self.name + "root")
        self.research = self.root.child(self.name + "research")
        self.code = self.research.child(self.name + "code")
        at = self.at
        tok = self.name + "tok-"
        self.add(
            events.task_declared(
                PLANNER,
                self.root,
                purpose="report",
                requested_scopes=["crm:read", "db:read"],
                event_time=at(0),
            )
        )
        self.grant(self.root, PLANNER, tok + "root", ["crm:read"], start=1)
        self.add(
            events.delegation(
                PLANNER,
                self.root,
                child=self.research,
                delegator=PLANNER.actor.workload_id,
                delegatee=RESEARCHER.actor.workload_id,
                scopes=["crm:read", "db:read"],
                decision_id="dec-tok-root",
                event_time=at(10),
            )
        )
        self.add(
            events.task_declared(
                RESEARCHER,
                self.research,
                purpose="collect",
                requested_scopes=["db:read"],
                event_time=at(11),
            )
        )
        self.grant(self.research, RESEARCHER, tok + "research", ["db:read"], start=12)
        self.add(
            events.delegation(
                RESEARCHER,
                self.research,
                child=self.code,
                delegator=RESEARCHER.actor.workload_id,
                delegatee=CODER.actor.workload_id,
                scopes=["db:read"],
                decision_id="dec-tok-research",
                event_time=at(20),
            )
        )
        self.add(
            events.task_declared(
                CODER, self.code, purpose="render", requested_scopes=["db:read"], event_time=at(21)
            )
        )
        self.grant(self.code, CODER, tok + "code", ["db:read"], start=22)
        for ctx, source, when in (
            (self.code, CODER, 30),
            (self.research, RESEARCHER, 31),
            (self.root, PLANNER, 32),
        ):
            self.add(events.task_completed(source, ctx, outcome="SUCCEEDED", event_time=at(when)))

    def add(self, event: Envelope) -> Envelope:
        self.events.append(event)
        return event

    def grant(
        self,
        ctx: CustodyContext,
        source: Source,
        token: str,
        scopes: list[str],
        start: float,
        ttl: float = 900,
        resource: str = "db://x",
    ) -> None:
        """Decision, issuance, access and revocation of one token, one second apart."""
        at = self.at
        decision_id = f"dec-{token}"
        self.add(
            events.authz_decision(
                POLICY,
                ctx,
                decision_id=decision_id,
                policy_engine="opa",
                policy_id="p",
                policy_version="1",
                decision="ALLOW",
                resource=resource,
                action="read",
                data_scope=scopes,
                reasons=["ok"],
                event_time=at(start),
            )
        )
        self.add(
            events.credential_issued(
                VAULT,
                ctx,
                token_id=token,
                token_subject=source.actor.workload_id,
                credential_kind="JWT",
                audience="db",
                scopes=scopes,
                issued_at=at(start + 1),
                expires_at=at(start + 1 + ttl),
                decision_id=decision_id,
                event_time=at(start + 1),
            )
        )
        self.add(
            events.access(
                source,
                ctx,
                token_id=token,
                tool="sql",
                resource=resource,
                action="read",
                data_scope=scopes,
                outcome="SUCCESS",
                decision_id=decision_id,
                event_time=at(start + 2),
            )
        )
        self.add(
            events.credential_revoked(
                VAULT,
                ctx,
                token_id=token,
                reason="TASK_ENDED",
                revoked_by=VAULT.actor.workload_id,
                event_time=at(start + 3),
            )
        )

    def without(self, predicate: object) -> list[Envelope]:
        return [e for e in self.events if not predicate(e)]  # type: ignore[operator]


@dataclass
class Result:
    state: TreeState
    alerts: list[Alert]
    changes: list[StateChange]

    def types(self) -> list[str]:
        return sorted(str(a.alert_type) for a in self.alerts)

    def ids(self) -> set[str]:
        return {a.alert_id for a in self.alerts}


def run(
    stream: Iterable[Envelope], config: CorrelationConfig = CONFIG, until: datetime | None = None
) -> Result:
    """Feed every event, then let the watermark pass every deadline (or ``until``)."""
    state: TreeState | None = None
    alerts: list[Alert] = []
    changes: list[StateChange] = []
    for event in stream:
        state, out = observe(state, event, config, DETECTED)
        alerts += out.alerts
        changes += out.changes
    assert state is not None
    end = to_micros(until) if until else to_micros(at(10**7))
    state, out = expire(state, end, config, DETECTED)
    return Result(state, alerts + out.alerts, changes + out.changes)


MISCHIEF = [
    "leak",
    "late_use",
    "shared",
    "widen",
    "break_glass",
    "self_approval",
    "orphan",
    "expired_use",
]


def mischievous(mischief: set[str], name: str = "", offset: float = 0) -> list[Envelope]:
    """A tree with the chosen misbehaviours (see :data:`MISCHIEF`)."""
    tree = Tree(name, offset)
    at = tree.at
    tok = name + "tok-"
    if "expired_use" in mischief:
        # expires at 26 s, within the grace after its task ends; used at 27 s
        tree.grant(tree.code, CODER, tok + "short", ["db:read"], start=23, ttl=2)
    stream = list(tree.events)
    if "leak" in mischief:
        stream = [
            e
            for e in stream
            if not (isinstance(e, CredentialRevokedEvent) and e.body.token_id == tok + "research")
        ]
    if "late_use" in mischief or "shared" in mischief:
        source = RESEARCHER if "shared" in mischief else CODER
        when = 26 if "late_use" in mischief else 24.5
        stream.append(
            events.access(
                source,
                tree.code,
                token_id=tok + "code",
                tool="sql",
                resource="db://x",
                action="read",
                data_scope=["db:read"],
                outcome="SUCCESS",
                decision_id=f"dec-{tok}code",
                event_time=at(when),
            )
        )
    if "widen" in mischief:
        stream = [
            e.model_copy(
                update={"body": e.body.model_copy(update={"scopes": ["db:read", "db:write"]})}
            )
            if isinstance(e, DelegationEvent) and e.body.child_task_id == name + "code"
            else e
            for e in stream
        ]
    if "break_glass" in mischief:
        stream.append(
            events.break_glass(
                CODER,
                tree.code,
                break_glass_id=name + "bg",
                reason="x",
                standing_access_unavailable="y",
                expires_at=at(23.5),
                event_time=at(21.5),
            )
        )
    if "self_approval" in mischief:
        stream.append(
            events.approval(
                CODER,
                tree.code,
                approval_id=name + "appr",
                approver=ALICE,
                approves=name + "code",
                scopes=[],
                reason="r",
                event_time=at(21.7),
            )
        )
    if "orphan" in mischief:
        stream = [e for e in stream if e.task_id != name + "research"]
    if "expired_use" in mischief:
        stream = [
            e
            for e in stream
            if not (isinstance(e, CredentialRevokedEvent) and e.body.token_id == tok + "short")
        ]
        stream.append(
            events.access(
                CODER,
                tree.code,
                token_id=tok + "short",
                tool="sql",
                resource="db://x",
                action="read",
                data_scope=["db:read"],
                outcome="SUCCESS",
                decision_id=f"dec-{tok}short",
                event_time=at(27),
            )
        )
    return stream
