"""The correlator, alert by alert: a case that must fire and a near miss that must not."""

from __future__ import annotations

from datetime import timedelta

from processors.correlation.engine import CorrelationConfig
from producers.events import Source
from schemas.models import (
    AuthzDecisionEvent,
    CredentialIssuedEvent,
    DelegationEvent,
    Envelope,
    StateKind,
    TaskDeclaredEvent,
)
from tests.support.events import (
    ALICE,
    CODER,
    RESEARCHER,
    approve,
    at,
    break_glass,
    revoke,
    use,
)
from tests.support.trees import GRACE, Predicate, Tree, revocation_of, run


def test_a_clean_tree_raises_nothing_and_reports_its_state() -> None:
    tree = Tree()
    result = run(tree.events)
    assert result.alerts == []
    final = {(c.kind, c.key): c for c in result.changes}  # the last change per key wins
    assert {key for kind, key in final if kind == StateKind.TASK} == {"root", "research", "code"}
    for task_id in ("root", "research", "code"):
        task = final[(StateKind.TASK, task_id)].task
        assert task is not None
        assert task.status == "COMPLETED"
    credential = final[(StateKind.CREDENTIAL, "tok-code")].credential
    assert credential is not None
    assert credential.state == "REVOKED"
    delegation = final[(StateKind.DELEGATION, "code")].delegation
    assert delegation is not None
    assert delegation.delegator == RESEARCHER.actor.workload_id


# ---- UNREVOKED_TOKEN ----------------------------------------------------------------


def test_unrevoked_token_fires_when_revocation_comes_after_the_grace_period() -> None:
    tree = Tree()
    stream = tree.without(revocation_of("tok-code"))
    # The coder's task completed at 30 s: revoked at 30 + GRACE + 1 is too late.
    result = run([*stream, revoke(tree.code, "tok-code", at(30 + GRACE + 1))])
    assert result.types() == ["UNREVOKED_TOKEN"]
    assert result.alerts[0].token_id == "tok-code"
    assert result.alerts[0].task_id == "code"


def test_unrevoked_near_miss_revoked_one_second_before_the_grace_period_ends() -> None:
    tree = Tree()
    stream = tree.without(revocation_of("tok-code"))
    assert run([*stream, revoke(tree.code, "tok-code", at(30 + GRACE - 1))]).alerts == []


def test_unrevoked_near_miss_token_expired_within_the_grace_period() -> None:
    tree = Tree()
    tree.grant(tree.code, CODER, "tok-short", ["db:read"], start=23, ttl=30)
    stream = tree.without(revocation_of("tok-short"))
    assert run(stream).alerts == []


def test_never_revoked_token_is_unrevoked_with_its_evidence() -> None:
    tree = Tree()
    result = run(tree.without(revocation_of("tok-root")))
    assert result.types() == ["UNREVOKED_TOKEN"]
    issued = next(
        e
        for e in tree.events
        if isinstance(e, CredentialIssuedEvent) and e.body.token_id == "tok-root"
    )
    assert issued.event_id in result.alerts[0].evidence_event_ids


# ---- ORPHANED_TOKEN -----------------------------------------------------------------


def test_token_for_an_undeclared_task_is_orphaned() -> None:
    tree = Tree()
    stream = tree.without(lambda e: isinstance(e, TaskDeclaredEvent) and e.task_id == "code")
    assert "ORPHANED_TOKEN" in run(stream).types()


def test_token_without_an_allow_decision_is_orphaned_but_not_when_it_comes_late() -> None:
    tree = Tree()
    decision = next(
        e
        for e in tree.events
        if isinstance(e, AuthzDecisionEvent) and e.body.decision_id == "dec-tok-code"
    )
    without = [e for e in tree.events if e is not decision]
    assert "ORPHANED_TOKEN" in run(without).types()
    # Near miss: the decision arrives last, out of order, but within the grace period.
    assert run([*without, decision]).alerts == []


# ---- TOKEN_USED_AFTER_REVOCATION / EXPIRY ------------------------------------------


def _access(tree: Tree, token: str, when: float, source: Source = CODER) -> Envelope:
    """An access with ``token`` in the coder's task, ``when`` seconds after T0."""
    return use(tree.code, token, at(when), source=source)


