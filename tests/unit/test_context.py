"""Custody-context propagation: the compact string form and delegation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.context import ENV_VAR, HEADER, ContextFormatError, CustodyContext

_ids = st.text(min_size=1, max_size=40)


@given(_ids, st.lists(_ids, max_size=5))
def test_any_context_round_trips_through_its_string_form(root: str, children: list[str]) -> None:
    ctx = CustodyContext.new_root(root)
    for child_id in children:
        ctx = ctx.child(child_id)
        assert CustodyContext.parse(ctx.format()) == ctx
    assert CustodyContext.parse(str(ctx)) == ctx


def test_child_is_one_level_deeper_under_the_same_root() -> None:
    root = CustodyContext.new_root("r")
    child = root.child("c")
    grandchild = child.child()
    assert (child.root_task_id, child.task_id, child.parent_task_id, child.depth) == (
        "r",
        "c",
        "r",
        1,
    )
    assert grandchild.parent_task_id == "c"
    assert grandchild.depth == 2
    assert grandchild.task_id not in {"r", "c"}


def test_ids_with_separators_survive() -> None:
    ctx = CustodyContext.new_root("a;b%c").child("x;1;y")
    assert ";" not in ctx.format().split(";", 2)[2].replace(";", "", 2)
    assert CustodyContext.parse(ctx.format()) == ctx


def test_headers_and_environment_carry_the_context() -> None:
    ctx = CustodyContext.new_root("r").child("c")
    headers: dict[str, str] = {}
    ctx.inject(headers)
    assert CustodyContext.extract({k.upper(): v for k, v in headers.items()}) == ctx
    assert HEADER in headers
    env: dict[str, str] = {}
    ctx.to_environ(env)
    assert CustodyContext.from_environ(env) == ctx
    assert ENV_VAR in env
    assert CustodyContext.extract({}) is None
    assert CustodyContext.from_environ({}) is None


@pytest.mark.parametrize(
    "text",
    ["", "2;0;r;r;", "1;x;r;r;", "1;0;r;other;", "1;1;r;c;", "1;0;r;r;p", "1;0;;;", "1;-1;r;r;"],
)
def test_malformed_contexts_are_rejected(text: str) -> None:
    with pytest.raises(ContextFormatError):
        CustodyContext.parse(text)


def test_overlong_context_is_rejected() -> None:
    with pytest.raises(ContextFormatError, match="longer"):
        CustodyContext.parse("1;0;" + "r" * 5000 + ";" + "r" * 5000 + ";")
