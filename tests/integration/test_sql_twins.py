"""The SQL twins of the streaming alerts (``dashboards/queries/*.sql``) agree with the
correlator on the same data.

Many custody trees (each misbehaviour of :mod:`tests.support.trees` alone and in
combination, clean trees, and trees built here at the edges of each rule: a revocation or
expiry exactly at a deadline and a microsecond after it, ties broken by event id, a later
or tied second issuance of a token, facts that belong to another tree, replayed events, a
shuffled stream) run through the pure correlator. Their events, state changes and alerts are
stored in chdb through the sink, as ingest stores them, partly twice (a replayed batch, with
merges stopped so the duplicates stay visible). Each saved query, read from its file and run
with the correlator's grace period, must return exactly the streaming alerts of its types:
same alert id, type, task, token, workload, event time and evidence. No broker.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import pytest

from processors.serving.reader import BackendReader
from processors.storage.backend import ChdbBackend, Row, iso
from processors.storage.migrations import migrate
from processors.storage.sink import BatchWriter, Record
from processors.storage.target import ChdbTarget
from producers.context import CustodyContext
from producers.events import Source
from schemas import catalog, topics
from schemas.codec import AvroCodec, event_to_avro
from schemas.models import (
    Alert,
    AlertType,
    AuthzDecisionEvent,
    CredentialIssuedEvent,
    CredentialRevokedEvent,
    Envelope,
    StateChange,
    TaskCompletedEvent,
    TaskDeclaredEvent,
)
from tests.support import REPO
from tests.support.events import CODER, PLANNER, RESEARCHER, allow, issue, renew, revoke, use
from tests.support.samples import as_event
from tests.support.trees import CONFIG, GRACE, MISCHIEF, Tree, mischievous, run

pytestmark = pytest.mark.integration

QUERIES = REPO / "dashboards" / "queries"
CODEC = AvroCodec()
US = timedelta(microseconds=1)
FAR = datetime(2030, 1, 1, tzinfo=UTC)  # past every deadline of the dataset
SPACING = 500.0  # seconds between two trees' start times

# Each twin and the streaming alert types it reproduces.
TWINS: dict[str, frozenset[AlertType]] = {
    "unrevoked_tokens.sql": frozenset({AlertType.UNREVOKED_TOKEN}),
    "orphaned_tokens.sql": frozenset({AlertType.ORPHANED_TOKEN}),
    "misused_tokens.sql": frozenset(
        {
            AlertType.TOKEN_USED_AFTER_REVOCATION,
            AlertType.TOKEN_USED_AFTER_EXPIRY,
            AlertType.SHARED_CREDENTIAL,
            AlertType.SCOPE_ESCALATION,
        }
    ),
}
# Rules decided at a deadline (event time + grace), i.e. by the watermark.
DEADLINE_RULES = frozenset({AlertType.UNREVOKED_TOKEN, AlertType.ORPHANED_TOKEN})

# (alert_id, alert_type, task_id, token_id, workload_id, event_time, evidence)
AlertKey = tuple[str, str, str | None, str | None, str | None, str, tuple[str, ...]]
E = TypeVar("E", bound=Envelope)


# ---- building the trees --------------------------------------------------------------


def moved(event: E, when: datetime) -> E:
    """``event`` at another event time (same event id)."""
    return event.model_copy(update={"event_time": when})


def with_body(event: E, **fields: Any) -> E:
    """``event`` with some body fields changed (same event id)."""
    body = as_event(event).body
    return event.model_copy(update={"body": body.model_copy(update=fields)})


def one(stream: list[Envelope], kind: type[E], where: Callable[[E], bool]) -> E:
    found = [e for e in stream if isinstance(e, kind) and where(e)]
    assert len(found) == 1, f"{len(found)} {kind.__name__} events match"
    return found[0]


def swap(stream: list[Envelope], old: Envelope, new: Envelope | None) -> list[Envelope]:
    """``stream`` with ``old`` replaced by ``new`` in place (dropped when None)."""
    if new is None:
        return [e for e in stream if e is not old]
    return [new if e is old else e for e in stream]


def issuance(stream: list[Envelope], token: str) -> CredentialIssuedEvent:
    return one(stream, CredentialIssuedEvent, lambda e: e.body.token_id == token)


def revocation(stream: list[Envelope], token: str) -> CredentialRevokedEvent:
    return one(stream, CredentialRevokedEvent, lambda e: e.body.token_id == token)


def decision(stream: list[Envelope], decision_id: str) -> AuthzDecisionEvent:
    return one(stream, AuthzDecisionEvent, lambda e: e.body.decision_id == decision_id)


def declaration(stream: list[Envelope], task_id: str) -> TaskDeclaredEvent:
    return one(stream, TaskDeclaredEvent, lambda e: e.task_id == task_id)


def unrevoked_edges(name: str, offset: float) -> list[Envelope]:
    """Deadlines are inclusive: revoked or expired exactly at completion + grace is in
    time, a microsecond later is not. The planner's task completes at 32, the
    researcher's at 31, the coder's at 30."""
    tree = Tree(name, offset)
    tok = name + "tok-"
    for suffix in ("exp-at", "exp-after"):
        tree.grant(tree.root, PLANNER, tok + suffix, ["crm:read"], start=5)
    stream = tree.events
    root_deadline = tree.at(32 + GRACE)
    for token, expires in (
        (tok + "exp-at", root_deadline),
        (tok + "exp-after", root_deadline + US),
    ):
        stream = swap(stream, revocation(stream, token), None)
        stream = swap(
            stream, issuance(stream, token), with_body(issuance(stream, token), expires_at=expires)
        )
    code, research = revocation(stream, tok + "code"), revocation(stream, tok + "research")
    stream = swap(stream, code, moved(code, tree.at(30 + GRACE)))
    return swap(stream, research, moved(research, tree.at(31 + GRACE) + US))


def issued_after_completion(name: str, offset: float) -> list[Envelope]:
    """A token issued (and revoked) after its task completed and the grace period ended;
    a task that never completes leaves its unrevoked token alone."""
    tree = Tree(name, offset)
    tree.grant(tree.research, RESEARCHER, name + "tok-late", ["db:read"], start=31 + GRACE + 10)
    stream = tree.without(
        lambda e: isinstance(e, TaskCompletedEvent) and e.task_id == name + "code"
    )
    return swap(stream, revocation(stream, name + "tok-code"), None)


def undeclared_task(name: str, offset: float) -> list[Envelope]:
    """The coder's task is never declared."""
    stream = Tree(name, offset).events
    return swap(stream, declaration(stream, name + "code"), None)


