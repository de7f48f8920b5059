"""OPA decision-log events as ``AUTHZ_DECISION`` contract events.

One decision event (what OPA's ``decision_logs`` plugin uploads, or its console logger
prints) maps to one ``AUTHZ_DECISION``: OPA's ``decision_id``, its ``path`` as the policy,
the bundle revisions as the policy's version, ALLOW or DENY from ``result``, and the
resource, action and data scope the decision covers read from ``input`` through the
dotted paths of an :class:`OpaMapping`. The correlator judges accesses against these
(``UNAUTHORIZED_ACCESS``), so a decision without a resource or an action is rejected rather
than published half-known.

Paths OPA's mask policy erased or masked (``erased``, ``masked``: JSON pointers such as
``/input/password``) are never read: an erased value is absent and a masked one is
``**REDACTED**``, neither is evidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field

from processors.collect import records
from processors.collect.records import Rejection, text_of
from producers.context import ContextFormatError, CustodyContext
from schemas.secrets import kind_of_secret

DottedPaths = tuple[str, ...]
_Segments = tuple[str, ...]


class OpaMapping(BaseModel):
    """Where a decision event holds what the contract asks for: the defaults fit OPA's
    documented examples, Envoy's external-authorization input and inputs that carry a
    custody context; a mapping file overrides any of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_engine: str = Field(
        "opa", min_length=1, description="`policy_engine` of every decision of this source."
    )
    custody_key: str = Field(
        "custody",
        min_length=1,
        description="Key of `input` holding the custody context: an object "
        "`{root_task_id, task_id, parent_task_id, depth}`, an object `{context: "
        '"1;depth;root;task;parent"}` or that compact string itself. Its `tenant` names '
        "the tenant the record claims.",
    )
    context_label: str = Field(
        "custody_context",
        min_length=1,
        description="Label holding the compact custody context, for an OPA instance that "
        "decides for one task (read when `input` has no context).",
    )
    root_task_label: str = Field(
        "custody_root_task_id", min_length=1, description="Label holding the root task id."
    )
    task_label: str = Field(
        "custody_task_id", min_length=1, description="Label holding the task id."
    )
    parent_task_label: str = Field(
        "custody_parent_task_id", min_length=1, description="Label holding the parent task id."
    )
    depth_label: str = Field(
        "custody_depth", min_length=1, description="Label holding the task's depth (0: root)."
    )
    tenant_label: str = Field(
        "tenant",
        min_length=1,
        description="Label naming the tenant the record claims when `input` names none.",
    )
    resource: DottedPaths = Field(
        ("resource", "request.path", "path", "attributes.request.http.path"),
        min_length=1,
        description="Dotted paths in `input`, first present wins: the `resource` decided on.",
    )
    action: DottedPaths = Field(
        ("action", "request.method", "method", "operation", "attributes.request.http.method"),
        min_length=1,
        description="Dotted paths in `input`, first present wins: the `action` decided on.",
    )
    data_scope: DottedPaths = Field(
        ("data_scope", "scopes"),
        description="Dotted paths in `input`, first present wins: the `data_scope` (a list "
        "of strings, or one space-separated string as OAuth writes scopes); none: `[]`.",
    )
    subject: DottedPaths = Field(
        (
            "custody.workload_id",
            "subject",
            "principal",
            "user",
            "sub",
            "attributes.source.principal",
        ),
        description="Dotted paths in `input`, first present wins: who asked (`context."
        "subject`, and the key of the synthetic task of a decision without custody context).",
    )


_TRUE_FALSE = {True: "ALLOW", False: "DENY", "true": "ALLOW", "false": "DENY"}
_ALLOW_KEYS = ("allow", "allowed")
_REASON_KEYS = ("reasons", "deny", "reason", "msg")
_MAX_REASONS = 64
_TEXT_LIMIT = 8192


@lru_cache(maxsize=64)
def _compiled(paths: DottedPaths) -> tuple[tuple[str, _Segments, _Segments], ...]:
    """Each dotted path with its keys, and its keys from the event's root (for the erased
    and masked pointers): split once per mapping, not once per decision."""
    return tuple((path, keys := tuple(path.split(".")), ("input", *keys)) for path in paths)


