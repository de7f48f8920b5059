"""The workload simulator: realistic multi-agent custody traffic, built with the SDK's
event builders.

Pure and deterministic: given a :class:`SimulationConfig` (root tasks, misbehaviour rate,
seed, start time, tenant) :func:`simulate` yields the same events, event ids included,
every time, in event-time order. Nothing here reads a clock or draws from a global random
source; every id comes from a :class:`random.Random` seeded from the config.

Three kinds of custody tree (:class:`Scenario`):

- ``delegation``: a planner agent delegates to a researcher (who delegates to a retriever)
  and to a coder (who delegates to a tester, sometimes on to a sandbox: 3-4 levels). Each
  step is a distinct workload identity acting for one human, with its own authorization
  decision; each tool call runs under a just-in-time credential that the broker issues
  after an ALLOW and revokes when the task ends. Pushing to the main branch is a
  sensitive step that another human approves first.
- ``incident``: an on-call SRE agent diagnoses (with a log-analyst agent), then invokes
  break-glass for a production restart, approved by the incident commander.
- ``batch``: a scheduler hands a nightly export to a batch worker that runs for hours,
  rotating its one-hour credential (each new one names its ``parent_token_id``, the old
  one is revoked ``ROTATED``); the broker renews the last one shortly before it expires
  for the export's final stretch (``CREDENTIAL_RENEWED``).

A root task misbehaves with the chosen probability, in one of the :class:`Misbehaviour`
ways; :data:`EXPECTED_ALERT` names the streaming alert each one must raise. A tree without
misbehaviour raises none.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from producers import events
from producers.context import CustodyContext
from producers.events import Source
from schemas.models import AlertType, CredentialKind, Envelope

DEFAULT_START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
# Mean seconds between the starts of consecutive root tasks.
_MEAN_START_GAP = 3.0
_HUMANS = ("alice", "bob", "carol", "dave", "erin", "frank")
# A scope no scenario ever holds: a delegation that grants it widens scope.
_FORBIDDEN_SCOPE = "secrets:read"
# Just-in-time credentials outlive their task by several minutes, so a leaked one is still
# live when the correlator's grace period (300 s by default) after completion runs out.
_JIT_TTL = 900.0
_ROTATION_TTL = 3600.0
# How far a renewal moves the batch export's last credential on: its final stretch.
_RENEWAL_TTL = 1800.0


class Scenario(StrEnum):
    """The kind of work a custody tree does."""

    DELEGATION = "delegation"
    INCIDENT = "incident"
    BATCH = "batch"


class Misbehaviour(StrEnum):
    """A way a custody tree goes wrong."""

    LEAKED_TOKEN = "leaked_token"  # noqa: S105 (a misbehaviour's name, not a credential)
    SHARED_CREDENTIAL = "shared_credential"
    WIDENED_DELEGATION = "widened_delegation"
    USE_AFTER_EXPIRY = "use_after_expiry"
    SELF_APPROVAL = "self_approval"


EXPECTED_ALERT: dict[Misbehaviour, AlertType] = {
    Misbehaviour.LEAKED_TOKEN: AlertType.UNREVOKED_TOKEN,
    Misbehaviour.SHARED_CREDENTIAL: AlertType.SHARED_CREDENTIAL,
    Misbehaviour.WIDENED_DELEGATION: AlertType.SCOPE_ESCALATION,
    Misbehaviour.USE_AFTER_EXPIRY: AlertType.TOKEN_USED_AFTER_EXPIRY,
    Misbehaviour.SELF_APPROVAL: AlertType.SELF_APPROVAL,
}

# Most traffic is interactive delegation; incidents and batch jobs are rarer.
_SCENARIO_WEIGHTS = {Scenario.DELEGATION: 6, Scenario.INCIDENT: 2, Scenario.BATCH: 2}


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate. ``kinds`` limits the misbehaviours drawn (all by default)."""

    roots: int = 100
    misbehaviour_rate: float = 0.1
    seed: int = 1
    start: datetime = DEFAULT_START
    tenant: str = "acme"
    kinds: tuple[Misbehaviour, ...] = tuple(Misbehaviour)

    def __post_init__(self) -> None:
        if self.roots < 0:
            raise ValueError("roots must be >= 0")
        if not 0.0 <= self.misbehaviour_rate <= 1.0:
            raise ValueError("misbehaviour_rate must be between 0 and 1")
        if not self.kinds:
            raise ValueError("kinds must name at least one misbehaviour")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")