def test_use_after_revocation_fires_whatever_the_arrival_order() -> None:
    tree = Tree()
    late_use = _access(tree, "tok-code", 26)  # revoked at 25
    assert run([*tree.events, late_use]).types() == ["TOKEN_USED_AFTER_REVOCATION"]
    assert run([late_use, *tree.events]).types() == ["TOKEN_USED_AFTER_REVOCATION"]


def test_use_after_revocation_near_miss_use_before_revocation() -> None:
    tree = Tree()
    assert run([*tree.events, _access(tree, "tok-code", 24.9)]).alerts == []


def test_use_after_expiry_fires_and_its_near_miss_does_not() -> None:
    tree = Tree()
    tree.grant(tree.code, CODER, "tok-exp", ["db:read"], start=23, ttl=60)
    stream = tree.without(revocation_of("tok-exp"))
    # issued at 24, expires at 84 (within the grace after its task ended at 30)
    assert run([*stream, _access(tree, "tok-exp", 85)]).types() == ["TOKEN_USED_AFTER_EXPIRY"]
    assert run([*stream, _access(tree, "tok-exp", 83)]).alerts == []


# ---- SHARED_CREDENTIAL --------------------------------------------------------------


def test_token_used_by_another_workload_is_shared() -> None:
    tree = Tree()
    result = run([*tree.events, _access(tree, "tok-code", 24.5, source=RESEARCHER)])
    assert result.types() == ["SHARED_CREDENTIAL"]
    assert result.alerts[0].workload_id == RESEARCHER.actor.workload_id


def test_shared_near_miss_another_replica_of_the_same_workload() -> None:
    tree = Tree()
    replica = Source.of("acme", "runtime", CODER.actor.workload_id, "AGENT", "coder-2")
    assert run([*tree.events, _access(tree, "tok-code", 24.5, source=replica)]).alerts == []


# ---- SCOPE_ESCALATION ---------------------------------------------------------------


def _widen(tree: Tree, scopes: list[str]) -> list[Envelope]:
    return [
        e.model_copy(update={"body": e.body.model_copy(update={"scopes": scopes})})
        if isinstance(e, DelegationEvent) and e.body.child_task_id == "code"
        else e
        for e in tree.events
    ]


def test_delegation_that_widens_scope_escalates() -> None:
    tree = Tree()
    result = run(_widen(tree, ["db:read", "db:write"]))
    assert result.types() == ["SCOPE_ESCALATION"]
    assert "db:write" in result.alerts[0].detail


def test_escalation_near_miss_delegation_narrows_scope() -> None:
    assert run(_widen(Tree(), ["db:read"])).alerts == []


def test_access_outside_the_token_scopes_escalates_and_inside_does_not() -> None:
    tree = Tree()
    outside = use(tree.code, "tok-code", at(24.5), scopes=["db:read", "db:admin"])
    assert "SCOPE_ESCALATION" in run([*tree.events, outside]).types()
    assert run([*tree.events, _access(tree, "tok-code", 24.5)]).alerts == []


# ---- DELEGATION_IDENTITY_REUSE ------------------------------------------------------


def test_delegating_to_the_same_identity_is_flagged_and_a_distinct_one_is_not() -> None:
    tree = Tree()
    reused = [
        e.model_copy(
            update={"body": e.body.model_copy(update={"delegatee": RESEARCHER.actor.workload_id})}
        )
        if isinstance(e, DelegationEvent) and e.body.child_task_id == "code"
        else e
        for e in tree.events
    ]
    assert "DELEGATION_IDENTITY_REUSE" in run(reused).types()
    assert run(tree.events).alerts == []


# ---- UNAUTHORIZED_ACCESS ------------------------------------------------------------


def test_access_without_a_covering_allow_is_unauthorized() -> None:
    tree = Tree()
    wrong_resource = use(tree.code, "tok-code", at(24.5), resource="db://payroll")
    assert run([*tree.events, wrong_resource]).types() == ["UNAUTHORIZED_ACCESS"]


def test_unauthorized_near_miss_denied_access_and_unnamed_but_covered_access() -> None:
    tree = Tree()
    denied = use(
        tree.code,
        "tok-code",
        at(24.5),
        resource="db://payroll",
        outcome="DENIED",
        decision_id=None,
    )
    covered = use(tree.code, "tok-code", at(24.6), decision_id=None)
    assert run([*tree.events, denied, covered]).alerts == []


