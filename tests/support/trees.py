"""Custody trees for correlation tests: a clean three-level tree whose every piece can be
changed, trees with chosen misbehaviours, mixed traffic of them, and a runner that feeds
events to the pure correlator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from processors.correlation.engine import CorrelationConfig, expire, observe, to_micros
from processors.correlation.tree import TreeState
from producers.context import CustodyContext
from producers.events import Source
from schemas.models import (
    Alert,
    CredentialRevokedEvent,
    DelegationEvent,
    Envelope,
    StateChange,
)
from tests.support import events as build
from tests.support.events import ALICE, CODER, PLANNER, RESEARCHER, at

GRACE = 60
CONFIG = CorrelationConfig.of(grace_seconds=GRACE, max_credential_ttl_seconds=3600)
DETECTED = datetime(2026, 11, 30, tzinfo=UTC)

Predicate = Callable[[Envelope], bool]


def revocation_of(token: str) -> Predicate:
    """Whether an event is the revocation of ``token``."""
    return lambda e: isinstance(e, CredentialRevokedEvent) and e.body.token_id == token


def without(stream: Iterable[Envelope], predicate: Predicate) -> list[Envelope]:
    """``stream`` without the events ``predicate`` holds for."""
    return [e for e in stream if not predicate(e)]


def by_root(stream: Iterable[Envelope]) -> dict[str, list[Envelope]]:
    """The events of ``stream`` by root task, each tree's in stream order."""
    found: dict[str, list[Envelope]] = {}
    for event in stream:
        found.setdefault(event.root_task_id, []).append(event)
    return found


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
        # Each level: its task, who runs it, its purpose and requested scopes, its token's
        # scopes and when it is declared; the level above delegates it a second before,
        # with the scopes that level requested.
        levels: list[tuple[str, CustodyContext, Source, str, list[str], list[str], float]] = [
            ("root", self.root, PLANNER, "report", ["crm:read", "db:read"], ["crm:read"], 0),
            ("research", self.research, RESEARCHER, "collect", ["db:read"], ["db:read"], 11),
            ("code", self.code, CODER, "render", ["db:read"], ["db:read"], 21),
        ]
        above: tuple[str, CustodyContext, Source, list[str]] | None = None
        for level, ctx, source, purpose, requested, scopes, start in levels:
            if above is not None:
                parent_level, parent, parent_source, parent_scopes = above
                self.add(
                    build.delegate(
                        parent,
                        ctx,
                        self.at(start - 1),
                        delegatee=source.actor.workload_id,
                        decision_id=f"dec-tok-{parent_level}",
                        source=parent_source,
                        scopes=parent_scopes,
                    )
                )
            self.add(
                build.declare(ctx, self.at(start), source=source, purpose=purpose, scopes=requested)
            )
            self.grant(ctx, source, f"{self.name}tok-{level}", scopes, start=start + 1)
            above = (level, ctx, source, requested)
        for ctx, source, when in (
            (self.code, CODER, 30),
            (self.research, RESEARCHER, 31),
            (self.root, PLANNER, 32),
        ):
            self.add(build.complete(ctx, self.at(when), source=source))

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
        self.add(build.allow(ctx, f"dec-{token}", at(start), scopes=scopes, resource=resource))
        self.add(
            build.issue(
                ctx,
                token,
                at(start + 1),
                subject=source.actor.workload_id,
                scopes=scopes,
                expires=at(start + 1 + ttl),
            )
        )
        self.add(
            build.use(ctx, token, at(start + 2), source=source, scopes=scopes, resource=resource)
        )
        self.add(build.revoke(ctx, token, at(start + 3)))

    def without(self, predicate: Predicate) -> list[Envelope]:
        return without(self.events, predicate)


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
        stream = without(stream, revocation_of(tok + "research"))
    if "late_use" in mischief or "shared" in mischief:
        source = RESEARCHER if "shared" in mischief else CODER
        when = 26 if "late_use" in mischief else 24.5
        stream.append(build.use(tree.code, tok + "code", at(when), source=source))
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
            build.break_glass(
                tree.code, name + "bg", at(21.5), expires=at(23.5), reason="x", standing="y"
            )
        )
    if "self_approval" in mischief:
        stream.append(
            build.approve(
                tree.code,
                name + "appr",
                name + "code",
                at(21.7),
                source=CODER,
                approver=ALICE,
                scopes=[],
                reason="r",
            )
        )
    if "orphan" in mischief:
        stream = [e for e in stream if e.task_id != name + "research"]
    if "expired_use" in mischief:
        stream = without(stream, revocation_of(tok + "short"))
        stream.append(build.use(tree.code, tok + "short", at(27)))
    return stream


def in_turn(index: int) -> set[str]:
    """The misbehaviour of the ``index``-th tree of mixed traffic: each of
    :data:`MISCHIEF` in turn, every fourth tree clean."""
    return set() if index % 4 == 3 else {MISCHIEF[index % len(MISCHIEF)]}


def traffic(
    trees: int, config: CorrelationConfig, prefix: str = "t", offset: float = 0, spacing: float = 40
) -> tuple[list[Envelope], set[str]]:
    """``trees`` trees misbehaving :func:`in_turn`, named ``<prefix><i>-`` and ``spacing``
    seconds of event time apart from ``offset`` on, in event-time order; and the alert
    ids the pure correlator raises on them under ``config``."""
    stream: list[Envelope] = []
    expected: set[str] = set()
    for i in range(trees):
        tree = mischievous(in_turn(i), name=f"{prefix}{i}-", offset=offset + spacing * i)
        expected |= run(tree, config).ids()
        stream += tree
    stream.sort(key=lambda e: (e.event_time, e.event_id))
    return stream, expected