@dataclass(frozen=True, slots=True)
class TreePlan:
    """One root task to simulate: decided up front, so a summary needs no events."""

    index: int
    root_task_id: str
    scenario: Scenario
    misbehaviour: Misbehaviour | None
    start: datetime
    seed: int


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from ``rng`` (reproducible, unlike :func:`uuid.uuid4`)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def plan(config: SimulationConfig) -> list[TreePlan]:
    """The root tasks of a simulation: scenario, misbehaviour and start time of each."""
    rng = random.Random(config.seed)  # noqa: S311 (seeded so a simulation repeats; nothing secret)
    scenarios, weights = list(_SCENARIO_WEIGHTS), list(_SCENARIO_WEIGHTS.values())
    start = config.start
    trees = []
    for index in range(config.roots):
        if index:
            start += timedelta(seconds=rng.expovariate(1 / _MEAN_START_GAP))
        misbehaves = rng.random() < config.misbehaviour_rate
        kind = rng.choice(config.kinds) if misbehaves else None
        scenario = rng.choices(scenarios, weights)[0]
        root_task_id = random_uuid(rng)
        trees.append(TreePlan(index, root_task_id, scenario, kind, start, rng.getrandbits(64)))
    return trees


def simulate(config: SimulationConfig) -> Iterator[Envelope]:
    """Every event of the simulation, unstamped, in event-time order."""
    trees = [tree_events(tree, config.tenant) for tree in plan(config)]
    yield from heapq.merge(*trees, key=lambda event: event.event_time)


def tree_events(tree: TreePlan, tenant: str) -> list[Envelope]:
    """The events of one custody tree, in event-time order."""
    builder = _TreeBuilder(tree, tenant)
    _SCENARIOS[tree.scenario](builder)
    if builder.pending is not None:
        raise RuntimeError(f"scenario {tree.scenario} never applied {builder.pending}")
    return builder.events


# ---- building blocks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tool:
    """A tool call: what it touches, and the credential the broker issues for it."""

    tool: str
    resource: str
    action: str
    scopes: tuple[str, ...]
    audience: str
    kind: CredentialKind = CredentialKind.JWT


@dataclass(slots=True)
class _Token:
    token_id: str
    tool: _Tool
    decision_id: str
    expires_at: datetime


