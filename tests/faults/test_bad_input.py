"""Bad input written straight onto ``custody.events.v1`` (a plain confluent-kafka producer,
bypassing the SDK) against the real local stack (``custody up``: Tansu, correlate, ingest
on embedded ClickHouse), private ports and a temporary directory.

Every kind of bad input either goes to ``custody.dlq.v1`` with its reason (from the
correlator, ``custody-dlq-stage: correlate``, and from ingest, ``ingest``, for what it
cannot store) or is handled by an alert (the pure correlator's verdict on the same
events); neither worker crashes or restarts, and valid events published after the bad ones
are stored in ClickHouse and correlated (their expected alerts appear).
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest

from producers.context import CustodyContext
from producers.producer import CustodyProducer
from schemas import topics
from schemas.catalog import EVENT, latest
from schemas.codec import SINGLE_OBJECT_MAGIC, body_bytes, event_to_avro
from schemas.models import DelegationEvent, Envelope, TaskDeclaredEvent
from tests.faults.conftest import Recorder, scaled
from tests.support.broker import header_list, read_to_end
from tests.support.events import (
    PLANNER,
    allow,
    complete,
    declare,
    delegate,
    issue,
    revoke,
    use,
)
from tests.support.polling import until
from tests.support.samples import Chain, json_form, one_of_each, stamped
from tests.support.stack import WatchedStack, watched
from tests.support.trees import by_root, run, traffic

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SCOPES = ["a"]


# ---- the stack -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WatchedStack]:
    with watched(tmp_path_factory.mktemp("bad-input")) as running:
        yield running


# ---- building input ----------------------------------------------------------------------


def raw_avro(datum: dict[str, Any], schema: dict[str, Any] | None = None) -> bytes:
    """A datum written with ``schema`` (default: the contract's) behind the contract's
    single-object header, bypassing every check of the SDK and the models."""
    import io

    buffer = io.BytesIO()
    buffer.write(SINGLE_OBJECT_MAGIC + latest(EVENT).fingerprint)
    parsed = fastavro.parse_schema(schema or latest(EVENT).raw)
    fastavro.schemaless_writer(buffer, parsed, datum)
    return buffer.getvalue()


def _datum(**changes: Any) -> dict[str, Any]:
    event = stamped(one_of_each()[0], seq=1, instance="bad/contract")
    datum = event_to_avro(event)
    datum.update(changes)
    return datum


def _wrong_schema(drop: str | None = None, retype: tuple[str, str] | None = None) -> bytes:
    """An event written with a schema that lacks ``drop`` or types ``retype[0]`` as
    ``retype[1]``, behind the real schema's fingerprint."""
    schema = json.loads(json.dumps(latest(EVENT).raw))
    datum = _datum()
    if drop:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != drop]
        datum.pop(drop)
    if retype:
        name, avro_type = retype
        for f in schema["fields"]:
            if f["name"] == name:
                f["type"] = avro_type
        datum[name] = {"string": "not-a-number", "long": 7, "int": 7}[avro_type]
    return raw_avro(datum, schema)


@dataclass
class Kind:
    """One kind of bad input: its records, and what each stage must do with them."""

    name: str
    tried: str
    values: list[bytes | None]
    correlate: set[str]  # the reasons the correlator may give (it dead-letters all)
    ingest: set[str] | None  # the reasons ingest may give; None: ingest stores them

    def record_keys(self) -> list[bytes]:
        return [f"bad/{self.name}/{i}".encode() for i in range(len(self.values))]


UNDECODABLE = {"unknown_wire_format", "unknown_schema", "malformed_avro"}