def denied_and_missing_decisions(name: str, offset: float) -> list[Envelope]:
    """The coder's token names a DENY; the researcher's names a decision never made."""
    stream = Tree(name, offset).events
    denied = decision(stream, f"dec-{name}tok-code")
    stream = swap(stream, denied, with_body(denied, decision="DENY"))
    return swap(stream, decision(stream, f"dec-{name}tok-research"), None)


def facts_at_the_deadline(name: str, offset: float) -> list[Envelope]:
    """Declarations and decisions exactly at issuance + grace are in time, a microsecond
    later are not. Tokens are issued at 2 (root), 13 (research), 23 (code), 41 (a second
    one in the coder's task)."""
    tree = Tree(name, offset)
    tree.grant(tree.code, CODER, name + "tok-second", ["db:read"], start=40)
    stream, at = tree.events, tree.at
    moves = [
        (decision(stream, f"dec-{name}tok-root"), at(2 + GRACE)),
        (declaration(stream, name + "research"), at(13 + GRACE) + US),
        (declaration(stream, name + "code"), at(23 + GRACE)),
        (decision(stream, f"dec-{name}tok-second"), at(41 + GRACE) + US),
    ]
    for event, when in moves:
        stream = swap(stream, event, moved(event, when))
    return stream


def reissued_elsewhere(name: str, offset: float) -> list[Envelope]:
    """The coder's token issued again, later, in the researcher's task: its task stays the
    coder's, whose deadline (30 + grace) its revocation misses; the researcher's (31 +
    grace) it would have met."""
    tree = Tree(name, offset)
    stream, at = tree.events, tree.at
    first = issuance(stream, name + "tok-code")
    again = issue(
        tree.research,
        first.body.token_id,
        at(23.5),
        subject=first.body.token_subject,
        scopes=first.body.scopes,
        expires=first.body.expires_at,
        decision_id=first.body.decision_id,
    )
    stream.insert(stream.index(first) + 1, again)
    late = revocation(stream, name + "tok-code")
    return swap(stream, late, moved(late, at(30 + GRACE + 0.5)))