@dataclass(slots=True)
class _TreeBuilder:
    """Emits one tree's events on an advancing event-time clock, applying the tree's
    misbehaviour (``pending``) at the first place it fits."""

    plan: TreePlan
    tenant: str
    rng: random.Random = field(init=False)
    now: datetime = field(init=False)
    pending: Misbehaviour | None = field(init=False)
    requester: str = field(init=False)
    approver: str = field(init=False)
    policy: Source = field(init=False)
    broker: Source = field(init=False)
    events: list[Envelope] = field(default_factory=list)
    live: dict[str, list[_Token]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)  # noqa: S311 (seeded, as in plan())
        self.now = self.plan.start
        self.pending = self.plan.misbehaviour
        requester, approver = self.rng.sample(_HUMANS, 2)
        self.requester, self.approver = self.human(requester), self.human(approver)
        self.policy = self.service("policy.opa", "policy/opa", "POLICY_ENGINE")
        self.broker = self.service("broker.jit-vault", "broker/jit-vault", "BROKER")

    # ---- identities and time ---------------------------------------------------------

    def human(self, name: str) -> str:
        return f"{name}@{self.tenant}"

    def service(self, producer: str, path: str, kind: str) -> Source:
        instance = f"{path.rsplit('/', 1)[-1]}-{self.rng.randrange(3)}"
        return Source.of(self.tenant, producer, f"spiffe://{self.tenant}/{path}", kind, instance)

    def agent(self, role: str) -> Source:
        """A distinct workload identity for ``role``, acting for the requesting human."""
        return Source.of(
            self.tenant,
            "agent-runtime",
            f"spiffe://{self.tenant}/agent/{role}",
            "AGENT",
            f"{role}-{self.rng.randrange(1, 5)}",
            self.requester,
        )

    def tick(self, low: float = 0.5, high: float = 4.0) -> datetime:
        self.now += timedelta(seconds=round(self.rng.uniform(low, high), 3))
        return self.now

    def uid(self, prefix: str = "") -> str:
        return prefix + random_uuid(self.rng)

    def emit(self, event: Envelope) -> None:
        # The builders draw event ids from uuid4(); a seeded one keeps runs reproducible.
        self.events.append(event.model_copy(update={"event_id": self.uid()}))

    def take(self, kind: Misbehaviour) -> bool:
        """True (once) when this tree's misbehaviour is ``kind`` and not yet applied."""
        if self.pending is not kind:
            return False
        self.pending = None
        return True

    # ---- custody steps ---------------------------------------------------------------

    def root(self, agent: Source, purpose: str, scopes: Sequence[str]) -> CustodyContext:
        ctx = CustodyContext.new_root(self.plan.root_task_id)
        self.declare(agent, ctx, purpose, scopes)
        return ctx

    def declare(
        self, agent: Source, ctx: CustodyContext, purpose: str, scopes: Sequence[str]
    ) -> None:
        self.emit(
            events.task_declared(
                agent, ctx, purpose=purpose, requested_scopes=scopes, event_time=self.tick()
            )
        )

    def decide(
        self,
        ctx: CustodyContext,
        resource: str,
        action: str,
        scopes: Sequence[str],
        context: dict[str, str] | None = None,
    ) -> str:
        """An ALLOW by the policy engine; returns its decision id."""
        decision_id = self.uid("dec-")
        self.emit(
            events.authz_decision(
                self.policy,
                ctx,
                decision_id=decision_id,
                policy_engine="opa",
                policy_id=f"custody.{action}",
                policy_version=str(self.rng.randint(3, 9)),
                decision="ALLOW",
                resource=resource,
                action=action,
                data_scope=scopes,
                reasons=["purpose matches declared task", "scopes within delegation"],
                context=context or {},
                event_time=self.tick(0.05, 0.3),
            )
        )
        return decision_id

    def issue(
        self,
        ctx: CustodyContext,
        agent: Source,
        tool: _Tool,
        decision_id: str,
        ttl: float = _JIT_TTL,
        parent: _Token | None = None,
    ) -> _Token:
        """The broker issues a credential for ``tool`` to ``agent`` under ``decision_id``."""
        issued = self.tick(0.05, 0.5)
        token = _Token(self.uid("tok-"), tool, decision_id, issued + timedelta(seconds=ttl))
        self.emit(
            events.credential_issued(
                self.broker,
                ctx,
                token_id=token.token_id,
                token_subject=agent.actor.workload_id,
                credential_kind=tool.kind,
                audience=tool.audience,
                scopes=tool.scopes,
                issued_at=issued,
                expires_at=token.expires_at,
                decision_id=decision_id,
                parent_token_id=parent.token_id if parent else None,
                event_time=issued,
            )
        )
        self.live.setdefault(ctx.task_id, []).append(token)
        return token

    def use(self, ctx: CustodyContext, agent: Source, token: _Token) -> None:
        """One tool call under ``token``; a shared service account may reuse it."""
        self._access(ctx, agent, token)
        if self.take(Misbehaviour.SHARED_CREDENTIAL):
            shared = Source.of(
                self.tenant,
                "agent-runtime",
                f"spiffe://{self.tenant}/svc/shared-automation",
                "SERVICE",
                "shared-automation-0",
            )
            self._access(ctx, shared, token)

    def _access(self, ctx: CustodyContext, agent: Source, token: _Token) -> None:
        tool = token.tool
        self.emit(
            events.access(
                agent,
                ctx,
                token_id=token.token_id,
                tool=tool.tool,
                resource=tool.resource,
                action=tool.action,
                data_scope=tool.scopes,
                outcome="SUCCESS",
                decision_id=token.decision_id,
                event_time=self.tick(),
            )
        )

    def grant(
        self,
        ctx: CustodyContext,
        agent: Source,
        tool: _Tool,
        calls: int = 2,
        context: dict[str, str] | None = None,
        ttl: float = _JIT_TTL,
    ) -> None:
        """Decision, just-in-time credential and ``calls`` tool calls (revoked at task end).

        A tree that uses a token after expiry gets a short-lived one here and calls the
        tool once more after it expired.
        """
        decision_id = self.decide(ctx, tool.resource, tool.action, tool.scopes, context)
        late = self.take(Misbehaviour.USE_AFTER_EXPIRY)
        token = self.issue(ctx, agent, tool, decision_id, self.rng.uniform(30, 90) if late else ttl)
        for _ in range(calls):
            self.use(ctx, agent, token)
        if late:
            self.now = token.expires_at + timedelta(seconds=round(self.rng.uniform(5, 60), 3))
            self._access(ctx, agent, token)

    def renew(self, ctx: CustodyContext, token: _Token, ttl: float) -> None:
        """The broker extends ``token``'s lifetime to ``ttl`` seconds from now."""
        token.expires_at = self.tick(0.05, 0.5) + timedelta(seconds=ttl)
        self.emit(
            events.credential_renewed(
                self.broker,
                ctx,
                token_id=token.token_id,
                expires_at=token.expires_at,
                renewed_by=self.broker.actor.workload_id,
                event_time=self.now,
            )
        )

    def revoke(self, ctx: CustodyContext, token: _Token, reason: str) -> None:
        self.emit(
            events.credential_revoked(
                self.broker,
                ctx,
                token_id=token.token_id,
                reason=reason,
                revoked_by=self.broker.actor.workload_id,
                event_time=self.tick(0.05, 0.5),
            )
        )
        self.live[ctx.task_id].remove(token)

    def delegate(
        self,
        ctx: CustodyContext,
        delegator: Source,
        delegatee: Source,
        scopes: Sequence[str],
        purpose: str,
    ) -> CustodyContext:
        """An authorized delegation to a distinct identity, and the child's declaration."""
        granted = list(scopes)
        if self.take(Misbehaviour.WIDENED_DELEGATION):
            granted.append(_FORBIDDEN_SCOPE)
        child = ctx.child(self.uid())
        decision_id = self.decide(ctx, f"agent:{delegatee.actor.workload_id}", "delegate", granted)
        self.emit(
            events.delegation(
                delegator,
                ctx,
                child=child,
                delegator=delegator.actor.workload_id,
                delegatee=delegatee.actor.workload_id,
                scopes=granted,
                decision_id=decision_id,
                event_time=self.tick(),
            )
        )
        self.declare(delegatee, child, purpose, granted)
        return child

    def approve(
        self,
        ctx: CustodyContext,
        approves: str,
        scopes: Sequence[str],
        reason: str,
        approval_id: str | None = None,
    ) -> str:
        """A human other than the requester approves (unless this tree self-approves)."""
        approver = self.requester if self.take(Misbehaviour.SELF_APPROVAL) else self.approver
        approval_id = approval_id or self.uid("appr-")
        portal = Source.of(self.tenant, "approvals.portal", f"user:{approver}", "HUMAN", "portal-1")
        self.emit(
            events.approval(
                portal,
                ctx,
                approval_id=approval_id,
                approver=approver,
                approves=approves,
                scopes=scopes,
                reason=reason,
                event_time=self.tick(5, 40),
            )
        )
        return approval_id

    def finish(self, ctx: CustodyContext, agent: Source) -> None:
        """The broker revokes the task's live credentials, then the task completes; a
        leaking tree forgets one of them."""
        tokens = list(self.live.get(ctx.task_id, []))
        if tokens and self.take(Misbehaviour.LEAKED_TOKEN):
            tokens.pop(0)
        for token in tokens:
            self.revoke(ctx, token, "TASK_ENDED")
        self.emit(events.task_completed(agent, ctx, outcome="SUCCEEDED", event_time=self.tick()))


