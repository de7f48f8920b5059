"""The correlator's saved state carries a format version: older forms read, newer fail."""

from __future__ import annotations

import json

import pytest

from processors.correlation.chains import (
    ChainLink,
    ChainState,
    pending_from_json,
    pending_to_json,
)
from processors.correlation.engine import CorrelationConfig
from processors.correlation.state_format import STATE_FORMAT, StateFormatError
from processors.correlation.tree import RevocationRec, TreeState


def _tree() -> TreeState:
    state = TreeState("acme", "root-1", last_event_us=1_000)
    state.revocations["tok-1"] = RevocationRec(
        "tok-1", "ev-9", 900, "TASK_ENDED", "spiffe://acme/broker"
    )
    state.seen_event_ids = {"ev-1", "ev-9"}
    state.schedule(5_000, "unrevoked", "tok-1")
    return state


def _link(seq: int) -> ChainLink:
    return ChainLink(f"ev-{seq}", "acme", "root-1", "inst-1", seq, None, "ab" * 32, seq)


def _with_format(raw: bytes, version: int | None) -> bytes:
    data = json.loads(raw)
    if version is None:
        del data["format"]
    else:
        data["format"] = version
    return json.dumps(data).encode()


def test_saved_tree_state_names_its_format_and_reads_back() -> None:
    raw = _tree().to_json()
    assert json.loads(raw)["format"] == STATE_FORMAT
    assert TreeState.from_json(raw) == _tree()


def test_tree_state_saved_before_versioning_reads_as_today() -> None:
    assert TreeState.from_json(_with_format(_tree().to_json(), None)) == _tree()


@pytest.mark.parametrize("version", [STATE_FORMAT + 1, -1, "1"])
def test_tree_state_of_an_unknown_format_fails_naming_the_remedy(version: object) -> None:
    data = json.loads(_tree().to_json())
    data["format"] = version
    with pytest.raises(StateFormatError, match="tree state") as raised:
        TreeState.from_json(json.dumps(data).encode())
    if version == STATE_FORMAT + 1:
        assert "docs/operations.md" in str(raised.value)


def test_chain_prefix_and_pending_links_carry_the_format() -> None:
    config = CorrelationConfig.of(60, 3600)
    chain = ChainState("inst-1", verified_seq=3, last_hash="cd" * 32, last_event_id="ev-3")
    pending = pending_to_json(_link(5), 7_000)
    assert json.loads(chain.to_json())["format"] == STATE_FORMAT
    assert json.loads(pending)["format"] == STATE_FORMAT
    link, due = pending_from_json(pending)
    assert (link, due) == (_link(5), 7_000)
    old = ChainState.from_json(
        _with_format(chain.to_json(), None),
        [pending_from_json(_with_format(pending, None))],
        config,
    )
    assert (old.verified_seq, old.pending, old.due) == (3, {5: _link(5)}, {5: 7_000})


def test_chain_state_of_a_newer_format_fails() -> None:
    chain = ChainState("inst-1")
    with pytest.raises(StateFormatError, match="chain state"):
        ChainState.from_json(
            _with_format(chain.to_json(), STATE_FORMAT + 1), [], CorrelationConfig.of(60, 3600)
        )
    with pytest.raises(StateFormatError, match="pending chain link"):
        pending_from_json(_with_format(pending_to_json(_link(2), 1), STATE_FORMAT + 1))