def earliest_decision_wins(name: str, offset: float) -> list[Envelope]:
    """Only a decision id's earliest decision counts: a DENY before the coder's ALLOW
    orphans its token; a DENY after the planner's ALLOW does not. The researcher's
    decision is made in the planner's task: any task of the tree may hold it."""
    tree = Tree(name, offset)
    stream, at = tree.events, tree.at
    for decision_id, when in ((f"dec-{name}tok-code", 21.5), (f"dec-{name}tok-root", 2.5)):
        allowed = decision(stream, decision_id)
        deny = with_body(allowed, decision="DENY")
        deny = deny.model_copy(update={"event_id": str(uuid.uuid4())})
        stream.insert(stream.index(allowed), moved(deny, at(when)))
    research = decision(stream, f"dec-{name}tok-research")
    elsewhere = allow_in(tree.root, research)
    return swap(stream, research, elsewhere)


def allow_in(task: CustodyContext, decision: AuthzDecisionEvent) -> Envelope:
    """An ALLOW with ``decision``'s id and time, decided in ``task``."""
    return allow(task, decision.body.decision_id, decision.event_time)


def foreign_facts(name: str, offset: float) -> list[list[Envelope]]:
    """Two trees at the same times: the second holds the ALLOW decision the first's coder
    token names and an early revocation of the first's coder token. Neither counts in the
    first tree, which is judged alone."""
    first, second = Tree(name + "a-", offset), Tree(name + "b-", offset)
    stream = first.events
    allowed = decision(stream, f"dec-{name}a-tok-code")
    stream = swap(stream, allowed, None)
    elsewhere = allow_in(second.code, allowed)
    other = [
        *second.events,
        elsewhere,
        revoke(second.code, f"{name}a-tok-code", second.at(20), reason="MANUAL"),
    ]
    return [stream, other]


def use_edges(name: str, offset: float) -> list[Envelope]:
    """Uses exactly at the revocation or the expiry are not after them; a microsecond
    later they are. The coder's token is revoked at 25; a short token expires at 26."""
    tree = Tree(name, offset)
    tok, at = name + "tok-", tree.at
    tree.grant(tree.code, CODER, tok + "short", ["db:read"], start=23, ttl=2)
    stream = swap(tree.events, revocation(tree.events, tok + "short"), None)
    return [
        *stream,
        use(tree.code, tok + "code", at(25)),
        use(tree.code, tok + "code", at(25) + US),
        use(tree.code, tok + "short", at(26)),
        use(tree.code, tok + "short", at(26) + US),
    ]


def instances(name: str, offset: float) -> list[Envelope]:
    """A token issued to an instance id is used by that instance (under two workload
    ids: not shared) and by another one (shared); the coder's token is used by another
    instance of its own workload (not shared)."""
    tree = Tree(name, offset)
    tok, at = name + "tok-", tree.at
    tree.grant(tree.code, CODER, tok + "inst", ["db:read"], start=23)
    stream = tree.events
    issued = issuance(stream, tok + "inst")
    stream = swap(stream, issued, with_body(issued, token_subject=CODER.actor.instance_id))
    other_workload = Source.of("acme", "runtime", "spiffe://acme/other", "AGENT", "coder-1")
    other_instance = Source.of("acme", "runtime", CODER.actor.workload_id, "AGENT", "coder-2")
    return [
        *stream,
        use(tree.code, tok + "inst", at(24.1)),
        use(tree.code, tok + "inst", at(24.2), source=other_workload),
        use(tree.code, tok + "inst", at(24.3), source=RESEARCHER),
        use(tree.code, tok + "code", at(24.4), source=other_instance),
    ]