def bad_kinds(rng: random.Random) -> list[Kind]:
    valid = [Chain("bad/truncated").encode(e) for e in one_of_each()]
    n_random = scaled(100, 1000)
    n_each = scaled(10, 100)
    body = body_bytes(valid[3])
    huge_scopes = [f"scope-{i}" for i in range(5000)]
    return [
        Kind(
            "random",
            f"random bytes x{n_random} (0-2,000 bytes)",
            [rng.randbytes(rng.randrange(0, 2000)) for _ in range(n_random)],
            UNDECODABLE,
            UNDECODABLE,
        ),
        Kind(
            "truncated",
            f"truncated Avro x{n_each} (valid events cut anywhere, header included)",
            [v[: rng.randrange(1, len(v))] for v in (rng.choice(valid) for _ in range(n_each))],
            {"malformed_avro"},
            {"malformed_avro", "unstorable"},
        ),
        Kind(
            "fingerprint",
            f"unknown schema fingerprints x{n_each} (single-object and Confluent headers)",
            [
                SINGLE_OBJECT_MAGIC + rng.randbytes(8) + body
                if i % 2
                else b"\x00" + struct.pack(">I", rng.randrange(2**32)) + body
                for i in range(n_each)
            ],
            {"unknown_schema"},
            {"unknown_schema"},
        ),
        Kind(
            "json",
            "the JSON form of one valid event of each type",
            [json.dumps(json_form(e), default=str).encode() for e in one_of_each()],
            {"unknown_wire_format"},
            {"unknown_wire_format"},
        ),
        Kind(
            "empty",
            "a null value (tombstone) and an empty value",
            [None, b""],
            {"unknown_wire_format"},
            {"unknown_wire_format"},
        ),
        Kind(
            "oversized",
            "an oversized record: a 900 KB purpose (well-formed Avro)",
            [
                raw_avro(
                    _datum(
                        body_task_declared={
                            "purpose": "p" * 900_000,
                            "requested_scopes": [],
                            "deadline": None,
                        }
                    )
                )
            ],
            {"contract_violation"},
            None,  # well-formed Avro: ingest stores it, checking values is the correlator's job
        ),
        Kind(
            "wrong_schema",
            "missing or wrong-typed fields (written with a schema lacking tenant / depth, "
            "or with depth a string, seq an int) behind the contract's fingerprint",
            [
                _wrong_schema(drop="tenant"),
                _wrong_schema(drop="depth"),
                _wrong_schema(retype=("depth", "string")),
                _wrong_schema(retype=("event_time", "string")),
            ],
            {"malformed_avro", "contract_violation"},
            None,
        ),
        Kind(
            "contract",
            "well-formed Avro breaking the contract: event_id not a UUID, a root with a "
            "parent, no body, two bodies, a body of another type, expires before issued, "
            "an empty tenant, seq 0",
            [
                raw_avro(_datum(event_id="not-a-uuid")),
                raw_avro(_datum(parent_task_id="someone")),
                raw_avro(_datum(body_task_declared=None)),
                raw_avro(_datum(body_task_completed={"outcome": "FAILED", "detail": None})),
                raw_avro(_datum(event_type="ACCESS")),
                raw_avro(
                    event_to_avro(stamped(one_of_each()[2]))
                    | {
                        "body_credential_issued": event_to_avro(stamped(one_of_each()[2]))[
                            "body_credential_issued"
                        ]
                        | {"expires_at": datetime(2020, 1, 1, tzinfo=UTC)}
                    }
                ),
                raw_avro(_datum(tenant="")),
                raw_avro(_datum(seq=0)),
            ],
            {"contract_violation"},
            None,
        ),
        Kind(
            "huge_scopes",
            "huge scope lists: 5,000 scopes in a declaration (the contract allows 4,096)",
            [
                raw_avro(
                    _datum(
                        body_task_declared={
                            "purpose": "p",
                            "requested_scopes": huge_scopes,
                            "deadline": None,
                        }
                    )
                )
            ],
            {"contract_violation"},
            None,
        ),
    ]


