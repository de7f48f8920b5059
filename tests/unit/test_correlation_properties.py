"""Property: the correlator's verdict does not depend on arrival order, duplicates or
replays (events within the allowed lateness)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from producers import events
from schemas.models import CredentialRevokedEvent, DelegationEvent, Envelope
from tests.correlation_trees import ALICE, CODER, RESEARCHER, Tree, at, run

MISCHIEF = ["leak", "late_use", "shared", "widen", "break_glass", "self_approval", "orphan"]


def _tree(mischief: set[str]) -> list[Envelope]:
    tree = Tree()
    stream = list(tree.events)
    if "leak" in mischief:
        stream = [
            e
            for e in stream
            if not (isinstance(e, CredentialRevokedEvent) and e.body.token_id == "tok-research")
        ]
    if "late_use" in mischief or "shared" in mischief:
        source = RESEARCHER if "shared" in mischief else CODER
        when = 26 if "late_use" in mischief else 24.5
        stream.append(
            events.access(
                source,
                tree.code,
                token_id="tok-code",
                tool="sql",
                resource="db://x",
                action="read",
                data_scope=["db:read"],
                outcome="SUCCESS",
                decision_id="dec-tok-code",
                event_time=at(when),
            )
        )
    if "widen" in mischief:
        stream = [
            e.model_copy(
                update={"body": e.body.model_copy(update={"scopes": ["db:read", "db:write"]})}
            )
            if isinstance(e, DelegationEvent) and e.body.child_task_id == "code"
            else e
            for e in stream
        ]
    if "break_glass" in mischief:
        stream.append(
            events.break_glass(
                CODER,
                tree.code,
                break_glass_id="bg",
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
                approval_id="a",
                approver=ALICE,
                approves="code",
                scopes=[],
                reason="r",
                event_time=at(21.7),
            )
        )
    if "orphan" in mischief:
        stream = [e for e in stream if e.task_id != "research"]
    return stream


def _verdict(stream: list[Envelope]) -> tuple[object, set[str]]:
    result = run(stream)
    return result.state, {a.model_dump_json() for a in result.alerts}


@settings(max_examples=150, deadline=None)
@given(st.sets(st.sampled_from(MISCHIEF)), st.randoms(use_true_random=False))
def test_any_permutation_gives_the_same_state_and_alerts(mischief: set[str], rnd) -> None:  # type: ignore[no-untyped-def]
    stream = _tree(mischief)
    shuffled = list(stream)
    rnd.shuffle(shuffled)
    assert _verdict(shuffled) == _verdict(stream)


@settings(max_examples=100, deadline=None)
@given(st.sets(st.sampled_from(MISCHIEF)), st.randoms(use_true_random=False))
def test_duplicates_and_replays_change_nothing(mischief: set[str], rnd) -> None:  # type: ignore[no-untyped-def]
    stream = _tree(mischief)
    replayed = stream + rnd.sample(stream, k=len(stream) // 2) + stream
    rnd.shuffle(replayed)
    assert _verdict(replayed) == _verdict(stream)


def test_mischief_is_seen() -> None:
    """The property above is not vacuous: each misbehaviour raises its alert."""
    expected = {
        "leak": "UNREVOKED_TOKEN",
        "late_use": "TOKEN_USED_AFTER_REVOCATION",
        "shared": "SHARED_CREDENTIAL",
        "widen": "SCOPE_ESCALATION",
        "break_glass": "BREAK_GLASS_UNAPPROVED",
        "self_approval": "SELF_APPROVAL",
        "orphan": "BROKEN_CHAIN",
    }
    for mischief, alert_type in expected.items():
        assert alert_type in run(_tree({mischief})).types(), mischief