def scopes(name: str, offset: float) -> list[Envelope]:
    """Data outside the token's scopes is an escalation; none, or a subset, is not."""
    tree = Tree(name, offset)
    tok, at = name + "tok-code", tree.at
    return [
        *tree.events,
        use(tree.code, tok, at(24.1), scopes=["db:read", "db:write"]),
        use(tree.code, tok, at(24.2), scopes=[]),
        use(tree.code, tok, at(24.3), scopes=["db:read", "db:read"]),
    ]


def revocations(name: str, offset: float) -> list[Envelope]:
    """The earliest revocation counts (a MANUAL one before TASK_ENDED), and of two at the
    same instant the one with the lower event id."""
    tree = Tree(name, offset)
    tok, at = name + "tok-", tree.at
    return [
        *tree.events,
        revoke(tree.code, tok + "code", at(24.5), reason="MANUAL"),
        use(tree.code, tok + "code", at(24.7)),
        revoke(tree.code, tok + "root", at(4), reason="MANUAL"),
        use(tree.code, tok + "root", at(4.5), source=PLANNER, scopes=["crm:read"]),
    ]


def reissued(name: str, offset: float) -> list[Envelope]:
    """Second issuances of a token id: one at the same event time with a lower event id
    replaces the first (to the researcher, another scope, already expired), one later, or
    tied with a higher event id, does not. All come before the token's first use."""
    tree = Tree(name, offset)
    stream = tree.events
    rogue = {
        "token_subject": RESEARCHER.actor.workload_id,
        "scopes": ["db:write"],
        "expires_at": tree.at(23.5),
    }
    for token, shift, event_id in (
        (name + "tok-code", 0.0, "00000000-0000-4000-8000-000000000000"),
        (name + "tok-research", 0.0, "ffffffff-ffff-4fff-bfff-ffffffffffff"),
        (name + "tok-root", 0.5, str(uuid.uuid4())),
    ):
        first = issuance(stream, token)
        second = with_body(first, **rogue).model_copy(
            update={"event_id": event_id, "event_time": first.event_time + timedelta(seconds=shift)}
        )
        stream.insert(stream.index(first) + 1, second)
    return stream


def renewals(name: str, offset: float) -> list[Envelope]:
    """Renewals move a token's expiry later, never earlier. The coder's task completes at
    30; both tokens are issued at 24 for 10 s. ``renewed``, renewed at 30 until 40 (and at
    32 until 40 again, a tie the earlier renewal wins; at 31 until 35, which moves
    nothing), is used at 39 (in time) and a microsecond after 40; ``outlived`` is renewed
    past its task's completion + grace and never revoked."""
    tree = Tree(name, offset)
    tok, at = name + "tok-", tree.at
    for suffix in ("renewed", "outlived"):
        tree.grant(tree.code, CODER, tok + suffix, ["db:read"], start=23, ttl=10)
    stream = tree.events
    for suffix in ("renewed", "outlived"):
        stream = swap(stream, revocation(stream, tok + suffix), None)
    return [
        *stream,
        renew(tree.code, tok + "renewed", at(30), expires=at(40)),
        renew(tree.code, tok + "renewed", at(31), expires=at(35)),
        renew(tree.code, tok + "renewed", at(32), expires=at(40)),
        renew(tree.code, tok + "outlived", at(30), expires=at(30 + GRACE + 5)),
        use(tree.code, tok + "renewed", at(39)),
        use(tree.code, tok + "renewed", at(40) + US),
    ]


