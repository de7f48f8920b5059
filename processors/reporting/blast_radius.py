"""``custody blast-radius``: everything a workload identity, or one token, could reach and
did reach in a tenant over a period.

*Could reach* is what was granted: the credentials issued to the identity (or the token
and the tokens rotated from it) with their scopes, and the tasks delegated on from its
tasks, hop by hop down each custody tree, with the scopes each delegation passed.
*Did reach* is what the ACCESS events show: the tools and resources used with those
credentials, by the identity itself, or in the tasks delegated from it, with their
outcomes. Beside them: the humans involved (those the tasks ran for, those who approved
them) and the alerts raised on the way. The gap between the two is the scopes granted
that no access used.

For a token the subject's tasks are the one task that held it; the delegations are those
below that task and the accesses those made with the token (or its rotations) or in the
delegated tasks.

Every query is bounded by the tenant and the period, and reads only the custody trees the
subject acted in: for an identity, the trees where it emitted an event (the ``events``
bloom filter on ``actor_workload_id`` skips the granules it is absent from), for a token,
the tree holding its credential (the bloom filter on ``credentials.token_id``). The other
tables are then read by their sorting key's prefix, ``(tenant, root_task_id)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from processors.serving.reader import Reader
from processors.serving.records import ALERT_COLUMNS, Alert, Record, read
from processors.storage.backend import iso

IDENTITY, TOKEN = "identity", "token"


class NotFound(LookupError):
    """No stored event (or credential) of the tenant names the identity or token."""


@dataclass(frozen=True, slots=True)
class HeldCredential(Record):
    """A credential the subject held: its scopes, its lifetime and its tree."""

    root_task_id: str
    token_id: str
    task_id: str
    token_subject: str
    credential_kind: str
    audience: str
    scopes: list[str]
    issued_at: str
    expires_at: str
    parent_token_id: str | None
    state: str
    revoked_at: str | None
    revocation_reason: str | None


@dataclass(frozen=True, slots=True)
class DelegatedTask(Record):
    """A task delegated below one of the subject's tasks; ``hops`` is 1 for a task its own
    task delegated, 2 for one delegated on from that, and so on."""

    root_task_id: str
    child_task_id: str
    parent_task_id: str
    delegator: str
    delegatee: str
    scopes: list[str]
    delegated_at: str
    hops: int


@dataclass(frozen=True, slots=True)
class Reach(Record):
    """What one workload did with one tool on one resource: the accesses by outcome."""

    workload_id: str
    tool: str
    resource: str
    action: str
    outcomes: dict[str, int]
    scopes: list[str]
    tokens: int
    first: str
    last: str


@dataclass(frozen=True, slots=True)
class Human(Record):
    """A human involved: ``roles`` holds ``on_behalf_of`` (a task or access ran for them)
    and/or ``approver``; ``tasks`` counts the tasks concerned."""

    name: str
    roles: list[str]
    tasks: int


@dataclass(frozen=True, slots=True)
class BlastRadius:
    """The blast radius of an identity or a token over a period."""

    kind: str
    subject: str
    tenant: str
    since: str | None
    until: str | None
    identity: str
    trees: int
    tasks: list[str]
    credentials: list[HeldCredential]
    delegations: list[DelegatedTask]
    accesses: list[Reach]
    humans: list[Human]
    alerts: list[Alert]

    @property
    def granted_scopes(self) -> list[str]:
        """The scopes of the credentials held."""
        return sorted({scope for c in self.credentials for scope in c.scopes})

    @property
    def delegated_scopes(self) -> list[str]:
        """The scopes passed on by the delegations below the subject's tasks."""
        return sorted({scope for d in self.delegations for scope in d.scopes})

    @property
    def used_scopes(self) -> list[str]:
        """The scopes the accesses named."""
        return sorted({scope for reach in self.accesses for scope in reach.scopes})

    @property
    def unused_scopes(self) -> list[str]:
        """Could reach but did not: granted or delegated, never used by an access."""
        could = set(self.granted_scopes) | set(self.delegated_scopes)
        return sorted(could - set(self.used_scopes))

    def as_json(self) -> dict[str, Any]:
        """The documented JSON object of ``custody blast-radius --json``."""
        return {
            "subject": {
                "kind": self.kind,
                "id": self.subject,
                "identity": self.identity,
                "tenant": self.tenant,
                "from": self.since,
                "to": self.until,
            },
            "counts": {
                "trees": self.trees,
                "tasks": len(self.tasks),
                "credentials": len(self.credentials),
                "delegated_tasks": len(self.delegations),
                "accesses": sum(sum(r.outcomes.values()) for r in self.accesses),
                "humans": len(self.humans),
                "alerts": len(self.alerts),
            },
            "scopes": {
                "granted": self.granted_scopes,
                "delegated": self.delegated_scopes,
                "used": self.used_scopes,
                "unused": self.unused_scopes,
            },
            "tasks": self.tasks,
            "credentials": [c.as_json() for c in self.credentials],
            "delegations": [d.as_json() for d in self.delegations],
            "accesses": [r.as_json() for r in self.accesses],
            "humans": [h.as_json() for h in self.humans],
            "alerts": [a.as_json() for a in self.alerts],
        }