def publish(bad: WatchedStack, stream: list[Envelope], instance: str) -> None:
    """Publish through the SDK, one producer instance per custody tree.

    This traffic lies hours behind the trees other tests put on the same partitions (a
    backfill). One producer instance spanning several trees, hence several partitions,
    would have its chain read unevenly; one instance per tree keeps each chain on one
    partition, read in order, so this suite judges bad input alone. The backfill chain
    rule (docs/operations.md, "Trees, backfills and chains") has its own test in
    tests/faults/test_backfill.py.
    """
    for root, events_of_tree in by_root(stream).items():
        with CustodyProducer(bad.stack.settings(), producer_instance=f"{instance}/{root}") as sdk:
            for event in events_of_tree:
                sdk.publish(event)


def settle_alerts(bad: WatchedStack, prefix: str, expected: set[str], timeout: float) -> set[str]:
    """Wait for every expected alert of the trees under ``prefix``, then for the window in
    which unexpected ones would appear; returns what is stored."""
    until(lambda: bad.alert_ids(prefix) >= expected, timeout, f"alerts of {prefix}")
    time.sleep(bad.grace + bad.lateness + 3)
    return bad.alert_ids(prefix)


def dead_letters(bad: WatchedStack) -> dict[bytes, dict[str, list[str]]]:
    """Key -> stage -> reasons, of every record on the DLQ."""
    found: dict[bytes, dict[str, list[str]]] = {}
    for message in read_to_end(bad.stack.settings(), topics.DLQ):
        if (message.value() or b"").startswith(b"end-marker-"):
            continue  # an earlier read's marker (see read_to_end)
        headers = {name: value.decode() for name, value in header_list(message)}
        stage = headers["custody-dlq-stage"]
        found.setdefault(message.key() or b"", {}).setdefault(stage, []).append(
            headers["custody-dlq-reason"]
        )
        assert headers["custody-source-topic"] in (topics.EVENTS, topics.STATE, topics.ALERTS)
        assert headers["custody-dlq-detail"]
    return found


# ---- the tests ---------------------------------------------------------------------------


def test_undecodable_and_invalid_records_are_dead_lettered_and_valid_ones_after_them_processed(
    bad: WatchedStack, record_fault: Recorder
) -> None:
    rng = random.Random(6)
    kinds = bad_kinds(rng)
    producer = bad.raw()
    for kind in kinds:
        for key, value in zip(kind.record_keys(), kind.values, strict=True):
            producer.produce(topics.EVENTS, value=value, key=key)
    assert producer.flush(60) == 0
    stream, expected = traffic(scaled(8, 24), bad.config, "after-bad-")
    publish(bad, stream, "bad-input/after")

    total = sum(len(k.values) for k in kinds)

    def all_dead_lettered_by_the_correlator() -> bool:
        letters = dead_letters(bad)
        return (
            sum(1 for k in kinds for key in k.record_keys() if "correlate" in letters.get(key, {}))
            >= total
        )

    until(all_dead_lettered_by_the_correlator, 120, "every bad record on the DLQ")
    until(lambda: bad.stored_events("after-bad-") == len(stream), 90, "valid events stored")
    alerts = settle_alerts(bad, "after-bad-", expected, 90)
    letters = dead_letters(bad)
    survived, health = bad.survived()

    failures = []
    for kind in kinds:
        per_key = [letters.get(key, {}) for key in kind.record_keys()]
        by_correlate = Counter(r for stages in per_key for r in stages.get("correlate", []))
        by_ingest = Counter(r for stages in per_key for r in stages.get("ingest", []))
        correlate_ok = (
            all(len(s.get("correlate", [])) == 1 for s in per_key)
            and set(by_correlate) <= kind.correlate
        )
        if kind.ingest is None:
            ingest_ok = set(by_ingest) <= UNDECODABLE | {"unstorable", "contract_violation"}
        else:
            ingest_ok = (
                all(len(s.get("ingest", [])) == 1 for s in per_key)
                and set(by_ingest) <= kind.ingest
            )
        ok = correlate_ok and ingest_ok and survived and alerts == expected
        record_fault(
            "bad input",
            f"{kind.tried} on custody.events.v1",
            ok,
            records=len(kind.values),
            dead_lettered_by_correlate=sum(by_correlate.values()),
            correlate_reasons=dict(by_correlate),
            dead_lettered_by_ingest=sum(by_ingest.values()),
            ingest_reasons=dict(by_ingest),
            valid_after_stored=f"{bad.stored_events('after-bad-')}/{len(stream)}",
            valid_after_alerts=f"{len(alerts & expected)}/{len(expected)} expected, "
            f"{len(alerts - expected)} unexpected",
            **health,
        )
        if not ok:
            failures.append((kind.name, dict(by_correlate), dict(by_ingest)))
    assert not failures, failures
    assert alerts == expected
    assert survived, health


