"""Renewals (CREDENTIAL_RENEWED, schema v2) in the correlator: a renewal moves a token's
expiry later, never earlier, whatever order the events arrive in."""

from __future__ import annotations

import itertools
import json

from processors.correlation.engine import expire, observe, to_micros
from processors.correlation.tree import TreeState
from schemas.models import AlertType, CredentialLifecycle, Envelope, StateChange, StateKind
from tests.support.events import CODER, at, issue, renew, use
from tests.support.trees import CONFIG, DETECTED, GRACE, Tree, revocation_of, run

TOKEN = "tok-exp"


def _tree() -> tuple[Tree, list[Envelope]]:
    """The clean tree plus ``tok-exp``: issued at 24 in the coder's task (which completes at
    30), expiring at 84 and never revoked."""
    tree = Tree()
    tree.grant(tree.code, CODER, TOKEN, ["db:read"], start=23, ttl=60)
    return tree, tree.without(revocation_of(TOKEN))


def _access(tree: Tree, when: float) -> Envelope:
    return use(tree.code, TOKEN, at(when), source=CODER)


def _renewal(tree: Tree, when: float, expires: float) -> Envelope:
    return renew(tree.code, TOKEN, at(when), expires=at(expires))


def _credentials(changes: list[StateChange]) -> list[StateChange]:
    return [c for c in changes if c.kind == StateKind.CREDENTIAL and c.key == TOKEN]


def test_an_access_between_the_old_and_the_renewed_expiry_is_not_after_expiry() -> None:
    tree, stream = _tree()
    renewal = _renewal(tree, 50, expires=89)
    assert run([*stream, _access(tree, 85)]).types() == ["TOKEN_USED_AFTER_EXPIRY"]
    assert run([*stream, renewal, _access(tree, 85)]).alerts == []
    late = run([*stream, renewal, _access(tree, 89.5)])
    assert late.types() == ["TOKEN_USED_AFTER_EXPIRY"]
    [alert] = late.alerts
    # The renewal is evidence: it set the expiry the access came after.
    assert renewal.event_id in alert.evidence_event_ids
    assert "as renewed" in alert.detail


def test_any_arrival_order_gives_the_same_alerts() -> None:
    """The renewal before its issuance, or after the access it covers, counts the same."""
    tree, stream = _tree()
    renewal = _renewal(tree, 50, expires=89)
    for access_at, expected in ((85, []), (89.5, ["TOKEN_USED_AFTER_EXPIRY"])):
        access = _access(tree, access_at)
        orders = [
            [renewal, *stream, access],
            [*stream, access, renewal],
            [access, renewal, *stream],
            [*stream, renewal, access],
        ]
        for order in orders:
            assert run(order).types() == expected, (access_at, order.index(renewal))


def test_a_renewal_never_shortens_the_expiry() -> None:
    tree, stream = _tree()
    shorter = _renewal(tree, 50, expires=70)
    assert run([*stream, shorter, _access(tree, 83)]).alerts == []
    assert run([*stream, shorter, _access(tree, 85)]).types() == ["TOKEN_USED_AFTER_EXPIRY"]
    # Of two renewals the later expiry holds, in either order.
    longer = _renewal(tree, 60, expires=89)
    for pair in itertools.permutations([shorter, longer]):
        result = run([*stream, *pair, _access(tree, 88)])
        assert result.alerts == []
        assert result.state.tokens[TOKEN].expires_us == to_micros(at(89))


def test_the_credential_state_shows_the_renewed_expiry() -> None:
    tree, stream = _tree()
    renewal = _renewal(tree, 50, expires=89)
    changes = _credentials(run([*stream, renewal]).changes)
    last = changes[-1]
    assert last.credential is not None
    assert last.credential.expires_at == at(89)
    assert last.credential.state == CredentialLifecycle.EXPIRED
    assert renewal.event_id in last.source_event_ids
    versions = [c.version for c in changes]
    assert versions == sorted(set(versions)), versions
    renewed = [c for c in changes if c.credential and c.credential.expires_at == at(89)]
    assert renewed[0].credential is not None
    assert renewed[0].credential.state == CredentialLifecycle.ACTIVE


def test_a_renewal_of_a_token_not_yet_issued_is_applied_at_its_issuance() -> None:
    tree, stream = _tree()
    renewal = _renewal(tree, 50, expires=89)
    state, out = observe(None, renewal, CONFIG, DETECTED)
    assert _credentials(out.changes) == []
    assert TOKEN in state.renewals
    changes = []
    for event in stream:
        state, out = observe(state, event, CONFIG, DETECTED)
        changes += _credentials(out.changes)
    assert state.tokens[TOKEN].expires_us == to_micros(at(89))
    # Its first state already carries the renewed expiry.
    assert changes[0].credential is not None
    assert changes[0].credential.expires_at == at(89)