def test_a_decision_made_after_the_access_does_not_authorize_it() -> None:
    tree = Tree()
    decision = next(
        e for e in tree.events if e.event_type == "AUTHZ_DECISION" and e.task_id == "code"
    )
    later = decision.model_copy(update={"event_time": at(40)})
    stream = [later if e is decision else e for e in tree.events]
    assert "UNAUTHORIZED_ACCESS" in run(stream).types()


# ---- BREAK_GLASS_UNAPPROVED / OVERDUE ----------------------------------------------


def _break_glass(tree: Tree, expires: float) -> Envelope:
    return break_glass(tree.code, "bg-1", at(21.5), expires=at(expires))


def _approve(tree: Tree, approves: str, approver: str = "bob", when: float = 21.6) -> Envelope:
    return approve(tree.code, "appr-1", approves, at(when), approver=approver)


def test_break_glass_without_approval_fires_and_with_late_arriving_approval_does_not() -> None:
    tree = Tree()
    bg = _break_glass(tree, expires=600)
    assert run([*tree.events, bg]).types() == ["BREAK_GLASS_UNAPPROVED"]
    approval = _approve(tree, "bg-1", when=21.6 + GRACE - 1)
    assert run([approval, *tree.events, bg]).alerts == []


def test_break_glass_credentials_live_after_its_end_are_overdue() -> None:
    tree = Tree()
    bg, approval = _break_glass(tree, expires=23.5), _approve(tree, "bg-1")
    # tok-code (issued at 23 s, after the break-glass) is revoked only at 25 s.
    result = run([*tree.events, bg, approval])
    assert result.types() == ["BREAK_GLASS_OVERDUE"]
    assert result.alerts[0].token_id == "tok-code"
    # Near miss: the break-glass ends at 25.5 s, after the revocation.
    assert run([*tree.events, _break_glass(tree, expires=25.5), approval]).alerts == []


# ---- LONG_LIVED_CREDENTIAL ----------------------------------------------------------


def test_credential_above_the_maximum_lifetime_is_long_lived() -> None:
    tree = Tree()
    tree.grant(tree.code, CODER, "tok-long", ["db:read"], start=23, ttl=3601)
    assert run(tree.events).types() == ["LONG_LIVED_CREDENTIAL"]
    exact = Tree()
    exact.grant(exact.code, CODER, "tok-long", ["db:read"], start=23, ttl=3600)
    assert run(exact.events).alerts == []


# ---- BROKEN_CHAIN -------------------------------------------------------------------


def test_a_named_parent_that_never_appears_breaks_the_chain() -> None:
    tree = Tree()
    stream = tree.without(lambda e: e.task_id == "research")
    result = run(stream)
    assert "BROKEN_CHAIN" in result.types()
    broken = next(a for a in result.alerts if a.alert_type == "BROKEN_CHAIN")
    assert broken.task_id == "research"


def test_broken_chain_near_miss_parent_arrives_last_within_grace() -> None:
    tree = Tree()
    research = [e for e in tree.events if e.task_id == "research"]
    rest = [e for e in tree.events if e.task_id != "research"]
    assert run([*rest, *research]).alerts == []


def test_a_delegated_child_that_never_appears_breaks_the_chain() -> None:
    tree = Tree()
    stream = tree.without(lambda e: e.task_id == "code")
    types = run(stream).types()
    assert "BROKEN_CHAIN" in types


# ---- SELF_APPROVAL ------------------------------------------------------------------


def test_the_requester_approving_their_own_task_is_self_approval() -> None:
    tree = Tree()
    assert "SELF_APPROVAL" in run([*tree.events, _approve(tree, "code", approver=ALICE)]).types()
    assert run([*tree.events, _approve(tree, "code", approver="bob")]).alerts == []


def test_self_approval_is_found_when_the_approval_arrives_before_the_task() -> None:
    tree = Tree()
    assert "SELF_APPROVAL" in run([_approve(tree, "code", approver=ALICE), *tree.events]).types()


# ---- duplicates, replays and determinism -------------------------------------------