def _declared(ctx: CustodyContext, when: datetime) -> TaskDeclaredEvent:
    return declare(ctx, when, scopes=SCOPES)


def _delegated(
    ctx: CustodyContext,
    child: CustodyContext,
    when: datetime,
    delegator: str,
    delegatee: str,
    scopes: list[str] = SCOPES,
) -> DelegationEvent:
    return delegate(
        ctx, child, when, delegatee=delegatee, decision_id="d", delegator=delegator, scopes=scopes
    )


def _chain_tree(prefix: str, levels: int, start: datetime) -> list[Envelope]:
    """A delegation chain ``levels`` deep: each task declares and delegates to the next."""
    root = CustodyContext.new_root(f"{prefix}root")
    out: list[Envelope] = [_declared(root, start)]
    ctx = root
    for level in range(levels):
        child = ctx.child(f"{prefix}level-{level + 1}")
        when = start + timedelta(milliseconds=10 * level + 1)
        agent, next_agent = f"spiffe://acme/agent-{level}", f"spiffe://acme/agent-{level + 1}"
        out.append(_delegated(ctx, child, when, agent, next_agent))
        out.append(_declared(child, when + timedelta(milliseconds=5)))
        ctx = child
    return out


def _cycle_tree(prefix: str, start: datetime) -> list[Envelope]:
    """root -> a -> b -> root (the root named as a delegation's child), and b -> b."""
    root = CustodyContext.new_root(f"{prefix}root")
    a = root.child(f"{prefix}a")
    b = a.child(f"{prefix}b")
    out: list[Envelope] = [_declared(root, start)]
    # (delegating task, child it names): the SDK derives children, so the last two are
    # made for a fresh child and then pointed back at the root and at b itself.
    links = [(root, a, a), (a, b, b), (b, b.child("x"), root), (b, b.child("y"), b)]
    for i, (src, child, named) in enumerate(links):
        when = start + timedelta(seconds=1 + i)
        delegation = _delegated(src, child, when, f"w-{src.task_id}", f"w-{named.task_id}")
        body = delegation.body.model_copy(update={"child_task_id": named.task_id})
        out.append(delegation.model_copy(update={"body": body}))
    out += [_declared(a, start + timedelta(seconds=2)), _declared(b, start + timedelta(seconds=3))]
    return out


def _separator_tree(prefix: str, start: datetime) -> list[Envelope]:
    """Ids holding the correlator's key separator (\\x1f): an access with no decision."""
    root = CustodyContext.new_root(f"{prefix}root")
    access = use(
        root,
        "tok\x1fsep",
        start + timedelta(seconds=1),
        source=PLANNER,
        scopes=SCOPES,
        resource="r",
        tool="t",
        decision_id=None,
    )
    return [_declared(root, start), access]


def _wide_tree(prefix: str, start: datetime) -> list[Envelope]:
    """A delegation of 4,096 long scopes (the contract's limit) the delegator did not hold."""
    root = CustodyContext.new_root(f"{prefix}root")
    child = root.child(f"{prefix}child")
    scopes = [f"scope-{i:05d}-" + "s" * 100 for i in range(4096)]
    return [
        _declared(root, start),
        _delegated(root, child, start + timedelta(seconds=1), "w-root", "w-child", scopes),
        _declared(child, start + timedelta(seconds=2)),
    ]


