"""``custody publish`` validation: every problem with its line, field and reason."""

from __future__ import annotations

import json

from producers.jsonlines import parse_event_lines
from tests.support.samples import json_form, one_of_each


def _lines(*events: dict[str, object]) -> list[str]:
    return [json.dumps(e) for e in events]


def test_valid_lines_give_events_with_their_line_numbers() -> None:
    lines = _lines(*(json_form(e) for e in one_of_each()))
    lines.insert(2, "   ")
    parsed = parse_event_lines(lines)
    assert parsed.errors == []
    count = len(one_of_each())
    assert [n for n, _ in parsed.events] == [1, 2, *range(4, count + 2)]
    assert all(not event.is_stamped for _, event in parsed.events)


def test_each_invalid_line_names_its_field_and_reason() -> None:
    good = json_form(one_of_each()[3])
    no_token = json_form(one_of_each()[3])
    del no_token["body"]["token_id"]
    naive_time = {**json_form(one_of_each()[0]), "event_time": "2026-11-29T10:00:00"}
    bad_type = {**json_form(one_of_each()[0]), "event_type": "TELEPORT"}
    no_type = {k: v for k, v in json_form(one_of_each()[0]).items() if k != "event_type"}
    lines = [
        json.dumps(good),
        json.dumps(no_token),
        "{not json",
        json.dumps(naive_time),
        json.dumps(bad_type),
        json.dumps(no_type),
        "[1, 2]",
        json.dumps(good),
    ]
    parsed = parse_event_lines(lines)
    found = {(e.line, e.field): e.reason for e in parsed.errors}
    assert set(found) == {
        (2, "body.token_id"),
        (3, "(line)"),
        (4, "event_time"),
        (5, "event_type"),
        (6, "event_type"),
        (7, "(line)"),
        (8, "event_id"),
    }
    assert found[(2, "body.token_id")] == "Field required"
    assert "timezone" in found[(4, "event_time")]
    assert "TASK_DECLARED" in found[(5, "event_type")]
    assert found[(8, "event_id")] == "duplicate of line 1"
    assert [n for n, _ in parsed.events] == [1]


def test_tree_position_rules_are_enforced() -> None:
    root_with_parent = {**json_form(one_of_each()[0]), "parent_task_id": "p"}
    child_without_parent = {**json_form(one_of_each()[0]), "depth": 2}
    parsed = parse_event_lines(_lines(root_with_parent, child_without_parent))
    reasons = [e.reason for e in parsed.errors]
    assert any("depth 0" in r for r in reasons)
    assert any("parent_task_id is required" in r for r in reasons)
    assert parsed.events == []


def test_explicit_chain_fields_are_validated() -> None:
    event = {**json_form(one_of_each()[0]), "seq": 0, "prev_hash": "ABC"}
    fields = {e.field for e in parse_event_lines(_lines(event)).errors}
    assert fields == {"seq", "prev_hash"}


def test_a_line_names_producer_instance_and_seq_together_or_neither() -> None:
    half = {**json_form(one_of_each()[0]), "producer_instance": "agent-7"}
    other = {**json_form(one_of_each()[1]), "seq": 4}
    parsed = parse_event_lines(_lines(half, other))
    assert [(e.line, e.reason) for e in parsed.errors] == [
        (1, "producer_instance and seq are given together or not at all"),
        (2, "producer_instance and seq are given together or not at all"),
    ]


def test_unhashable_event_type_is_a_line_error_not_a_crash() -> None:
    parsed = parse_event_lines(_lines({**json_form(one_of_each()[0]), "event_type": []}))
    assert [(e.line, e.field) for e in parsed.errors] == [(1, "event_type")]