def test_a_duplicated_event_changes_nothing() -> None:
    tree = Tree()
    leaky = tree.without(revocation_of("tok-root"))
    once = run(leaky)
    twice = run([*leaky, *leaky])
    assert once.ids() == twice.ids()
    assert once.state == twice.state
    assert len(twice.alerts) == 1


def test_alert_ids_are_deterministic_across_runs() -> None:
    tree = Tree()
    leaky = tree.without(revocation_of("tok-root"))
    assert run(leaky).ids() == run(list(reversed(leaky))).ids()


def test_deadlines_wait_for_the_watermark() -> None:
    tree = Tree()
    leaky = tree.without(revocation_of("tok-root"))
    # Root completed at 32 s; its token is judged at 32 + GRACE.
    assert run(leaky, until=at(32 + GRACE - 1)).alerts == []
    assert run(leaky, until=at(32 + GRACE)).types() == ["UNREVOKED_TOKEN"]


def test_state_survives_its_changelog_form() -> None:
    from processors.correlation.tree import TreeState

    tree = Tree()
    result = run([*tree.events, _access(tree, "tok-code", 26)], until=at(0))
    assert TreeState.from_json(result.state.to_json()) == result.state


def test_configuration_comes_from_settings() -> None:
    config = CorrelationConfig.of(grace_seconds=1.5, max_credential_ttl_seconds=10)
    assert (config.grace_us, config.max_credential_ttl_us) == (1_500_000, 10_000_000)
    assert timedelta(microseconds=config.grace_us).total_seconds() == 1.5


# ---- late pieces are judged by their event time, not by their arrival -----------------


def _shift(events: list[Envelope], predicate: Predicate, seconds: float) -> list[Envelope]:
    return [
        e.model_copy(update={"event_time": e.event_time + timedelta(seconds=seconds)})
        if predicate(e)
        else e
        for e in events
    ]


def test_a_declaration_long_after_the_grace_period_leaves_the_token_orphaned() -> None:
    tree = Tree()
    late = _shift(
        tree.events, lambda e: isinstance(e, TaskDeclaredEvent) and e.task_id == "code", GRACE * 10
    )
    for stream in (late, list(reversed(late))):
        assert "ORPHANED_TOKEN" in run(stream).types()


def test_a_parent_whose_events_come_long_after_its_child_is_a_broken_chain() -> None:
    tree = Tree()
    late = _shift(tree.events, lambda e: e.task_id == "research", 1000)
    for stream in (late, list(reversed(late))):
        broken = [a for a in run(stream).alerts if a.alert_type == "BROKEN_CHAIN"]
        assert [a.task_id for a in broken] == ["research"]


def test_break_glass_approved_by_a_non_human_is_unapproved() -> None:
    tree = Tree()
    bg = _break_glass(tree, expires=600)
    by_agent = approve(tree.code, "appr-9", "bg-1", at(21.6), source=CODER, scopes=[], reason="x")
    assert "BREAK_GLASS_UNAPPROVED" in run([*tree.events, bg, by_agent]).types()


def test_a_long_lived_duplicate_issuance_is_flagged_whatever_arrives_first() -> None:
    tree = Tree()
    issued = next(
        e
        for e in tree.events
        if isinstance(e, CredentialIssuedEvent) and e.body.token_id == "tok-code"
    )
    longer = issued.model_copy(
        update={
            "event_id": "00000000-0000-4000-8000-000000000001",
            "body": issued.body.model_copy(update={"expires_at": at(23 + 7200)}),
        }
    )
    assert "LONG_LIVED_CREDENTIAL" in run([*tree.events, longer]).types()
    assert "LONG_LIVED_CREDENTIAL" in run([longer, *tree.events]).types()


def test_a_long_job_s_accesses_are_forgotten_once_settled() -> None:
    tree = Tree()
    ctx, token = tree.code, "tok-batch"
    tree.grant(ctx, CODER, token, ["db:read"], start=23, ttl=3000)
    uses = [use(ctx, token, at(25 + i / 1000)) for i in range(5000)]
    stream = [*tree.without(revocation_of(token)), *uses, revoke(ctx, token, at(40))]
    during = run(stream, until=at(30))
    assert sum(map(len, during.state.accesses.values())) > 5000
    settled = run(stream)
    assert settled.state.accesses == {}
    assert len(settled.state.to_json()) < len(during.state.to_json()) / 2
    assert settled.types() == during.types() == []
