"""An access from an observe-only source (custody.observe_only, an agent runtime's spans
that carry no decisions) is recorded and never judged UNAUTHORIZED_ACCESS; every other
access still is."""

from __future__ import annotations

from schemas.models import OBSERVE_ONLY_ATTRIBUTE, AccessEvent
from tests.support.events import CODER, at, use
from tests.support.trees import Tree, run


def _undecided_access(tree: Tree, *, observe_only: bool) -> AccessEvent:
    access = use(tree.code, "tok-code", at(25), source=CODER, resource="db://y", decision_id=None)
    if not observe_only:
        return access
    attributes = {**access.attributes, OBSERVE_ONLY_ATTRIBUTE: "true"}
    return access.model_copy(update={"attributes": attributes})


def test_an_undecided_access_is_unauthorized_unless_its_source_is_observe_only() -> None:
    tree = Tree()
    judged = run([*tree.events, _undecided_access(tree, observe_only=False)])
    assert judged.types() == ["UNAUTHORIZED_ACCESS"]
    observed = run([*tree.events, _undecided_access(tree, observe_only=True)])
    assert observed.types() == []