def _text(value: Any) -> str | None:
    # A string, the common case, without text_of's type dispatch: this runs per field.
    if type(value) is str:
        return value[:512] or None
    return text_of(value)


def _pointer_segments(pointer: str) -> _Segments:
    # OPA writes its pointers' keys path-escaped ("/input/foo%2Fbar"); RFC 6901 escapes
    # are accepted too, so a pointer names the same key however it was written.
    return tuple(
        unquote(part.replace("~1", "/").replace("~0", "~")) for part in pointer.split("/")[1:]
    )


def _hidden_paths(entry: Mapping[str, Any]) -> tuple[frozenset[_Segments], dict[str, str]]:
    """The erased and masked paths as key tuples, and their context entries; raises
    ValueError when a list is not one of pointer strings."""
    hidden: set[_Segments] = set()
    context: dict[str, str] = {}
    for key in ("erased", "masked"):
        pointers = entry.get(key)
        if pointers is None:
            continue
        if not isinstance(pointers, list) or not all(isinstance(p, str) for p in pointers):
            raise ValueError(f"{key} is not a list of JSON pointer strings")
        if pointers:
            hidden.update(_pointer_segments(p) for p in pointers)
            context[f"opa.{key}"] = ",".join(pointers)[:_TEXT_LIMIT]
    return frozenset(hidden), context


def _is_hidden(hidden: frozenset[_Segments], segments: _Segments) -> bool:
    # A value is hidden when its own path or any enclosing one was erased or masked.
    return bool(hidden) and any(segments[:n] in hidden for n in range(1, len(segments) + 1))


def _at(value: Any, segments: _Segments) -> Any:
    for key in segments:
        # Parsed JSON holds dicts; a dict check costs a tenth of an ABC check.
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _first(
    input_: Any, paths: DottedPaths, hidden: frozenset[_Segments], text: bool
) -> tuple[Any, list[str]]:
    """The first present value at ``paths`` in ``input`` (as text when ``text``: a nested
    value does not count), and the paths skipped because OPA hid them."""
    skipped: list[str] = []
    for path, segments, pointer in _compiled(paths):
        if hidden and _is_hidden(hidden, pointer):
            skipped.append(path)
            continue
        value = _at(input_, segments)
        if text:
            value = _text(value)
        if value is not None:
            return value, skipped
    return None, skipped


def _missing(field: str, paths: DottedPaths, skipped: list[str]) -> Rejection:
    tried = ", ".join(f"input.{p}" for p in paths)
    hidden = f" (erased or masked by OPA: {', '.join(skipped)})" if skipped else ""
    return Rejection(f"opa_{field}_missing", f"no {field} at {tried}{hidden}")


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 timestamp (nanoseconds, ``Z`` or an offset) as an aware datetime, or
    None when it is not one or names no timezone."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        # RFC 3339 allows what fromisoformat refuses: a lowercase t or z, a leap second.
        match = _RFC3339.fullmatch(text)
        if match is None:
            return None
        year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
        micros = int((match.group(7) or "0")[:6].ljust(6, "0"))
        try:
            zone = UTC
            if match.group(9):
                offset = timedelta(hours=int(match.group(10)), minutes=int(match.group(11)))
                zone = timezone(-offset if match.group(9) == "-" else offset)
            # A leap second (second 60) is the last instant of its minute.
            when = datetime(year, month, day, hour, minute, min(second, 59), micros, zone)
        except ValueError:
            return None
        if second == 60:
            when = when.replace(microsecond=999999)
    return when if when.utcoffset() is not None else None


_JSON_TYPES = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages that must not show the value."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _verdict(value: Any) -> str | None:
    # Checked by type first: 1 == True, and a list or an object cannot be looked up.
    return _TRUE_FALSE.get(value) if isinstance(value, bool | str) else None