# ---- scenarios ----------------------------------------------------------------------------


def _delegation(b: _TreeBuilder) -> None:
    """A planner splits a change request between a researcher and a coder."""
    repo = b.rng.choice(("payments-api", "web-frontend", "data-pipeline", "auth-service"))
    ticket = f"ENG-{b.rng.randint(1000, 9999)}"
    planner = b.agent("planner")
    root = b.root(
        planner,
        f"resolve {ticket} in {repo}",
        ["tickets:read", "docs:read", "web:read", "repo:read", "repo:write", "ci:run"],
    )
    b.grant(root, planner, _Tool("jira.get", f"jira://{ticket}", "read", ("tickets:read",), "jira"))
    _research(b, root, planner, ticket)
    _code(b, root, planner, repo)
    b.finish(root, planner)


def _research(b: _TreeBuilder, root: CustodyContext, planner: Source, ticket: str) -> None:
    researcher = b.agent("researcher")
    task = b.delegate(root, planner, researcher, ["docs:read", "web:read"], f"research {ticket}")
    docs = _Tool("docs.search", "confluence://eng", "read", ("docs:read",), "confluence")
    b.grant(task, researcher, docs, calls=b.rng.randint(1, 3))
    retriever = b.agent("retriever")
    fetch = b.delegate(task, researcher, retriever, ["web:read"], "fetch references")
    web = _Tool("web.fetch", "https://docs.python.org", "read", ("web:read",), "egress-proxy")
    b.grant(fetch, retriever, web, calls=b.rng.randint(1, 4))
    b.finish(fetch, retriever)
    b.finish(task, researcher)