def test_valid_but_adversarial_events_are_handled_by_alerts(
    bad: WatchedStack, record_fault: Recorder
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    levels = scaled(1000, 1000)
    trees = {
        "chain": (
            f"a 1,000-level delegation chain ({2 * levels + 1} events, one tree)",
            _chain_tree("adv-chain-", levels, start),
        ),
        "cycle": (
            "delegation cycles (root -> a -> b -> root, and b -> b)",
            _cycle_tree("adv-cycle-", start),
        ),
        "separator": (
            "ids holding the correlator's key separator (\\x1f) in a token id",
            _separator_tree("adv-sep-", start),
        ),
        "wide": (
            "a delegation granting 4,096 scopes of 110 characters (at the contract's limit)",
            _wide_tree("adv-wide-", start),
        ),
    }
    producer = bad.raw()
    sent: dict[str, int] = {}
    for name, (_, stream) in trees.items():
        chain = Chain(f"bad-input/{name}")
        for event in stream:
            producer.produce(
                topics.EVENTS, value=chain.encode(event), key=event.root_task_id.encode()
            )
        sent[name] = len(stream)
    # Duplicate event ids: a tree published, then every record of it again, twice.
    dup_tree, dup_expected = traffic(4, bad.config, "adv-dup-")
    dup_records: list[tuple[bytes, bytes]] = []
    for root, tree in by_root(dup_tree).items():
        chain = Chain(f"bad-input/dup/{root}")
        dup_records += [(root.encode(), chain.encode(e)) for e in tree]
    for _ in range(3):
        for key, value in dup_records:
            producer.produce(topics.EVENTS, value=value, key=key)
    assert producer.flush(60) == 0
    stream, expected_after = traffic(scaled(4, 12), bad.config, "adv-after-")
    publish(bad, stream, "bad-input/adv-after")

    expected = {name: run(s, bad.config).ids() for name, (_, s) in trees.items()}
    prefixes = {
        "chain": "adv-chain-",
        "cycle": "adv-cycle-",
        "separator": "adv-sep-",
        "wide": "adv-wide-",
    }

    def arrived(prefix: str, name: str) -> bool:
        return bad.stored_events(prefix) == sent[name] and bad.alert_ids(prefix) >= expected[name]

    for name, prefix in prefixes.items():
        until(
            functools.partial(arrived, prefix, name),
            120,
            f"{name}: events stored and expected alerts",
        )
    until(lambda: bad.stored_events("adv-dup-") == len(dup_tree), 60, "duplicates stored")
    after_alerts = settle_alerts(bad, "adv-after-", expected_after, 90)
    survived, health = bad.survived()
    letters = dead_letters(bad)
    adv_letters = sum(1 for key in letters if key.startswith(b"adv-"))

    failures = []
    for name, (tried, _) in trees.items():
        stored_alerts = bad.alert_ids(prefixes[name])
        types = bad.sql(
            "SELECT alert_type, count() AS n FROM alerts WHERE startsWith(root_task_id, {p:String})"
            " GROUP BY alert_type",
            p=prefixes[name],
        )
        measured: dict[str, Any] = {
            "events": sent[name],
            "stored": bad.stored_events(prefixes[name]),
            "alerts": {str(r["alert_type"]): int(r["n"]) for r in types},
            "alerts_as_the_pure_correlator": stored_alerts == expected[name],
        }
        if name == "chain":
            [row] = bad.sql(
                "SELECT max(depth) AS deepest, uniqExact(task_id) AS tasks FROM events"
                " WHERE startsWith(root_task_id, {p:String})",
                p=prefixes[name],
            )
            [state] = bad.sql(
                "SELECT count() AS tasks FROM tasks WHERE startsWith(root_task_id, {p:String})",
                p=prefixes[name],
            )
            measured |= {"deepest": row["deepest"], "task_states_stored": state["tasks"]}
        ok = (
            survived
            and stored_alerts == expected[name]
            and measured["stored"] == sent[name]
            and after_alerts == expected_after
            and adv_letters == 0
        )
        record_fault("bad input", f"{tried} on custody.events.v1", ok, **measured, **health)
        if not ok:
            failures.append((name, measured))

    dup_alerts = bad.alert_ids("adv-dup-")
    rows = bad.sql(
        "SELECT count() AS n, uniqExact(event_id) AS d FROM events"
        " WHERE startsWith(root_task_id, {p:String})",
        p="adv-dup-",
    )
    dup_ok = survived and dup_alerts == dup_expected and rows[0]["n"] == rows[0]["d"]
    record_fault(
        "bad input",
        f"duplicate event ids: {len(dup_records)} records of 4 trees sent 3 times on "
        "custody.events.v1",
        dup_ok,
        records=3 * len(dup_records),
        stored_rows_final=rows[0]["n"],
        distinct_event_ids=rows[0]["d"],
        alerts=f"{len(dup_alerts)} ({len(dup_expected)} expected, each once)",
        **health,
    )
    assert not failures, failures
    assert dup_ok, (
        rows,
        bad.sql(
            "SELECT alert_id, alert_type, root_task_id, task_id, token_id, detail, event_time,"
            " detected_at, evidence_event_ids FROM alerts"
            " WHERE startsWith(root_task_id, {p:String})",
            p="adv-dup-",
        ),
        sorted(dup_expected),
    )
    assert after_alerts == expected_after
    assert adv_letters == 0


def test_far_future_timestamps_do_not_fire_other_trees_deadlines_early(
    bad: WatchedStack, record_fault: Recorder
) -> None:
    now = datetime.now(UTC)
    # Two trees at the wall clock: each task completes holding a live token. "late" is
    # revoked two seconds later (within the grace period: no alert); "leak" never is.
    producer = bad.raw()
    chain = Chain("bad-input/future")
    trees = {}
    for name in ("late", "leak"):
        root = CustodyContext.new_root(f"future-{name}-root")
        trees[name] = root
        token = f"future-{name}-tok"
        for event in [
            _declared(root, now),
            allow(root, "d", now, source=PLANNER, scopes=SCOPES, resource="r"),
            issue(
                root,
                token,
                now,
                subject=PLANNER.actor.workload_id,
                scopes=SCOPES,
                audience="x",
                expires=now + timedelta(hours=1),
                decision_id="d",
            ),
            complete(root, now),
        ]:
            producer.produce(
                topics.EVENTS, value=chain.encode(event), key=root.root_task_id.encode()
            )
    # Then, on every partition, events from years 2200 and 9999.
    partitions = producer.list_topics(topics.EVENTS, timeout=10).topics[topics.EVENTS].partitions
    far = [datetime(2200, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]
    future_events = 0
    for partition in partitions:
        for when in far:
            root = CustodyContext.new_root(f"future-far-{when.year}-{partition}")
            event = declare(root, when, purpose="clock", scopes=[])
            producer.produce(
                topics.EVENTS,
                value=chain.encode(event),
                key=root.root_task_id.encode(),
                partition=partition,
            )
            future_events += 1
    assert producer.flush(30) == 0
    time.sleep(1.5)  # well within the grace period of the trees at the wall clock
    revocation = revoke(trees["late"], "future-late-tok", now + timedelta(seconds=2))
    producer.produce(
        topics.EVENTS, value=chain.encode(revocation), key=trees["late"].root_task_id.encode()
    )
    assert producer.flush(30) == 0

    until(lambda: bool(bad.alert_ids("future-leak-")), 60, "the leaked token's alert")
    time.sleep(bad.grace + bad.lateness + 2)
    leak = bad.sql(
        "SELECT alert_type, event_time, detected_at FROM alerts"
        " WHERE startsWith(root_task_id, {p:String})",
        p="future-leak-",
    )
    late = bad.alert_ids("future-late-")
    far_alerts = bad.alert_ids("future-far-")
    stored_far = bad.sql(
        "SELECT toString(event_time) AS t FROM events WHERE startsWith(root_task_id, 'future-far-')"
    )
    letters = dead_letters(bad)
    far_letters: dict[str, list[str]] = {}
    for key, stages in letters.items():
        if key.startswith(b"future-far-"):
            for stage, reasons in stages.items():
                far_letters.setdefault(stage, []).extend(reasons)
    # Each far event is stored or dead-lettered by ingest (ClickHouse keeps times before
    # 2100: migration 0005), never counted stored and lost.
    lost = future_events - len(stored_far) - len(far_letters.get("ingest", []))
    survived, health = bad.survived()

    def parse(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T")).replace(
            tzinfo=UTC
        )

    [alert] = [row for row in leak if row["alert_type"] == "UNREVOKED_TOKEN"]
    waited = (parse(str(alert["detected_at"])) - parse(str(alert["event_time"]))).total_seconds()
    ok = (
        survived
        and not late
        and alert["alert_type"] == "UNREVOKED_TOKEN"
        and waited >= bad.grace - 0.5
        and lost == 0
    )
    record_fault(
        "bad input",
        f"timestamps far in the future ({future_events} events of years 2200 and 9999, on every "
        "partition) on custody.events.v1",
        ok,
        false_alerts_in_other_trees=len(late),
        leak_tree_alerts=sorted(str(row["alert_type"]) for row in leak),
        true_alert_detected_after_s=round(waited, 1),
        grace_s=bad.grace,
        alerts_in_the_future_trees=len(far_alerts),
        stored_far_events=f"{len(stored_far)}/{future_events}",
        far_events_lost=lost,
        far_dead_letters={stage: sorted(set(r)) for stage, r in far_letters.items()},
        **health,
    )
    assert not late, "a far-future event made another tree's deadline pass early"
    assert alert["alert_type"] == "UNREVOKED_TOKEN", leak
    assert waited >= bad.grace - 0.5, leak
    assert survived, health
    assert lost == 0, f"{lost} far-future events neither stored nor dead-lettered"


def test_a_record_over_the_clients_limit_is_dead_lettered_by_both_workers(
    tmp_path: Path, record_fault: Recorder
) -> None:
    with watched(tmp_path) as bad:
        blob = random.Random(7).randbytes(3 * 1024 * 1024)
        producer = bad.raw()
        producer.produce(topics.EVENTS, value=blob, key=b"bad/huge/0")
        assert producer.flush(30) == 0
        stream, _ = traffic(4, bad.config, "after-huge-")
        publish(bad, stream, "bad-input/after-huge")
        stages: dict[str, list[str]] = {}

        def both_dead_lettered() -> bool:
            stages.clear()
            stages.update(dead_letters(bad).get(b"bad/huge/0", {}))
            return {"correlate", "ingest"} <= set(stages) or not all(
                bad.survived()[1]["healthy"].values()
            )

        until(both_dead_lettered, 60, "the 3 MB record dead-lettered")
        stored = 0
        with contextlib.suppress(OSError):
            until(lambda: bad.stored_events("after-huge-") == len(stream), 30, "stored")
            stored = bad.stored_events("after-huge-")
        survived, health = bad.survived()
        record_fault(
            "bad input",
            "a 3 MB record (over the Kafka clients' 1 MB default; Tansu accepts it) on "
            "custody.events.v1",
            survived and {"correlate", "ingest"} <= set(stages),
            dead_letters=stages,
            valid_after_stored=f"{stored}/{len(stream)}",
            **health,
        )
        assert {"correlate", "ingest"} <= set(stages), stages
        assert survived, health