# The queries are composed of constant fragments (the trees' and the period's filters);
# every value is a bound parameter ({name:Type}): S608's injection does not apply.
_SINCE = "parseDateTime64BestEffort({since:String}, 6, 'UTC')"
_UNTIL = "parseDateTime64BestEffort({until:String}, 6, 'UTC')"

# The identity's trees: its own events, found through the bloom filter on actor_workload_id.
_IDENTITY_TREES = """
SELECT root_task_id FROM events
PREWHERE tenant = {tenant:String} AND actor_workload_id = {identity:String}
WHERE 1 {event_period}"""

_IDENTITY_EVENTS = """
SELECT count() AS events FROM events
PREWHERE tenant = {tenant:String} AND actor_workload_id = {identity:String}
WHERE 1 {event_period}"""

_TREES_HOLDING = """
SELECT root_task_id FROM credentials
PREWHERE tenant = {tenant:String} AND token_id = {token:String}"""

_IN_TREES = "tenant = {tenant:String} AND root_task_id IN ({trees})"

_CREDENTIALS = """
SELECT root_task_id, token_id, task_id, token_subject, credential_kind, audience, scopes,
       issued_at, expires_at, parent_token_id,
       if(state = 'ACTIVE' AND expires_at <= now64(6), 'EXPIRED', state) AS state,
       revoked_at, revocation_reason
FROM credentials PREWHERE {in_trees}
WHERE {whose} {issued_period}
ORDER BY issued_at, token_id"""

_TASKS = """
SELECT root_task_id, task_id, workload_id, on_behalf_of
FROM tasks PREWHERE {in_trees}"""

_DELEGATIONS = """
SELECT root_task_id, parent_task_id, child_task_id, delegator, delegatee, scopes,
       delegated_at
FROM delegations PREWHERE {in_trees}
WHERE 1 {delegated_period}
ORDER BY delegated_at, child_task_id"""

# One row per task, workload, token, tool, resource, action and outcome: the accesses of
# the trees are counted in ClickHouse, not shipped one by one.
_ACCESSES = """
SELECT root_task_id, task_id, actor_workload_id AS workload_id,
       actor_on_behalf_of AS on_behalf_of, token_id, tool, resource, action, outcome,
       count() AS accesses, groupUniqArrayArray(data_scope) AS scopes,
       min(event_time) AS first, max(event_time) AS last
FROM events PREWHERE {in_trees}
WHERE event_type = 'ACCESS' {event_period}
GROUP BY root_task_id, task_id, workload_id, on_behalf_of, token_id, tool, resource,
         action, outcome"""

_APPROVALS = """
SELECT root_task_id, task_id, approver FROM events PREWHERE {in_trees}
WHERE event_type = 'APPROVAL' {event_period}"""

_ALERTS = f"""
SELECT {ALERT_COLUMNS} FROM alerts PREWHERE {{in_trees}}
WHERE 1 {{event_period}}
ORDER BY event_time, alert_id"""  # noqa: S608


def _period(column: str, since: datetime | None, until: datetime | None) -> str:
    """The condition keeping ``column`` within the period (``[since, until)``)."""
    bounds = []
    if since is not None:
        bounds.append(f"AND {column} >= {_SINCE}")
    if until is not None:
        bounds.append(f"AND {column} < {_UNTIL}")
    return " ".join(bounds)