def _code(b: _TreeBuilder, root: CustodyContext, planner: Source, repo: str) -> None:
    coder = b.agent("coder")
    task = b.delegate(root, planner, coder, ["repo:read", "repo:write", "ci:run"], "implement")
    clone = _Tool("git.clone", f"git://{repo}", "read", ("repo:read",), "git")
    b.grant(task, coder, clone, calls=1)
    tester = b.agent("tester")
    test = b.delegate(task, coder, tester, ["repo:read", "ci:run"], "run the test suite")
    ci = _Tool("ci.run", f"ci://{repo}", "execute", ("ci:run",), "ci")
    b.grant(test, tester, ci, calls=b.rng.randint(1, 2))
    if b.rng.random() < 0.5:
        sandbox = b.agent("sandbox")
        run = b.delegate(test, tester, sandbox, ["ci:run"], "execute tests in a sandbox")
        b.grant(
            run,
            sandbox,
            _Tool("sandbox.exec", f"sandbox://{repo}", "execute", ("ci:run",), "sandbox"),
        )
        b.finish(run, sandbox)
    b.finish(test, tester)
    # Pushing to main is the sensitive step: a second human signs it off first.
    approval_id = b.approve(task, task.task_id, ["repo:write"], f"merge to {repo} main")
    push = _Tool("git.push", f"git://{repo}@main", "write", ("repo:write",), "git")
    b.grant(task, coder, push, calls=1, context={"approval_id": approval_id})
    b.finish(task, coder)