def dataset() -> list[list[Envelope]]:
    """Every tree of the test, each with its own names and start time."""
    builders: list[tuple[str, Callable[[str, float], list[Envelope]]]] = [
        ("clean", lambda n, o: Tree(n, o).events),
        *[(m, partial(misbehaving, {m})) for m in MISCHIEF],
        ("all", partial(misbehaving, set(MISCHIEF))),
        ("leak+late", partial(misbehaving, {"leak", "late_use"})),
        ("late+shared", partial(misbehaving, {"late_use", "shared"})),
        ("shared+expired", partial(misbehaving, {"shared", "expired_use"})),
        ("orphan+leak", partial(misbehaving, {"orphan", "leak"})),
        ("widen+bg", partial(misbehaving, {"widen", "break_glass"})),
        ("shuffled", lambda n, o: shuffled(mischievous(set(MISCHIEF), n, o))),
        ("replayed", lambda n, o: 2 * mischievous({"leak", "shared", "expired_use"}, n, o)),
        ("unrevoked-edges", unrevoked_edges),
        ("issued-late", issued_after_completion),
        ("undeclared", undeclared_task),
        ("denied", denied_and_missing_decisions),
        ("deadline-facts", facts_at_the_deadline),
        ("earliest-decision", earliest_decision_wins),
        ("use-edges", use_edges),
        ("instances", instances),
        ("scopes", scopes),
        ("revocations", revocations),
        ("reissued", reissued),
        ("reissued-elsewhere", reissued_elsewhere),
        ("renewals", renewals),
        ("clean2", lambda n, o: Tree(n, o).events),
    ]
    trees = [build(f"t{i:02d}-{label}-", i * SPACING) for i, (label, build) in enumerate(builders)]
    trees += foreign_facts("tforeign-", len(builders) * SPACING)
    return trees


def misbehaving(mischief: set[str], name: str, offset: float) -> list[Envelope]:
    return mischievous(mischief, name, offset)


def shuffled(stream: list[Envelope]) -> list[Envelope]:
    """The same events in another arrival order (none of them compete with each other)."""
    copy = list(stream)
    random.Random(7).shuffle(copy)
    return copy


# ---- storing and querying ------------------------------------------------------------


@dataclass
class Stored:
    """The dataset stored in chdb, and what the correlator made of it."""

    backend: ChdbBackend
    trees: list[list[Envelope]]
    alerts: list[Alert]


def encoded_events(trees: list[list[Envelope]]) -> list[bytes]:
    """Each tree's events as its producers would publish them (one chain per tree); a
    repeated event is the same record again."""
    encoded: dict[str, bytes] = {}
    values = []
    for number, stream in enumerate(trees):
        seq = 0
        for event in stream:
            if event.event_id not in encoded:
                seq += 1
                chain = (f"twins/{number}", seq, None)
                encoded[event.event_id] = CODEC.encode(catalog.EVENT, event_to_avro(event, chain))
            values.append(encoded[event.event_id])
    return values


