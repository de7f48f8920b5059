"""Property: the correlator's verdict does not depend on arrival order, duplicates or
replays (events within the allowed lateness)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import Envelope
from tests.support.trees import MISCHIEF, mischievous, run


def _verdict(stream: list[Envelope]) -> tuple[object, set[str]]:
    result = run(stream)
    return result.state, {a.model_dump_json() for a in result.alerts}


@settings(max_examples=150, deadline=None)
@given(st.sets(st.sampled_from(MISCHIEF)), st.randoms(use_true_random=False))
def test_any_permutation_gives_the_same_state_and_alerts(
    mischief: set[str], rnd: random.Random
) -> None:
    stream = mischievous(mischief)
    shuffled = list(stream)
    rnd.shuffle(shuffled)
    assert _verdict(shuffled) == _verdict(stream)


@settings(max_examples=100, deadline=None)
@given(st.sets(st.sampled_from(MISCHIEF)), st.randoms(use_true_random=False))
def test_duplicates_and_replays_change_nothing(mischief: set[str], rnd: random.Random) -> None:
    stream = mischievous(mischief)
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
        "expired_use": "TOKEN_USED_AFTER_EXPIRY",
    }
    for mischief, alert_type in expected.items():
        assert alert_type in run(mischievous({mischief})).types(), mischief