def _decision(
    entry: Mapping[str, Any], hidden: frozenset[_Segments]
) -> tuple[str, list[str]] | Rejection:
    """ALLOW or DENY and the reasons the result carries."""
    if hidden and _is_hidden(hidden, ("result",)):
        return Rejection("opa_result_erased", "OPA's mask policy erased or masked /result")
    result = entry.get("result")
    if result is None:
        # OPA omits the result of an undefined decision; the caller saw no allow.
        error = entry.get("error")
        code = text_of(error.get("code")) if isinstance(error, dict) else None
        return "DENY", [f"error: {code}" if code else "undefined"]
    if isinstance(result, dict):
        return _object_decision(result, hidden)
    decision = _verdict(result)
    if decision is None:
        return Rejection(
            "opa_result_unrecognized",
            f'result ({json_type(result)}) is neither a boolean, "true"/"false" nor an '
            "object with allow or allowed",
        )
    return decision, []


def _object_decision(
    result: Mapping[str, Any], hidden: frozenset[_Segments]
) -> tuple[str, list[str]] | Rejection:
    for key in _ALLOW_KEYS:
        if key not in result:
            continue
        if hidden and _is_hidden(hidden, ("result", key)):
            return Rejection(
                "opa_result_erased", f"OPA's mask policy erased or masked /result/{key}"
            )
        decision = _verdict(result[key])
        if decision is None:
            return Rejection("opa_result_unrecognized", f"result.{key} is not a boolean")
        return decision, _reasons(result, hidden)
    return Rejection("opa_result_unrecognized", "result is an object without allow or allowed")


def _reasons(result: Mapping[str, Any], hidden: frozenset[_Segments]) -> list[str]:
    reasons: list[str] = []
    for key in _REASON_KEYS:
        value = result.get(key)
        if value is None or (hidden and _is_hidden(hidden, ("result", key))):
            continue
        items: Iterable[Any] = value if isinstance(value, list) else (value,)
        reasons.extend(
            text for item in items if isinstance(item, str) and (text := text_of(item, _TEXT_LIMIT))
        )
    return reasons[:_MAX_REASONS]


def _policy_version(entry: Mapping[str, Any]) -> str:
    bundles = entry.get("bundles")
    if isinstance(bundles, dict) and bundles:
        versions = []
        for name, info in bundles.items():
            revision = text_of(info.get("revision")) if isinstance(info, dict) else None
            versions.append(f"{name}@{revision or 'unversioned'}")
        return ",".join(sorted(versions))[:512]
    # OPA before multi-bundle support logged one top-level revision.
    return text_of(entry.get("revision"), 512) or "unversioned"