def _incident(b: _TreeBuilder) -> None:
    """An SRE agent diagnoses an incident, then restarts production under break-glass."""
    incident = f"INC-{b.rng.randint(100, 999)}"
    service = b.rng.choice(("checkout", "search", "payments"))
    sre = b.agent("sre")
    root = b.root(
        sre,
        f"{incident}: restore {service} latency",
        ["metrics:read", "logs:read", "prod:restart"],
    )
    metrics = _Tool(
        "metrics.query", f"prometheus://prod/{service}", "read", ("metrics:read",), "prometheus"
    )
    b.grant(root, sre, metrics, calls=b.rng.randint(2, 4))
    analyst = b.agent("log-analyst")
    logs_task = b.delegate(root, sre, analyst, ["logs:read"], f"find the cause of {incident}")
    logs = _Tool("logs.search", f"loki://prod/{service}", "read", ("logs:read",), "loki")
    b.grant(logs_task, analyst, logs, calls=b.rng.randint(1, 3))
    b.finish(logs_task, analyst)
    _break_glass(b, root, sre, incident, service)
    b.finish(root, sre)


def _break_glass(
    b: _TreeBuilder, root: CustodyContext, sre: Source, incident: str, service: str
) -> None:
    break_glass_id, approval_id = b.uid("bg-"), b.uid("appr-")
    started = b.tick()
    ends = started + timedelta(minutes=30)
    b.emit(
        events.break_glass(
            sre,
            root,
            break_glass_id=break_glass_id,
            reason=f"{incident} sev1: {service} p99 latency above SLO",
            standing_access_unavailable="prod:restart is not in the standing role",
            approval_id=approval_id,
            expires_at=ends,
            event_time=started,
        )
    )
    b.approve(root, break_glass_id, ["prod:restart"], f"{incident} sign-off", approval_id)
    restart = _Tool("kubectl.rollout", f"k8s://prod/{service}", "restart", ("prod:restart",), "k8s")
    context = {"break_glass_id": break_glass_id, "approval_id": approval_id}
    # The credential must not outlive the break-glass window.
    ttl = min(_JIT_TTL, (ends - b.now).total_seconds() - 60)
    b.grant(root, sre, restart, calls=1, context=context, ttl=ttl)


def _batch(b: _TreeBuilder) -> None:
    """A scheduler hands a nightly export to a worker that rotates credentials for hours."""
    dataset = b.rng.choice(("sales", "inventory", "billing"))
    scheduler = b.agent("batch-scheduler")
    root = b.root(scheduler, f"nightly {dataset} export", ["warehouse:read", "bucket:write"])
    catalog = _Tool(
        "catalog.lookup", f"catalog://{dataset}", "read", ("warehouse:read",), "catalog"
    )
    b.grant(root, scheduler, catalog, calls=1)
    b.approve(root, root.task_id, ["bucket:write"], f"{dataset} export to the partner bucket")
    worker = b.agent("batch-worker")
    task = b.delegate(root, scheduler, worker, ["warehouse:read"], f"export {dataset}")
    _rotating_export(b, task, worker, dataset)
    b.finish(task, worker)
    b.finish(root, scheduler)


def _rotating_export(b: _TreeBuilder, task: CustodyContext, worker: Source, dataset: str) -> None:
    """Hours of work under one-hour credentials, each rotated shortly before it expires;
    the last one is renewed instead, and the export finishes under it."""
    export = _Tool(
        "warehouse.export",
        f"warehouse://{dataset}",
        "read",
        ("warehouse:read",),
        "warehouse",
        CredentialKind.DB_CREDENTIAL,
    )
    previous: _Token | None = None
    for _ in range(b.rng.randint(4, 7)):
        decision_id = b.decide(task, export.resource, export.action, export.scopes)
        token = b.issue(task, worker, export, decision_id, _ROTATION_TTL, parent=previous)
        if previous is not None:
            b.revoke(task, previous, "ROTATED")
        # Calls every few minutes until ~50 minutes in.
        until = token.expires_at - timedelta(minutes=10)
        b.use(task, worker, token)
        while b.now + timedelta(minutes=15) < until:
            b.tick(300, 900)
            b.use(task, worker, token)
        previous = token
    b.renew(task, token, _RENEWAL_TTL)
    # The final stretch, often past the issued expiry: the renewal is what covers it.
    b.tick(600, 1200)
    b.use(task, worker, token)


_SCENARIOS = {
    Scenario.DELEGATION: _delegation,
    Scenario.INCIDENT: _incident,
    Scenario.BATCH: _batch,
}
