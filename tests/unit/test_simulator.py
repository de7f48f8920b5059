"""The workload simulator: deterministic, valid against the contract, shaped like real
multi-agent work, and honest: clean trees raise no alert, each misbehaviour its own."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

import pytest

from processors.correlation.engine import CorrelationConfig
from producers.simulator import (
    EXPECTED_ALERT,
    Misbehaviour,
    Scenario,
    SimulationConfig,
    plan,
    simulate,
)
from schemas import catalog
from schemas.codec import AvroCodec, event_to_avro
from schemas.models import (
    ApprovalEvent,
    CredentialIssuedEvent,
    CredentialRenewedEvent,
    CredentialRevokedEvent,
    DelegationEvent,
    Envelope,
    EventType,
)
from tests.support.trees import by_root, run

CONFIG = CorrelationConfig.of(grace_seconds=60, max_credential_ttl_seconds=86_400)
# The production default grace: misbehaviour must show under it too.
DEFAULT_CONFIG = CorrelationConfig.of(grace_seconds=300, max_credential_ttl_seconds=86_400)


CLEAN = SimulationConfig(roots=50, misbehaviour_rate=0, seed=3)


@pytest.fixture(scope="module")
def clean() -> list[Envelope]:
    return list(simulate(CLEAN))


def test_same_seed_same_events_and_another_seed_differs() -> None:
    def dumped(seed: int) -> list[dict[str, object]]:
        config = SimulationConfig(roots=20, seed=seed, misbehaviour_rate=0.5)
        return [e.model_dump(mode="json") for e in simulate(config)]

    first = dumped(7)
    assert first == dumped(7)
    other = dumped(8)
    assert other != first
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in other}


def test_events_are_unique_in_time_order_and_encode(clean: list[Envelope]) -> None:
    codec = AvroCodec()
    assert len({e.event_id for e in clean}) == len(clean)
    assert all(a.event_time <= b.event_time for a, b in pairwise(clean))
    for i, event in enumerate(clean):
        assert not event.is_stamped
        codec.encode(catalog.EVENT, event_to_avro(event, chain=("sim/1", i + 1, None)))


def test_shape_of_a_run(clean: list[Envelope]) -> None:
    assert {e.event_type for e in clean} == set(EventType)
    assert max(e.depth for e in clean) >= 3
    assert len(by_root(clean)) == 50
    assert {t.scenario for t in plan(CLEAN)} == set(Scenario)
    issued = [e for e in clean if isinstance(e, CredentialIssuedEvent)]
    assert all(e.body.expires_at - e.body.issued_at <= timedelta(days=1) for e in issued)
    rotated = {
        e.body.token_id
        for e in clean
        if isinstance(e, CredentialRevokedEvent) and e.body.reason == "ROTATED"
    }
    children = [e for e in issued if e.body.parent_token_id is not None]
    assert children
    assert {e.body.parent_token_id for e in children} == rotated
    # A renewal comes before the credential's issued expiry and moves it later.
    expiry = {e.body.token_id: e.body.expires_at for e in issued}
    renewals = [e for e in clean if isinstance(e, CredentialRenewedEvent)]
    assert renewals
    assert all(e.event_time < expiry[e.body.token_id] < e.body.expires_at for e in renewals)


def test_each_delegation_step_is_a_distinct_identity_acting_for_a_human(
    clean: list[Envelope],
) -> None:
    declared = [e for e in clean if e.event_type == EventType.TASK_DECLARED]
    assert all(e.actor.on_behalf_of for e in declared)
    for tree in by_root(clean).values():
        for event in tree:
            if isinstance(event, DelegationEvent):
                assert event.body.delegator != event.body.delegatee
        approvals = [e for e in tree if isinstance(e, ApprovalEvent)]
        requester = tree[0].actor.on_behalf_of
        assert all(a.actor.kind == "HUMAN" and a.body.approver != requester for a in approvals)


def test_batch_jobs_span_hours(clean: list[Envelope]) -> None:
    batch = {t.root_task_id for t in plan(CLEAN) if t.scenario is Scenario.BATCH}
    for root, tree in by_root(clean).items():
        span = (tree[-1].event_time - tree[0].event_time).total_seconds()
        if root in batch:
            assert span > 2 * 3600
        else:
            assert span < 600


@pytest.mark.parametrize("config", [CONFIG, DEFAULT_CONFIG], ids=["grace60", "grace300"])
def test_no_misbehaviour_no_alert(clean: list[Envelope], config: CorrelationConfig) -> None:
    for root, tree in by_root(clean).items():
        assert run(tree, config).alerts == [], root


@pytest.mark.parametrize("config", [CONFIG, DEFAULT_CONFIG], ids=["grace60", "grace300"])
@pytest.mark.parametrize("kind", list(Misbehaviour))
def test_each_misbehaviour_raises_its_alert(kind: Misbehaviour, config: CorrelationConfig) -> None:
    sim = SimulationConfig(roots=30, misbehaviour_rate=1.0, seed=11, kinds=(kind,))
    trees = plan(sim)
    assert {t.scenario for t in trees} == set(Scenario)
    stream = by_root(list(simulate(sim)))
    for tree in trees:
        assert run(stream[tree.root_task_id], config).types() == [EXPECTED_ALERT[kind]], tree


def test_misbehaviour_rate_is_per_root_task() -> None:
    trees = plan(SimulationConfig(roots=1000, misbehaviour_rate=0.1, seed=5))
    kinds = [t.misbehaviour for t in trees if t.misbehaviour is not None]
    assert 60 < len(kinds) < 140
    assert set(kinds) == set(Misbehaviour)


def test_mixed_run_alerts_match_the_plan() -> None:
    sim = SimulationConfig(roots=60, misbehaviour_rate=0.5, seed=2)
    stream = by_root(list(simulate(sim)))
    for tree in plan(sim):
        expected = [EXPECTED_ALERT[tree.misbehaviour]] if tree.misbehaviour else []
        assert run(stream[tree.root_task_id], CONFIG).types() == expected


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="misbehaviour_rate"):
        SimulationConfig(misbehaviour_rate=1.5)
    with pytest.raises(ValueError, match="roots"):
        SimulationConfig(roots=-1)