def _scopes(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [text for item in value if (text := text_of(item)) is not None]
    return []


def _invalid(where: str, problem: str) -> Rejection:
    return Rejection("opa_custody_context_invalid", f"{where}: {problem}")


def _parsed(text: Any, where: str) -> CustodyContext | Rejection:
    if not isinstance(text, str):
        return _invalid(where, "the compact custody context is not a string")
    try:
        return CustodyContext.parse(text)
    except ContextFormatError as exc:
        return _invalid(where, str(exc))


def _from_fields(
    root: Any, task: Any, parent: Any, depth: Any, where: str
) -> CustodyContext | Rejection:
    for name, value in (("root_task_id", root), ("task_id", task)):
        if not isinstance(value, str) or not value:
            return _invalid(where, f"{name} is not a non-empty string")
    if parent is not None and not isinstance(parent, str):
        return _invalid(where, "parent_task_id is not a string")
    # Labels are strings, so a depth may come as one.
    if isinstance(depth, str) and depth.isascii() and depth.isdigit():
        depth = int(depth)
    elif depth is None:
        depth = 0
    if not isinstance(depth, int) or isinstance(depth, bool):
        return _invalid(where, "depth is not a non-negative integer")
    try:
        return CustodyContext(root, task, depth, parent or None)
    except ContextFormatError as exc:
        return _invalid(where, str(exc))


_CONTEXT_FIELDS = ("context", "root_task_id", "task_id", "parent_task_id", "depth")


def _input_context(
    input_: Any, key: str, hidden: frozenset[_Segments]
) -> CustodyContext | Rejection | None:
    if not isinstance(input_, dict):
        return None
    where = f"input.{key}"
    # A masked id reads as "**REDACTED**", a valid-looking id of the wrong task.
    if hidden and any(
        path[:2] == ("input", key) and (len(path) == 2 or path[2] in _CONTEXT_FIELDS)
        for path in hidden
    ):
        return _invalid(where, "erased or masked by OPA's mask policy")
    value = input_.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return _parsed(value, where)
    if not isinstance(value, dict):
        return _invalid(where, "neither an object nor a compact custody context")
    if "context" in value:
        return _parsed(value["context"], f"{where}.context")
    if not any(name in value for name in _CONTEXT_FIELDS):
        # An object naming only the workload or the tenant carries no position in a tree.
        return None
    return _from_fields(
        value.get("root_task_id"),
        value.get("task_id"),
        value.get("parent_task_id"),
        value.get("depth"),
        where,
    )


def _label_context(
    labels: Mapping[str, Any], mapping: OpaMapping
) -> CustodyContext | Rejection | None:
    if mapping.context_label in labels:
        return _parsed(labels[mapping.context_label], f"labels.{mapping.context_label}")
    if mapping.task_label not in labels:
        return None
    return _from_fields(
        labels.get(mapping.root_task_label),
        labels[mapping.task_label],
        labels.get(mapping.parent_task_label),
        labels.get(mapping.depth_label),
        "labels",
    )


def tenant_named(entry: Mapping[str, Any], mapping: OpaMapping) -> str | None:
    """The tenant a decision event claims (``input.<custody_key>.tenant``, else the tenant
    label), or None: the service refuses a record claiming another tenant than its token's."""
    input_ = entry.get("input")
    custody = input_.get(mapping.custody_key) if isinstance(input_, dict) else None
    if isinstance(custody, dict):
        hidden, _ = _hidden_paths_or_empty(entry)
        if not _is_hidden(hidden, ("input", mapping.custody_key, "tenant")):
            tenant = _text(custody.get("tenant"))
            if tenant is not None:
                return tenant
    labels = entry.get("labels")
    return _text(labels.get(mapping.tenant_label)) if isinstance(labels, dict) else None


def _hidden_paths_or_empty(
    entry: Mapping[str, Any],
) -> tuple[frozenset[_Segments], dict[str, str]]:
    # map_decision rejects a record whose lists are malformed; its claim is still answered.
    try:
        return _hidden_paths(entry)
    except ValueError:
        return frozenset(), {}


def _identity(entry: Mapping[str, Any]) -> tuple[str, datetime, str] | Rejection:
    """The decision's id, time and policy."""
    decision_id = _text(entry.get("decision_id"))
    if decision_id is None:
        return Rejection("opa_decision_id_missing", "no decision_id (a string)")
    stamp = entry.get("timestamp")
    if stamp is None:
        return Rejection("opa_timestamp_missing", "no timestamp")
    when = parse_timestamp(stamp) if isinstance(stamp, str) else None
    if when is None:
        return Rejection(
            "opa_timestamp_invalid", "timestamp is not an RFC 3339 time with a timezone"
        )
    path = _text(entry.get("path"))
    # OPA's docs ask receivers to tolerate "/http/example/authz/allow": one policy, one id.
    # An ad-hoc query (the Query API) names no path: the query is the policy asked.
    policy_id = (path.lstrip("/") or path) if path else text_of(entry.get("query"))
    if policy_id is None:
        return Rejection("opa_path_missing", "neither path nor query names the policy")
    return decision_id, when, policy_id


def _covered(
    input_: Any, mapping: OpaMapping, hidden: frozenset[_Segments]
) -> tuple[str, str, list[str], str | None] | Rejection:
    """The resource, action and data scope the decision covers, and who asked."""
    resource, skipped = _first(input_, mapping.resource, hidden, True)
    if resource is None:
        return _missing("resource", mapping.resource, skipped)
    action, skipped = _first(input_, mapping.action, hidden, True)
    if action is None:
        return _missing("action", mapping.action, skipped)
    scopes, _ = _first(input_, mapping.data_scope, hidden, False)
    subject, _ = _first(input_, mapping.subject, hidden, True)
    return resource, action, _scopes(scopes), subject


def _attributes(
    entry: Mapping[str, Any], origin: records.Origin, synthetic: bool
) -> dict[str, str]:
    attributes = {records.SOURCE_ATTRIBUTE: origin.source}
    if synthetic:
        attributes[records.SYNTHETIC_ATTRIBUTE] = "true"
    for key in ("requested_by", "req_id"):
        value = _text(entry.get(key))
        if value is not None:
            attributes[f"opa.{key}"] = value
    return attributes


def map_decision(
    entry: Mapping[str, Any], origin: records.Origin, mapping: OpaMapping
) -> records.Outcome:
    """One OPA decision event as an ``AUTHZ_DECISION`` (its id derived from the origin and
    OPA's ``decision_id``, so a retried upload maps to the same event), or a
    :class:`Rejection` naming what is missing or malformed; :class:`records.Skipped` for a line of
    OPA's console that the server logged about itself (no decision)."""
    if "decision_id" not in entry and "msg" in entry and "level" in entry:
        return records.Skipped("opa_log_line_not_a_decision")
    identity = _identity(entry)
    if isinstance(identity, Rejection):
        return identity
    try:
        hidden, context = _hidden_paths(entry)
    except ValueError as exc:
        return Rejection("opa_masking_invalid", str(exc))
    verdict = _decision(entry, hidden)
    if isinstance(verdict, Rejection):
        return verdict
    input_ = entry.get("input")
    covered = _covered(input_, mapping, hidden)
    if isinstance(covered, Rejection):
        return covered
    labels = entry.get("labels")
    if not isinstance(labels, dict):
        labels = {}
    found = _input_context(input_, mapping.custody_key, hidden)
    if found is None:
        found = _label_context(labels, mapping)
    if isinstance(found, Rejection):
        return found

    decision_id, when, policy_id = identity
    resource, action, data_scope, subject = covered
    attributes = _attributes(entry, origin, synthetic=found is None)
    if found is None:
        # A secret-looking subject would be redacted out of the task id, joining every such
        # decision into one tree: the decision stands alone instead.
        key = decision_id if subject is None or kind_of_secret(subject) else subject
        root = records.synthetic_task_id(origin, "opa-subject", key)
        found = CustodyContext(root, root)
    path = _text(entry.get("path"))
    if path is not None:
        context["opa.path"] = path
    if subject is not None:
        context["subject"] = subject
    instance = _text(labels.get("id")) or origin.source
    decision, reasons = verdict
    event = records.build_event(
        {
            "event_id": records.event_id_for(origin, "opa", decision_id),
            "event_type": "AUTHZ_DECISION",
            "event_time": when,
            "tenant": origin.tenant,
            "producer": origin.source,
            "root_task_id": found.root_task_id,
            "task_id": found.task_id,
            "parent_task_id": found.parent_task_id,
            "depth": found.depth,
            "actor": {
                "workload_id": f"opa://{instance}",
                "kind": "POLICY_ENGINE",
                "instance_id": instance,
            },
            "attributes": attributes,
            "body": {
                "decision_id": decision_id,
                "policy_engine": mapping.policy_engine,
                "policy_id": policy_id,
                "policy_version": _policy_version(entry),
                "decision": decision,
                "resource": resource,
                "action": action,
                "data_scope": data_scope,
                "reasons": reasons,
                "context": context,
            },
        },
        "opa_contract_violation",
    )
    return event if isinstance(event, Rejection) else records.Mapped((event,))


def decision_outcomes(
    items: Iterable[Any], origin: records.Origin, mapping: OpaMapping
) -> Iterator[tuple[records.Outcome, bytes | None]]:
    """Each item's outcome, with the bytes its dead letter keeps (None when it is not one):
    a decision event (an object) mapped, an outcome a saved log's reader already made
    (:mod:`~processors.collect.opa_files`) as it is, any other value rejected. Used alike
    for an upload's array and an imported log."""
    for index, item in enumerate(items):
        if isinstance(item, Rejection | records.Skipped):
            yield item, None
            continue
        outcome: records.Outcome = (
            map_decision(item, origin, mapping)
            if isinstance(item, dict)
            else Rejection("opa_malformed_record", f"item {index} of the upload is not an object")
        )
        # A dead letter keeps the record as it came; a published one needs no copy.
        yield outcome, json.dumps(item).encode() if isinstance(outcome, Rejection) else None