def test_a_renewal_arriving_after_the_expiry_was_decided_undoes_it() -> None:
    tree, stream = _tree()
    state: TreeState | None = None
    for event in stream:
        state, _ = observe(state, event, CONFIG, DETECTED)
    assert state is not None
    state, out = expire(state, to_micros(at(85)), CONFIG, DETECTED)
    [expired] = _credentials(out.changes)
    assert expired.credential is not None
    assert expired.credential.state == CredentialLifecycle.EXPIRED
    state, out = observe(state, _renewal(tree, 50, expires=200), CONFIG, DETECTED)
    [active] = _credentials(out.changes)
    assert active.credential is not None
    assert active.credential.state == CredentialLifecycle.ACTIVE
    assert active.credential.expires_at == at(200)
    assert active.version > expired.version
    state, out = expire(state, to_micros(at(201)), CONFIG, DETECTED)
    [again] = _credentials(out.changes)
    assert again.credential is not None
    assert again.credential.state == CredentialLifecycle.EXPIRED
    assert again.version > active.version


def test_use_after_expiry_waits_for_a_renewal_until_the_access_plus_grace() -> None:
    """An access after the known expiry is decided at its event time + grace, so a
    renewal that arrives before then still covers it (docs/alerts.md)."""
    tree, stream = _tree()
    state: TreeState | None = None
    for event in [*stream, _access(tree, 85)]:
        state, out = observe(state, event, CONFIG, DETECTED)
        assert out.alerts == []
    assert state is not None
    state, out = expire(state, to_micros(at(85 + GRACE)) - 1, CONFIG, DETECTED)
    assert not [a for a in out.alerts if a.alert_type == AlertType.TOKEN_USED_AFTER_EXPIRY]
    covered = TreeState.from_json(state.to_json())
    covered, _ = observe(covered, _renewal(tree, 50, expires=89), CONFIG, DETECTED)
    covered, out = expire(covered, to_micros(at(85 + GRACE)), CONFIG, DETECTED)
    assert not [a for a in out.alerts if a.alert_type == AlertType.TOKEN_USED_AFTER_EXPIRY]
    state, out = expire(state, to_micros(at(85 + GRACE)), CONFIG, DETECTED)
    used = [a for a in out.alerts if a.alert_type == AlertType.TOKEN_USED_AFTER_EXPIRY]
    assert len(used) == 1


def test_unrevoked_token_counts_the_renewed_expiry() -> None:
    """The coder's task completes at 30: expiring at 84 is within its grace (90); renewed
    past it, the token outlived its task."""
    tree, stream = _tree()
    assert run(stream).alerts == []
    result = run([*stream, _renewal(tree, 50, expires=200)])
    assert result.types() == ["UNREVOKED_TOKEN"]


def test_a_renewal_for_longer_than_the_maximum_is_a_long_lived_credential() -> None:
    tree, stream = _tree()
    limit = CONFIG.max_credential_ttl_us // 1_000_000
    assert run([*stream, _renewal(tree, 50, expires=50 + limit)]).types() == ["UNREVOKED_TOKEN"]
    long = _renewal(tree, 50, expires=50 + limit + 1)
    result = run([*stream, long])
    assert result.types() == ["LONG_LIVED_CREDENTIAL", "UNREVOKED_TOKEN"]
    [alert] = [a for a in result.alerts if a.alert_type == AlertType.LONG_LIVED_CREDENTIAL]
    assert alert.token_id == TOKEN
    assert alert.workload_id == CODER.actor.workload_id
    assert alert.evidence_event_ids == [long.event_id]
    # One alert per token: a second long renewal is the same alert.
    again = _renewal(tree, 60, expires=60 + limit + 5)
    assert run([*stream, long, again]).ids() == result.ids()


def test_renewals_survive_the_saved_state_and_format_1_reads_without_them() -> None:
    tree, stream = _tree()
    state = run([*stream, _renewal(tree, 50, expires=89)]).state
    saved = json.loads(state.to_json())
    assert saved["format"] == 2
    assert TreeState.from_json(state.to_json()) == state
    del saved["renewals"]
    saved["format"] = 1
    older = TreeState.from_json(json.dumps(saved).encode())
    assert older.renewals == {}
    assert older.tokens == state.tokens


def test_a_use_after_the_renewed_expiry_of_a_token_holding_the_separator_is_judged() -> None:
    """The use-after-expiry deadline's key joins the token id and the access id; a token id
    holding the separator still splits right, and its renewal still counts."""
    tree = Tree()
    token = "t\x1f2"
    stream = [
        issue(tree.code, token, at(24), expires=at(84)),
        renew(tree.code, token, at(50), expires=at(120)),
        use(tree.code, token, at(90)),
        use(tree.code, token, at(121)),
    ]
    used = [a for a in run(stream).alerts if a.alert_type == AlertType.TOKEN_USED_AFTER_EXPIRY]
    assert [a.event_time for a in used] == [at(121)]
