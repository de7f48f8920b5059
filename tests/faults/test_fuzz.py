"""Fuzzing without services: the decoder and the correlator's state machine.

- Any bytes given to :class:`~schemas.codec.AvroCodec` decode into a contract message or
  raise a :class:`~schemas.codec.DecodeError` with one of the documented reasons; nothing
  else escapes (random bytes, mutated valid events, each wire header with a random body).
- Any sequence of valid but adversarial events (colliding ids, ids holding the key
  separator, one task under two parents, delegation cycles, extreme times, huge scope
  lists, duplicate event ids with other content) folded into one tree by
  :func:`~processors.correlation.engine.observe` and judged by
  :func:`~processors.correlation.engine.expire` at any watermarks never raises, and keeps
  its invariants: each alert fired once, every output encodes in the contract, no passed
  deadline left, the changelog form round-trips, a restart from it changes nothing, a
  replay adds nothing.
- The worker's step (:class:`processors.correlator.step.Correlation`) on mixed good and bad
  records: one dead letter per bad record, never an exception.
- atheris (coverage-guided, libFuzzer) over the decoder for a bounded number of runs, in a
  subprocess, when it is installed.

Bounded: ``scaled(short, full)`` examples; the short version runs in well under a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processors.correlation.alerts import MAX_DETAIL, from_micros
from processors.correlation.engine import CorrelationConfig, Output, expire, observe, to_micros
from processors.correlation.tree import TreeState
from processors.correlation.watermark import Watermark
from processors.correlator.step import Correlation
from producers.settings import Settings
from schemas import topics
from schemas.catalog import EVENT, latest
from schemas.codec import (
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    DecodeError,
    event_from_avro,
)
from schemas.models import Envelope, validate_event
from tests.faults.conftest import ROOT, Recorder, scaled
from tests.support.events import T0
from tests.support.samples import one_of_each, stamped
from tests.support.trees import CONFIG, DETECTED, mischievous, run

# No service: the decoder and the state machine in this process (atheris in a child).
pytestmark = pytest.mark.faults

CODEC = AvroCodec()
REASONS = {"unknown_wire_format", "unknown_schema", "malformed_avro", "contract_violation"}
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

VALID = [CODEC.encode_event(stamped(e, i + 1)) for i, e in enumerate(one_of_each())]
HEADER = SINGLE_OBJECT_MAGIC + latest(EVENT).fingerprint


def _examples(count: int, *slow: HealthCheck) -> settings:
    """``count`` examples, no deadline, no example database (every run starts afresh), and
    the ``slow`` health checks suppressed."""
    return settings(
        max_examples=count, deadline=None, database=None, suppress_health_check=list(slow)
    )


def _run_recorded(
    record_fault: Recorder, tried: str, check: Callable[[], None], **measured: Any
) -> None:
    """Run a hypothesis test, record it (also when it fails), then re-raise."""
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        check()
    except BaseException as exc:
        failure = exc
    # Counters and one-element lists are filled while the test runs.
    measured = {
        k: dict(v) if isinstance(v, Counter) else v[0] if isinstance(v, list) else v
        for k, v in measured.items()
    }
    record_fault(
        "fuzz",
        tried,
        failure is None,
        seconds=round(time.monotonic() - started, 1),
        **measured,
        **({"failure": f"{type(failure).__name__}: {str(failure)[:300]}"} if failure else {}),
    )
    if failure is not None:
        raise failure


# ---- the decoder ---------------------------------------------------------------------------


def _mutated(draw: st.DrawFn) -> bytes:
    """A valid event changed by a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            other = draw(st.sampled_from(VALID))
            data[at:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "header+random", "confluent+random", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "header+random":
        return HEADER + draw(st.binary(max_size=512))
    if kind == "confluent+random":
        return b"\x00" + draw(st.binary(max_size=512))
    return _mutated(draw)


def _decode_error(decode: Callable[[bytes], object], message: bytes) -> DecodeError | None:
    """The :class:`DecodeError` ``decode`` raises on ``message``, None when it decodes (any
    other exception escapes and fails the test)."""
    try:
        decode(message)
    except DecodeError as exc:
        return exc
    return None


def test_any_bytes_decode_or_raise_a_documented_decode_error(record_fault: Recorder) -> None:
    seen: Counter[str] = Counter()
    examples = scaled(1500, 30_000)

    @_examples(examples, HealthCheck.too_slow)
    @given(messages())
    def check(message: bytes) -> None:
        decoders = [CODEC.decode_event, CODEC.decode_alert, CODEC.decode_state, CODEC.decode]
        for number, decode in enumerate(decoders):
            error = _decode_error(decode, message)
            if error is not None:
                assert error.reason in REASONS, error.reason
                assert str(error)  # a reason without a detail helps nobody
            if number == 0:
                seen[error.reason if error is not None else "decoded"] += 1

    _run_recorded(
        record_fault,
        f"decoder: {examples} random, header+random, Confluent+random and mutated messages "
        "through decode / decode_event / decode_alert / decode_state",
        check,
        examples=examples,
        outcomes=seen,
    )
    assert seen["malformed_avro"]
    assert seen["unknown_wire_format"]
    assert seen["unknown_schema"]


def test_a_decoded_event_is_a_valid_contract_event_that_round_trips() -> None:
    # What decode_event accepts is exactly what the contract validates: re-encoded, it
    # decodes to the same event.
    @_examples(scaled(300, 5000))
    @given(messages())
    def check(message: bytes) -> None:
        try:
            event = CODEC.decode_event(message)
        except DecodeError:
            return
        assert CODEC.decode_event(CODEC.encode_event(event)) == event

    check()


# ---- adversarial but valid events ----------------------------------------------------------

# Few ids, so that events collide on them; some hold the separator the engine joins keys
# with, some are at the contract's length limit.
IDS = ["root", "a", "b", "c", "x\x1fy", "\x1f", "a\x1f", "p" * 512, "ü-ß-☃"]
EVENT_IDS = [
    "00000000-0000-0000-0000-000000000001",
    "00000000-0000-0000-0000-000000000002",
    "00000000-0000-0000-0000-000000000003",
]
HUGE_SCOPES = [f"scope-{i:05d}-" + "s" * 100 for i in range(4096)]
ids = st.sampled_from(IDS) | st.text(min_size=1, max_size=6)
scopes = st.one_of(
    st.lists(st.sampled_from(["a", "b", "crm:read", "x\x1fy"]), max_size=4),
    st.just(HUGE_SCOPES),
)
times = st.one_of(
    st.integers(-3600, 3600).map(lambda s: T0 + timedelta(seconds=s)),
    st.sampled_from([EARLIEST, LATEST, LATEST - timedelta(seconds=1), EARLIEST + timedelta(1)]),
    st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
)


def _later(start: datetime, seconds: int) -> datetime:
    return (
        start + timedelta(seconds=seconds)
        if start < LATEST - timedelta(seconds=seconds)
        else LATEST
    )


# A return per event type of the contract: ten, past the limit, read best as they are.
@st.composite
def bodies(draw: st.DrawFn, event_type: str) -> dict[str, Any]:  # noqa: PLR0911
    if event_type == "TASK_DECLARED":
        return {"purpose": draw(st.text(max_size=20)), "requested_scopes": draw(scopes)}
    if event_type == "AUTHZ_DECISION":
        return {
            "decision_id": draw(ids),
            "policy_engine": "opa",
            "policy_id": "p",
            "policy_version": "1",
            "decision": draw(st.sampled_from(["ALLOW", "DENY"])),
            "resource": draw(ids),
            "action": draw(st.sampled_from(["read", "write"])),
            "data_scope": draw(scopes),
            "reasons": [],
            "context": {},
        }
    if event_type == "CREDENTIAL_ISSUED":
        issued = draw(times)
        return {
            "token_id": draw(ids),
            "token_subject": draw(ids),
            "credential_kind": "JWT",
            "audience": "x",
            "scopes": draw(scopes),
            "issued_at": issued,
            "expires_at": _later(issued, draw(st.sampled_from([1, 60, 900, 10**7]))),
            "decision_id": draw(ids),
            "parent_token_id": draw(st.none() | ids),
        }
    if event_type == "ACCESS":
        return {
            "token_id": draw(ids),
            "tool": draw(ids),
            "resource": draw(ids),
            "action": draw(st.sampled_from(["read", "write"])),
            "data_scope": draw(scopes),
            "decision_id": draw(st.none() | ids),
            "outcome": draw(st.sampled_from(["SUCCESS", "FAILURE", "DENIED"])),
        }
    if event_type == "DELEGATION":
        # child_task_id from the same few ids: cycles, self-delegation, the root as a child.
        return {
            "delegator": draw(ids),
            "delegatee": draw(ids),
            "child_task_id": draw(ids),
            "scopes": draw(scopes),
            "decision_id": draw(ids),
        }
    if event_type == "APPROVAL":
        return {
            "approval_id": draw(ids),
            "approver": draw(ids),
            "approves": draw(ids),
            "scopes": draw(scopes),
            "expires_at": draw(st.none() | times),
            "reason": "ok",
        }
    if event_type == "BREAK_GLASS":
        return {
            "break_glass_id": draw(ids),
            "reason": "incident",
            "standing_access_unavailable": "none",
            "approval_id": draw(st.none() | ids),
            "expires_at": draw(times),
        }
    if event_type == "CREDENTIAL_REVOKED":
        return {
            "token_id": draw(ids),
            "reason": draw(st.sampled_from(["TASK_ENDED", "MANUAL", "COMPROMISED"])),
            "revoked_by": draw(ids),
        }
    if event_type == "CREDENTIAL_RENEWED":
        # Any expiry, also one before the issuance's or the renewal's own time.
        return {"token_id": draw(ids), "expires_at": draw(times), "renewed_by": draw(ids)}
    return {"outcome": draw(st.sampled_from(["SUCCEEDED", "FAILED", "CANCELLED"]))}


EVENT_TYPES = [
    "TASK_DECLARED",
    "AUTHZ_DECISION",
    "CREDENTIAL_ISSUED",
    "ACCESS",
    "DELEGATION",
    "APPROVAL",
    "BREAK_GLASS",
    "CREDENTIAL_REVOKED",
    "TASK_COMPLETED",
    "CREDENTIAL_RENEWED",
]


@st.composite
def adversarial_events(draw: st.DrawFn, tenants: list[str] | None = None) -> Envelope:
    event_type = draw(st.sampled_from(EVENT_TYPES))
    depth = draw(st.sampled_from([0, 1, 2, 3, 999, 1000, 2**31 - 1]))
    task_id = "root" if depth == 0 else draw(ids)
    data = {
        "event_id": draw(st.sampled_from(EVENT_IDS) | st.uuids().map(str)),
        "event_type": event_type,
        "event_time": draw(times),
        "tenant": draw(st.sampled_from(tenants or ["acme"])),
        "producer": "fuzz",
        "root_task_id": "root",
        "task_id": task_id,
        "parent_task_id": None if depth == 0 else draw(ids),
        "depth": depth,
        "actor": {
            "workload_id": draw(ids),
            "kind": draw(st.sampled_from(["AGENT", "HUMAN", "BROKER"])),
            "instance_id": draw(ids),
            "on_behalf_of": draw(st.none() | ids),
        },
        "producer_instance": "fuzz/1",
        "seq": draw(st.integers(1, 2**63 - 1)),
        "body": draw(bodies(event_type)),
    }
    try:
        return validate_event(data)
    except ValidationError:
        reject()


FAR = to_micros(LATEST)
BEYOND = FAR + 10**15  # past every deadline, even one scheduled after year 9999
watermarks = st.one_of(
    st.integers(-3600, 3700).map(lambda s: to_micros(T0) + s * 1_000_000),
    st.sampled_from([to_micros(EARLIEST), FAR, FAR - 60_000_000]),
)
steps = st.lists(
    st.one_of(
        adversarial_events().map(lambda e: ("event", e)),
        watermarks.map(lambda w: ("expire", w)),
    ),
    min_size=3,
    max_size=25,
)


def _fold(
    steps: list[tuple[str, Any]], restart: bool, counts: Counter[str] | None = None
) -> tuple[TreeState | None, list[str], list[tuple[str, str, int]]]:
    """Run the steps; with ``restart`` the state is rebuilt from its changelog form after
    each step (a worker restarting between any two events). Checks the invariants that
    hold at every step; returns the state, alert ids and state-change keys/versions."""
    state: TreeState | None = None
    alert_ids: list[str] = []
    changes: list[tuple[str, str, int]] = []
    for kind, value in steps:
        out: Output
        if kind == "event":
            state, out = observe(state, value, CONFIG, DETECTED)
        elif state is not None:
            state, out = expire(state, value, CONFIG, DETECTED)
            assert not state.deadlines or state.deadlines[0][0] > value
        else:
            continue
        for alert in out.alerts:
            assert alert.alert_id not in alert_ids, "an alert fired twice"
            assert len(alert.detail) <= MAX_DETAIL
            assert CODEC.decode_alert(CODEC.encode_alert(alert)) == alert
            alert_ids.append(alert.alert_id)
            if counts is not None:
                counts[str(alert.alert_type)] += 1
        for change in out.changes:
            # Issued, revoked, expired: 3 at most, and 2 more per renewal that moved the
            # credential's expiry.
            renewal = state.renewals.get(change.key) if change.kind == "CREDENTIAL" else None
            assert 1 <= change.version <= 3 + 2 * (renewal.moves if renewal else 0)
            assert CODEC.decode_state(CODEC.encode_state(change)) == change
            changes.append((str(change.kind), change.key, change.version))
        stored = state.to_json()
        again = TreeState.from_json(stored)
        assert again == state
        if restart:
            state = again
    return state, alert_ids, changes


def test_adversarial_event_sequences_never_break_the_state_machine(
    record_fault: Recorder,
) -> None:
    examples = scaled(400, 8000)
    counts: Counter[str] = Counter()
    events_folded = [0]

    @_examples(examples, HealthCheck.too_slow, HealthCheck.data_too_large)
    @given(steps)
    def check(sequence: list[tuple[str, Any]]) -> None:
        events_folded[0] += sum(1 for kind, _ in sequence if kind == "event")
        state, alert_ids, changes = _fold(sequence, restart=False, counts=counts)
        # A worker restarted between any two steps reaches the same verdict.
        _, restarted_ids, restarted_changes = _fold(sequence, restart=True)
        assert restarted_ids == alert_ids
        assert restarted_changes == changes
        if state is None:
            return
        # Beyond every deadline: everything is decided, nothing raises.
        state, out = expire(state, BEYOND, CONFIG, DETECTED)
        assert not state.deadlines
        assert not {a.alert_id for a in out.alerts} & set(alert_ids)
        # A replay of every event adds nothing.
        for kind, value in sequence:
            if kind == "event":
                state, out = observe(state, value, CONFIG, DETECTED)
                assert out.alerts == []
                assert out.changes == []

    _run_recorded(
        record_fault,
        f"state machine: {examples} sequences of up to 25 adversarial events and watermarks "
        "(colliding and separator-holding ids, cycles, two parents, years 1 and 9999, "
        "4,096 scopes, duplicate event ids)",
        check,
        examples=examples,
        events=events_folded,
        alerts_by_type=counts,
    )


def test_the_watermark_never_passes_the_wall_clock_whatever_the_event_times() -> None:
    @_examples(scaled(300, 5000))
    @given(
        st.lists(
            st.tuples(st.integers(-(2**62), 2**62), st.integers(0, 10**7)),
            min_size=1,
            max_size=30,
        )
    )
    def check(arrivals: list[tuple[int, int]]) -> None:
        mark = Watermark(lateness_us=30_000_000, idle_advance=True)
        wall = to_micros(T0)
        for event_us, gap in arrivals:
            wall += gap
            mark.observe(event_us, wall)
            current = mark.current(wall)
            assert current is not None
            assert current <= wall
            assert (mark.current(wall + 5_000_000) or 0) <= wall + 5_000_000

    check()


def test_the_worker_step_dead_letters_each_bad_record_and_keeps_the_good_ones(
    record_fault: Recorder,
) -> None:
    examples = scaled(150, 3000)
    letters: Counter[str] = Counter()
    good_total = [0]

    @_examples(examples, HealthCheck.too_slow, HealthCheck.data_too_large)
    @given(
        st.lists(
            st.one_of(
                messages().map(lambda m: ("raw", m)),
                adversarial_events(tenants=["acme", "other"]).map(lambda e: ("event", e)),
            ),
            min_size=1,
            max_size=20,
        )
    )
    def check(items: list[tuple[str, Any]]) -> None:
        work = Correlation(
            Settings(grace_seconds=60, allowed_lateness_seconds=5, event_partitions=2)
        )
        records = []
        bad = 0
        for offset, (kind, item) in enumerate(items):
            value = CODEC.encode_event(item) if kind == "event" else item
            try:
                CODEC.decode_event(value)
            except DecodeError:
                bad += 1
            records.append((offset % 2, offset, b"k", value))
        sends, dirty = work.on_events(records, lambda _: None, to_micros(T0))
        dead = [s for s in sends if s.topic == topics.DLQ]
        assert len(dead) == bad
        for letter in dead:
            headers = dict(letter.headers or [])
            assert headers["custody-dlq-reason"].decode() in REASONS
            assert headers["custody-dlq-stage"] == b"correlate"
            letters[headers["custody-dlq-reason"].decode()] += 1
        good_total[0] += len(records) - bad
        assert (len(records) - bad == 0) == (not dirty)
        # The timer's step at any later time, with everything decided, does not raise.
        work.written(dirty, {}, to_micros(T0))
        for wall in (to_micros(T0) + 120_000_000, FAR):
            work.due({0, 1}, set(), wall)

    _run_recorded(
        record_fault,
        f"correlate worker step: {examples} batches of up to 20 records mixing bad bytes and "
        "adversarial events of two tenants",
        check,
        examples=examples,
        valid_events=good_total,
        dead_letters=letters,
    )


# ---- regressions: inputs that crashed the worker before the fixes ---------------------------


def _events(*specs: dict[str, Any]) -> list[Envelope]:
    base = {
        "event_type": "ACCESS",
        "tenant": "acme",
        "producer": "fuzz",
        "root_task_id": "root",
        "task_id": "root",
        "parent_task_id": None,
        "depth": 0,
        "actor": {"workload_id": "w", "kind": "AGENT", "instance_id": "i"},
        "producer_instance": "fuzz/1",
    }
    out: list[Envelope] = []
    for seq, spec in enumerate(specs, 1):
        data = {**base, "event_id": f"00000000-0000-0000-0000-{seq:012d}", "seq": seq, **spec}
        out.append(validate_event(data))
    return out


def _judge(stream: list[Envelope]) -> list[str]:
    state = None
    types: list[str] = []
    for event in stream:
        state, out = observe(state, event, CONFIG, DETECTED)
        types += [str(a.alert_type) for a in out.alerts]
    assert state is not None
    state, out = expire(state, BEYOND, CONFIG, DETECTED)
    return sorted(types + [str(a.alert_type) for a in out.alerts])


ACCESS_BODY = {
    "tool": "t",
    "resource": "r",
    "action": "read",
    "data_scope": ["a"],
    "outcome": "SUCCESS",
}


def test_a_token_id_holding_the_key_separator_is_judged() -> None:
    # Was: ValueError (too many values to unpack) when its UNAUTHORIZED_ACCESS deadline
    # passed; the worker crashed on every restart (a poison record).
    stream = _events({"event_time": T0, "body": {**ACCESS_BODY, "token_id": "a\x1fb"}})
    assert _judge(stream) == ["UNAUTHORIZED_ACCESS"]


def test_break_glass_and_token_ids_holding_the_separator_are_judged() -> None:
    stream = _events(
        {
            "event_type": "BREAK_GLASS",
            "event_time": T0,
            "body": {
                "break_glass_id": "b\x1fg",
                "reason": "r",
                "standing_access_unavailable": "x",
                "expires_at": T0 + timedelta(minutes=10),
            },
        },
        {
            "event_type": "CREDENTIAL_ISSUED",
            "event_time": T0 + timedelta(seconds=1),
            "body": {
                "token_id": "t\x1f1",
                "token_subject": "w",
                "credential_kind": "JWT",
                "audience": "a",
                "scopes": [],
                "issued_at": T0 + timedelta(seconds=1),
                "expires_at": T0 + timedelta(hours=1),
                "decision_id": "d",
            },
        },
    )
    assert "BREAK_GLASS_OVERDUE" in _judge(stream)


def test_one_task_under_two_parents_is_judged() -> None:
    # Was: ValueError (min() of an empty sequence) deciding BROKEN_CHAIN for the parent
    # named by an event that was later displaced as the task's earliest.
    child = {"task_id": "kid", "depth": 1}
    stream = _events(
        {
            **child,
            "parent_task_id": "p1",
            "event_time": T0 + timedelta(seconds=5),
            "event_type": "TASK_COMPLETED",
            "body": {"outcome": "SUCCEEDED"},
        },
        {
            **child,
            "parent_task_id": "p2",
            "event_time": T0,
            "event_type": "TASK_COMPLETED",
            "body": {"outcome": "FAILED"},
        },
    )
    assert _judge(stream) == ["BROKEN_CHAIN"]


def test_an_escalation_over_thousands_of_scopes_is_one_alert_with_a_clipped_detail() -> None:
    # Was: a ValidationError (alert detail over 8,192 characters) crashing the worker.
    stream = _events(
        {
            "event_type": "TASK_DECLARED",
            "event_time": T0,
            "body": {"purpose": "p", "requested_scopes": ["a"]},
        },
        {
            "event_type": "DELEGATION",
            "event_time": T0 + timedelta(seconds=1),
            "body": {
                "delegator": "w",
                "delegatee": "v",
                "child_task_id": "kid",
                "scopes": HUGE_SCOPES,
                "decision_id": "d",
            },
        },
    )
    state = None
    alerts = []
    for event in stream:
        state, out = observe(state, event, CONFIG, DETECTED)
        alerts += out.alerts
    [alert] = [a for a in alerts if a.alert_type == "SCOPE_ESCALATION"]
    assert len(alert.detail) <= MAX_DETAIL
    assert alert.detail.endswith("characters)")


@pytest.mark.parametrize(
    "when",
    [EARLIEST, LATEST, datetime(2242, 3, 16, 12, 56, 31, 999_999, tzinfo=UTC), T0],
)
def test_event_times_convert_exactly_across_the_whole_range(when: datetime) -> None:
    # Was: a float division, one second off for some times and year 10000 for the last.
    assert from_micros(to_micros(when)) == when


def test_from_micros_is_exact_for_any_time() -> None:
    @_examples(scaled(500, 10_000))
    @given(st.integers(to_micros(EARLIEST), to_micros(LATEST)))
    def check(micros: int) -> None:
        assert to_micros(from_micros(micros)) == micros

    check()


# ---- atheris --------------------------------------------------------------------------------


def test_atheris_over_the_decoder(record_fault: Recorder, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, message in enumerate(VALID):
        (corpus / f"valid-{i}").write_bytes(message)
    runs = scaled(50_000, 2_000_000)
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.faults._atheris_decoder",
            str(corpus),
            f"-runs={runs}",
            "-max_len=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=scaled(120, 1800),
        check=False,
    )
    output = result.stdout + result.stderr
    executed = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    coverage = re.findall(r"cov: (\d+)", output)
    record_fault(
        "fuzz",
        f"atheris (libFuzzer) over decode_event: {runs} runs from the valid events as seed",
        result.returncode == 0,
        runs=int(executed.group(1)) if executed else None,
        seconds=round(time.monotonic() - started, 1),
        coverage=int(coverage[-1]) if coverage else None,
        exit_code=result.returncode,
    )
    assert result.returncode == 0, output[-3000:]
    assert executed
    assert int(executed.group(1)) >= runs


def test_event_from_avro_rejects_bodies_not_matching_the_type() -> None:
    # A well-formed datum whose body slot is not its type's is a contract violation.
    datum = CODEC.decode(VALID[0]).datum
    datum = {**datum, "event_type": "ACCESS"}
    with pytest.raises(DecodeError) as caught:
        event_from_avro(datum)
    assert caught.value.reason == "contract_violation"


def test_a_backfill_is_judged_whole_not_by_deadlines_already_passed() -> None:
    # Was: evidence older than the partition's watermark had its deadlines decided as
    # each event arrived, before the rest of its tree: false BROKEN_CHAIN and more.
    settings = Settings(grace_seconds=3, allowed_lateness_seconds=1, event_partitions=1)
    work = Correlation(settings)
    config = CorrelationConfig.of(3, settings.max_credential_ttl_seconds)
    wall = to_micros(T0) + 3600 * 1_000_000
    current = mischievous(set(), name="now-", offset=3600 - 40)
    old = mischievous({"leak"}, name="old-")  # an hour older: a backfill
    expected = run(old, config).ids()

    def records(stream: list[Envelope], first: int) -> list[tuple[int, int, bytes, bytes]]:
        return [
            (0, first + i, b"k", CODEC.encode_event(stamped(e, first + i + 1, "backfill/1")))
            for i, e in enumerate(stream)
        ]

    fired: list[str] = []

    def step(at: int, sends: list[Any], dirty: dict[str, Any]) -> None:
        fired.extend(
            CODEC.decode_alert(s.value).alert_id for s in sends if s.topic == topics.ALERTS
        )
        work.written(dirty, {}, at)

    step(wall, *work.on_events(records(current, 0), lambda _: None, wall))
    half = len(old) // 2
    # The backfill comes in two batches, half a second apart: nothing of it is decided yet.
    step(wall, *work.on_events(records(old[:half], 100), lambda _: None, wall))
    step(wall + 500_000, *work.on_events(records(old[half:], 200), lambda _: None, wall + 500_000))
    assert not expected & set(fired)
    assert not {a for a in fired if a not in run(current, config).ids()}
    # Once the allowed lateness has passed since its last arrival, it is judged whole.
    sends, trees, _ = work.due({0}, set(), wall + 1_600_000)
    step(wall + 1_600_000, sends, trees)
    backfill_alerts = set(fired) - run(current, config).ids()
    assert backfill_alerts == expected


def test_a_record_too_big_to_dead_letter_whole_is_dead_lettered_cut() -> None:
    # Was: the correlator sent the whole 3 MB record to the DLQ, the producer refused it
    # (MessageSizeTooLargeError) and the worker crashed on it at every restart.
    from processors.dead_letters import MAX_DLQ_VALUE

    work = Correlation(Settings(event_partitions=1))
    blob = b"\x00" + bytes(3 * 1024 * 1024)
    sends, _ = work.on_events([(0, 7, b"big", blob)], lambda _: None, to_micros(T0))
    [letter] = sends
    headers = dict(letter.headers or [])
    assert letter.value == blob[:MAX_DLQ_VALUE]
    assert headers["custody-dlq-truncated"] == str(len(blob)).encode()
    assert len(headers["custody-dlq-original-sha256"]) == 64
    assert headers["custody-dlq-reason"] == b"unknown_schema"