def write(backend: ChdbBackend, topic: str, values: list[bytes], batch: int = 250) -> None:
    """Store ``values`` through the sink in batches, as ingest does; all must be stored."""
    writer = BatchWriter(backend)
    for start in range(0, len(values), batch):
        part = values[start : start + batch]
        result = writer.write(
            [Record(topic, 0, start + i, None, value) for i, value in enumerate(part)]
        )
        assert (result.stored, result.rejected) == (len(part), [])


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    trees = dataset()
    alerts: list[Alert] = []
    changes: list[StateChange] = []
    for stream in trees:
        result = run(stream, CONFIG, until=FAR)
        alerts += result.alerts
        changes += result.changes
    target = ChdbTarget(tmp_path_factory.mktemp("twins") / "chdb")
    backend = ChdbBackend(target)
    try:
        migrate(target, 3650, backend)
        # Replayed records stay separate rows until a merge: the twins must read FINAL.
        backend.execute("SYSTEM STOP MERGES")
        event_values = encoded_events(trees)
        alert_values = [CODEC.encode_alert(alert) for alert in alerts]
        write(backend, topics.EVENTS, event_values)
        write(backend, topics.STATE, [CODEC.encode_state(change) for change in changes])
        write(backend, topics.ALERTS, alert_values)
        write(backend, topics.EVENTS, event_values[: len(event_values) // 2])  # a replay
        write(backend, topics.ALERTS, alert_values[: len(alert_values) // 2])
        yield Stored(backend, trees, alerts)
    finally:
        backend.close()


def param_time(value: datetime) -> str:
    """A DateTime64(6, 'UTC') query parameter."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def twin_sql(name: str) -> str:
    return (QUERIES / name).read_text()


def twin(backend: ChdbBackend, name: str, as_of: datetime) -> list[Row]:
    """The rows of a saved query, run as it is in its file (no FINAL setting added)."""
    return backend.select(twin_sql(name), {"grace_seconds": GRACE, "as_of": param_time(as_of)})


def alert_key(alert: Alert) -> AlertKey:
    return (
        alert.alert_id,
        str(alert.alert_type),
        alert.task_id,
        alert.token_id,
        alert.workload_id,
        iso(alert.event_time),
        tuple(sorted(set(alert.evidence_event_ids))),
    )


def row_key(row: Row) -> AlertKey:
    return (
        row["alert_id"],
        row["alert_type"],
        row["task_id"],
        row["token_id"],
        row["workload_id"],
        row["event_time"],
        tuple(sorted(set(row["evidence_event_ids"]))),
    )


def covered(alert: Alert, types: frozenset[AlertType]) -> bool:
    """Whether a twin of ``types`` reproduces ``alert`` (SCOPE_ESCALATION: the access form,
    which names a token; the delegation form does not)."""
    if alert.alert_type not in types:
        return False
    return alert.alert_type != AlertType.SCOPE_ESCALATION or alert.token_id is not None


def streaming(alerts: list[Alert], types: frozenset[AlertType]) -> set[AlertKey]:
    return {alert_key(a) for a in alerts if covered(a, types)}


# ---- the tests -----------------------------------------------------------------------


def test_replayed_records_are_stored_twice_until_read_with_final(stored: Stored) -> None:
    """The dataset holds duplicate rows (a replayed batch, merges stopped), so a twin that
    forgot FINAL would count them twice."""
    for table in ("events", "alerts"):
        plain = stored.backend.select(f"SELECT count() AS n FROM {table}")[0]["n"]
        final = stored.backend.select(f"SELECT count() AS n FROM {table} FINAL")[0]["n"]
        assert plain > final > 0


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_returns_exactly_the_streaming_alerts(stored: Stored, name: str) -> None:
    """Past every deadline, a twin's rows are the streaming alerts of its types, alert for
    alert (id, type, task, token, workload, event time, evidence), each at least once in
    the dataset; the stored `alerts` table holds the same alerts under the same ids."""
    types = TWINS[name]
    rows = twin(stored.backend, name, FAR)
    found = [row_key(row) for row in rows]
    assert len(found) == len(set(found)), "a twin reports each alert once"
    expected = streaming(stored.alerts, types)
    assert set(found) == expected
    for alert_type in types:
        assert any(key[1] == alert_type for key in expected), f"no {alert_type} in the dataset"
    kept = BackendReader(stored.backend).select(
        "SELECT alert_id, alert_type, task_id, token_id, workload_id, event_time, "
        "evidence_event_ids FROM alerts"
    )
    kept = [
        row
        for row in kept
        if row["alert_type"] in types
        and (row["alert_type"] != AlertType.SCOPE_ESCALATION or row["token_id"] is not None)
    ]
    assert {row_key(row) for row in kept} == expected


@pytest.mark.parametrize(
    ("label", "alert_type", "fired"),
    [
        ("unrevoked-edges", AlertType.UNREVOKED_TOKEN, 2),
        ("deadline-facts", AlertType.ORPHANED_TOKEN, 2),
        ("use-edges", AlertType.TOKEN_USED_AFTER_REVOCATION, 1),
        ("use-edges", AlertType.TOKEN_USED_AFTER_EXPIRY, 1),
        ("instances", AlertType.SHARED_CREDENTIAL, 1),
        ("scopes", AlertType.SCOPE_ESCALATION, 1),
        ("reissued", AlertType.SHARED_CREDENTIAL, 1),
        ("reissued-elsewhere", AlertType.UNREVOKED_TOKEN, 1),
        ("renewals", AlertType.TOKEN_USED_AFTER_EXPIRY, 1),
        ("renewals", AlertType.UNREVOKED_TOKEN, 1),
    ],
)
def test_the_dataset_holds_both_sides_of_each_edge(
    stored: Stored, label: str, alert_type: AlertType, fired: int
) -> None:
    """The edge trees make the correlator fire on the "after" side of each boundary only
    (a microsecond after a deadline, a revocation or an expiry; another instance; data
    outside the scopes; a replacing issuance), so the equality with the twins also checks
    strict against non-strict comparisons and which issuance counts."""
    alerts = [a for a in stored.alerts if a.alert_type == alert_type and in_tree(a, label)]
    assert len(alerts) == fired


def in_tree(alert: Alert, label: str) -> bool:
    return alert.root_task_id.endswith(f"-{label}-root")


def first_alert(stored: Stored, alert_type: AlertType, label: str) -> Alert:
    return next(a for a in stored.alerts if a.alert_type == alert_type and in_tree(a, label))


@pytest.mark.parametrize(
    ("alert_type", "label"),
    [(AlertType.UNREVOKED_TOKEN, "leak+late"), (AlertType.ORPHANED_TOKEN, "denied")],
)
@pytest.mark.parametrize("before", [True, False], ids=["before-deadline", "at-deadline"])
def test_a_condition_is_reported_only_once_its_deadline_is_reached(
    stored: Stored, alert_type: AlertType, label: str, before: bool
) -> None:
    """With as_of a microsecond before a condition's deadline (its event time + grace) the
    twin does not report it yet, and at the deadline it does, as the correlator with that
    watermark. At that as_of every twin agrees with the correlator run up to it: the
    deadline rules exactly, the misuse rules for the accesses up to as_of."""
    alert = first_alert(stored, alert_type, label)
    deadline = alert.event_time + timedelta(seconds=GRACE)
    as_of = deadline - US if before else deadline
    alerts = [a for stream in stored.trees for a in run(stream, CONFIG, until=as_of).alerts]
    for name, types in TWINS.items():
        found = {row_key(row) for row in twin(stored.backend, name, as_of)}
        expected = streaming(alerts, types)
        if not types <= DEADLINE_RULES:
            expected = {key for key in expected if key[5] <= iso(as_of)}
        assert found == expected, name
        if alert_type in types:
            assert (alert_key(alert) in found) is not before
            # Other trees are past their deadlines or not started: the cut is not empty.
            assert found


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_runs_as_custody_query_runs_it(stored: Stored, name: str) -> None:
    """Through the read-only query path (`custody query`, the query API: a subquery with
    final = 1 and readonly = 1) a twin returns the same rows."""
    params = {"grace_seconds": GRACE, "as_of": param_time(FAR)}
    through_api = BackendReader(stored.backend).select(twin_sql(name), params)
    assert sorted(map(row_key, through_api)) == sorted(
        map(row_key, twin(stored.backend, name, FAR))
    )


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_header_says_what_it_computes_and_names_each_parameter(name: str) -> None:
    """Each file opens with a comment naming its alert types, and every query parameter
    it uses is described there, with its type."""
    lines = twin_sql(name).splitlines()
    header = "\n".join(line for line in lines if line.startswith("--"))
    body = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
    assert lines[0].startswith("-- ")
    for alert_type in TWINS[name]:
        assert alert_type in header
    used = set(re.findall(r"\{\w+:[^{}]+\}", body))
    assert used, "a twin takes its grace period or as_of as parameters"
    for parameter in used:
        assert parameter in header, parameter