@dataclass(frozen=True, slots=True)
class _Query:
    """The fragments and parameters every query of one blast radius shares."""

    trees: str
    params: dict[str, object]
    since: datetime | None
    until: datetime | None

    def sql(self, template: str, **fragments: str) -> str:
        """``template`` with its ``{fragment}`` placeholders filled (replaced, not
        ``format``-ed: the ``{name:Type}`` parameters stay as they are)."""
        filled = {
            "in_trees": _IN_TREES.replace("{trees}", self.trees),
            "event_period": _period("event_time", self.since, self.until),
            "issued_period": _period("issued_at", self.since, self.until),
            "delegated_period": _period("delegated_at", self.since, self.until),
            **fragments,
        }
        for name, fragment in filled.items():
            template = template.replace("{" + name + "}", fragment)
        return template

    def rows(self, reader: Reader, template: str, **fragments: str) -> list[dict[str, Any]]:
        return reader.select(self.sql(template, **fragments), self.params)


def blast_radius(
    reader: Reader,
    tenant: str,
    identity: str | None = None,
    token: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> BlastRadius:
    """The blast radius of a workload ``identity`` or of a ``token`` (exactly one of
    them) in ``tenant`` over ``[since, until)`` (unbounded where None); NotFound when
    the tenant stores nothing of it."""
    if (identity is None) == (token is None):
        raise ValueError("name exactly one of an identity and a token")
    params: dict[str, object] = {"tenant": tenant}
    if since is not None:
        params["since"] = iso(since)
    if until is not None:
        params["until"] = iso(until)
    if token is not None:
        return _of_token(reader, token, _Query("", params, since, until))
    return _of_identity(reader, str(identity), _Query("", params, since, until))


def _of_identity(reader: Reader, identity: str, base: _Query) -> BlastRadius:
    params = {**base.params, "identity": identity}
    count = reader.select(base.sql(_IDENTITY_EVENTS), params)
    if not count or not count[0]["events"]:
        raise NotFound(f"no stored event of tenant {params['tenant']} has actor {identity}")
    query = _Query(base.sql(_IDENTITY_TREES), params, base.since, base.until)
    credentials = read(
        reader,
        HeldCredential,
        query.sql(_CREDENTIALS, whose="token_subject = {identity:String}"),
        params,
    )
    tasks = query.rows(reader, _TASKS)
    own = {(t["root_task_id"], t["task_id"]) for t in tasks if t["workload_id"] == identity}
    subject = _Subject(IDENTITY, identity, identity, own, credentials, None)
    return _gather(reader, query, subject, tasks)


def _of_token(reader: Reader, token: str, base: _Query) -> BlastRadius:
    params = {**base.params, "token": token}
    if not reader.select(f"{_TREES_HOLDING} LIMIT 1", params):
        raise NotFound(f"no stored credential of tenant {params['tenant']} has token id {token}")
    # The token's credential is found whenever it was issued; the period bounds the rest.
    whole = _Query(_TREES_HOLDING, params, None, None)
    query = _Query(_TREES_HOLDING, params, base.since, base.until)
    stored = read(reader, HeldCredential, whole.sql(_CREDENTIALS, whose="1"), params)
    lineage = _rotations(token, stored)
    credentials = [c for c in stored if (c.root_task_id, c.token_id) in lineage]
    first = next(c for c in credentials if c.token_id == token)
    own = {(c.root_task_id, c.task_id) for c in credentials if c.token_id == token}
    tasks = query.rows(reader, _TASKS)
    subject = _Subject(TOKEN, token, first.token_subject, own, credentials, lineage)
    return _gather(reader, query, subject, tasks)


def _rotations(token: str, stored: list[HeldCredential]) -> set[tuple[str, str]]:
    """The token and every token issued from it, directly or through a rotation."""
    children: dict[tuple[str, str], list[str]] = {}
    for credential in stored:
        if credential.parent_token_id is not None:
            key = (credential.root_task_id, credential.parent_token_id)
            children.setdefault(key, []).append(credential.token_id)
    found: set[tuple[str, str]] = set()
    frontier = [(c.root_task_id, c.token_id) for c in stored if c.token_id == token]
    while frontier:
        key = frontier.pop()
        if key in found:
            continue
        found.add(key)
        frontier += [(key[0], child) for child in children.get(key, [])]
    return found


def _delegated(rows: Iterable[Mapping[str, Any]], own: set[tuple[str, str]]) -> list[DelegatedTask]:
    """The delegations below ``own`` tasks, hop by hop, in delegation-time order."""
    below: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        below.setdefault((row["root_task_id"], row["parent_task_id"]), []).append(row)
    found: list[DelegatedTask] = []
    seen = set(own)
    frontier, hops = sorted(own), 1
    while frontier:
        following: list[tuple[str, str]] = []
        for parent in frontier:
            for row in below.get(parent, []):
                child = (row["root_task_id"], row["child_task_id"])
                if child in seen:
                    continue
                seen.add(child)
                following.append(child)
                found.append(
                    DelegatedTask(
                        row["root_task_id"],
                        row["child_task_id"],
                        row["parent_task_id"],
                        row["delegator"],
                        row["delegatee"],
                        row["scopes"],
                        row["delegated_at"],
                        hops,
                    )
                )
        frontier, hops = following, hops + 1
    found.sort(key=lambda d: (d.delegated_at, d.child_task_id))
    return found


@dataclass(frozen=True, slots=True)
class _Subject:
    """Whose blast radius: its kind and id, the identity (a token's subject), its own
    tasks and credentials as (root, id) keys; ``tokens`` None: every credential found,
    and the identity's own accesses whatever the token."""

    kind: str
    id: str
    identity: str
    own: set[tuple[str, str]]
    credentials: list[HeldCredential]
    tokens: set[tuple[str, str]] | None


def _gather(
    reader: Reader, query: _Query, subject: _Subject, tasks: list[dict[str, Any]]
) -> BlastRadius:
    """What the subject's tasks, credentials and delegations reached, and who and which
    alerts were involved."""
    kind, identity, own, credentials = (
        subject.kind,
        subject.identity,
        subject.own,
        subject.credentials,
    )
    held = subject.tokens
    if held is None:
        held = {(c.root_task_id, c.token_id) for c in credentials}
    delegations = _delegated(query.rows(reader, _DELEGATIONS), own)
    delegated = {(d.root_task_id, d.child_task_id) for d in delegations}
    involved = own | delegated

    def ours(row: Mapping[str, Any]) -> bool:
        root = row["root_task_id"]
        return (
            (root, row["token_id"]) in held
            or (root, row["task_id"]) in delegated
            or (kind == IDENTITY and row["workload_id"] == identity)
        )

    accesses = [row for row in query.rows(reader, _ACCESSES) if ours(row)]
    humans: dict[str, tuple[set[str], set[tuple[str, str]]]] = {}

    def involve(name: str | None, role: str, task: tuple[str, str]) -> None:
        if name:
            roles, concerned = humans.setdefault(name, (set(), set()))
            roles.add(role)
            concerned.add(task)

    for task in tasks:
        key = (task["root_task_id"], task["task_id"])
        if key in involved:
            involve(task["on_behalf_of"], "on_behalf_of", key)
    for row in accesses:
        involve(row["on_behalf_of"], "on_behalf_of", (row["root_task_id"], row["task_id"]))
    for row in query.rows(reader, _APPROVALS):
        key = (row["root_task_id"], row["task_id"])
        if key in involved:
            involve(row["approver"], "approver", key)
    alerts = [
        alert
        for alert in read(reader, Alert, query.sql(_ALERTS), query.params)
        if (alert.root_task_id, alert.token_id) in held
        or (alert.root_task_id, alert.task_id) in involved
        or (kind == IDENTITY and alert.workload_id == identity)
    ]
    trees = {root for root, _ in involved} | {c.root_task_id for c in credentials}
    return BlastRadius(
        kind=kind,
        subject=subject.id,
        tenant=str(query.params["tenant"]),
        since=_text(query.params.get("since")),
        until=_text(query.params.get("until")),
        identity=identity,
        trees=len(trees),
        tasks=sorted(task for _, task in own),
        credentials=[c for c in credentials if (c.root_task_id, c.token_id) in held],
        delegations=delegations,
        accesses=_reaches(accesses),
        humans=[
            Human(name, sorted(roles), len(concerned))
            for name, (roles, concerned) in sorted(humans.items())
        ],
        alerts=alerts,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _reaches(rows: Sequence[Mapping[str, Any]]) -> list[Reach]:
    """The access rows summed per workload, tool, resource and action."""
    grouped: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (row["workload_id"], row["tool"], row["resource"], row["action"])
        grouped.setdefault(key, []).append(row)
    reaches = []
    for (workload, tool, resource, action), group in sorted(grouped.items()):
        outcomes: dict[str, int] = {}
        for row in group:
            outcomes[row["outcome"]] = outcomes.get(row["outcome"], 0) + int(row["accesses"])
        reaches.append(
            Reach(
                workload_id=workload,
                tool=tool,
                resource=resource,
                action=action,
                outcomes=dict(sorted(outcomes.items())),
                scopes=sorted({scope for row in group for scope in row["scopes"]}),
                tokens=len({(row["root_task_id"], row["token_id"]) for row in group}),
                first=min(row["first"] for row in group),
                last=max(row["last"] for row in group),
            )
        )
    return reaches
