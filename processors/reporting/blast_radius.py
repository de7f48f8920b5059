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
tables are then read by their sorting key's prefix, ``(tenant, root_task_id)``. What is
the subject's is decided in ClickHouse, as (root, id) pairs from subqueries (the tasks
delegated below its own are one subquery per hop, as deep as the deepest task), and the
accesses and humans are counted there: what comes back grows with the credentials and
delegations listed, not with the events of the trees.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from processors.serving.reader import Reader
from processors.serving.records import ALERT_COLUMNS, Alert, Credential, Record, read
from processors.storage.backend import iso

IDENTITY, TOKEN = "identity", "token"


class NotFound(LookupError):
    """No stored event (or credential) of the tenant names the identity or token."""


@dataclass(frozen=True, slots=True)
class HeldCredential(Credential):
    """A credential the subject held (its scopes, its lifetime, its state) and its tree."""

    root_task_id: str


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
            **{
                name: [item.as_json() for item in getattr(self, name)]
                for name in ("credentials", "delegations", "accesses", "humans", "alerts")
            },
        }


# The queries are composed of constant fragments (the trees', the subject's and the
# period's filters, a hop number); every value is a bound parameter ({name:Type}): S608's
# injection does not apply. Each {fragment} is filled by _Query.sql.
_SINCE = "parseDateTime64BestEffort({since:String}, 6, 'UTC')"
_UNTIL = "parseDateTime64BestEffort({until:String}, 6, 'UTC')"

# The identity's trees: those it emitted an event in, found through the bloom filter on
# actor_workload_id within the period's partitions.
_IDENTITY_TREES = """
SELECT root_task_id FROM events
PREWHERE tenant = {tenant:String} AND actor_workload_id = {identity:String}
WHERE 1 {event_period}"""
# The token's tree(s), through the credentials' sorting key and bloom filter on token_id.
_TREES_HOLDING = """
SELECT root_task_id FROM credentials
PREWHERE tenant = {tenant:String} AND token_id = {token:String}"""

_FOUND = "SELECT count() AS found, uniqExact(root_task_id) AS trees FROM ({trees})"

_IN_TREES = "tenant = {tenant:String} AND root_task_id IN ({trees})"

# (root_task_id, task_id) of the subject's own tasks: those the identity declared, or the
# one that held the token.
_OWN_OF_IDENTITY = """
SELECT root_task_id, task_id FROM tasks PREWHERE {in_trees}
WHERE workload_id = {identity:String}"""
_TASK_HOLDING = """
SELECT root_task_id, task_id FROM credentials PREWHERE {in_trees}
WHERE token_id = {token:String}"""

# (root_task_id, token_id) of the credentials held: issued to the identity in the period,
# or the token and its rotations (a JSON array: a handful of ids of one tree).
_HELD_BY_IDENTITY = """
SELECT root_task_id, token_id FROM credentials PREWHERE {in_trees}
WHERE token_subject = {identity:String} {issued_period}"""
_LINEAGE = """
SELECT root_task_id, token_id FROM credentials PREWHERE {in_trees}
WHERE has(JSONExtract({lineage:String}, 'Array(String)'), token_id)"""

_ROTATIONS = """
SELECT token_id, parent_token_id FROM credentials PREWHERE {in_trees}
WHERE parent_token_id IS NOT NULL"""

_HOPS = "SELECT max(depth) AS hops FROM tasks PREWHERE {in_trees}"

# The tasks delegated from those of the previous hop ({previous}, (root, task) pairs).
_HOP = """
SELECT root_task_id, child_task_id FROM delegations PREWHERE {in_trees}
WHERE (root_task_id, parent_task_id) IN ({previous}) {delegated_period}"""
_NO_TASKS = "SELECT root_task_id, child_task_id FROM delegations WHERE 0"

_DELEGATIONS_OF_HOP = """
SELECT root_task_id, child_task_id, parent_task_id, delegator, delegatee, scopes,
       delegated_at, {hop} AS hops
FROM delegations PREWHERE {in_trees}
WHERE (root_task_id, parent_task_id) IN ({previous}) {delegated_period}"""

_CREDENTIALS = """
SELECT root_task_id, token_id, task_id, token_subject, credential_kind, audience, scopes,
       issued_at, expires_at, decision_id, parent_token_id,
       if(state = 'ACTIVE' AND expires_at <= now64(6), 'EXPIRED', state) AS state,
       revoked_at, revocation_reason, revoked_by
FROM credentials PREWHERE {in_trees}
WHERE (root_task_id, token_id) IN ({held})
ORDER BY issued_at, token_id"""

_OWN_TASKS = "SELECT DISTINCT task_id FROM ({own}) ORDER BY task_id"

# An access the subject reached: with a credential it held, in a task delegated from its
# own, or (an identity) made by itself whatever the token.
_REACHED = """(root_task_id, token_id) IN ({held})
    OR (root_task_id, task_id) IN ({delegated}) OR {by_identity}"""

_ACCESSES = """
SELECT actor_workload_id AS workload_id, tool, resource, action,
       countIf(outcome = 'SUCCESS') AS success, countIf(outcome = 'FAILURE') AS failure,
       countIf(outcome = 'DENIED') AS denied,
       groupUniqArrayArray(data_scope) AS scopes,
       uniqExact(root_task_id, token_id) AS tokens,
       min(event_time) AS first, max(event_time) AS last
FROM events PREWHERE {in_trees}
WHERE event_type = 'ACCESS' {event_period} AND ({reached})
GROUP BY workload_id, tool, resource, action
ORDER BY workload_id, tool, resource, action"""

_HUMANS = """
SELECT name, arraySort(groupUniqArray(role)) AS roles,
       uniqExact(root_task_id, task_id) AS tasks
FROM (
    SELECT assumeNotNull(on_behalf_of) AS name, 'on_behalf_of' AS role, root_task_id, task_id
    FROM tasks PREWHERE {in_trees}
    WHERE on_behalf_of IS NOT NULL AND (root_task_id, task_id) IN ({involved})
    UNION ALL
    SELECT assumeNotNull(actor_on_behalf_of), 'on_behalf_of', root_task_id, task_id
    FROM events PREWHERE {in_trees}
    WHERE event_type = 'ACCESS' AND actor_on_behalf_of IS NOT NULL {event_period}
      AND ({reached})
    UNION ALL
    SELECT assumeNotNull(approver), 'approver', root_task_id, task_id
    FROM events PREWHERE {in_trees}
    WHERE event_type = 'APPROVAL' {event_period} AND (root_task_id, task_id) IN ({involved})
)
GROUP BY name ORDER BY name"""

_ALERTS = f"""
SELECT {ALERT_COLUMNS} FROM alerts PREWHERE {{in_trees}}
WHERE 1 {{event_period}}
  AND ((root_task_id, token_id) IN ({{held}}) OR (root_task_id, task_id) IN ({{involved}})
       OR {{alerted_identity}})
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
    """The fragments and parameters the queries of one blast radius share."""

    params: dict[str, object]
    since: datetime | None
    until: datetime | None
    fragments: dict[str, str]

    def sql(self, template: str, **fragments: str) -> str:
        """``template`` with its ``{fragment}`` placeholders filled, fragments within
        fragments too (replaced, not ``format``-ed: ``{name:Type}`` parameters stay)."""
        filled = {
            "in_trees": _IN_TREES,
            "reached": _REACHED,
            "involved": "{own} UNION ALL {delegated}",
            "event_period": _period("event_time", self.since, self.until),
            "issued_period": _period("issued_at", self.since, self.until),
            "delegated_period": _period("delegated_at", self.since, self.until),
            **self.fragments,
            **fragments,
        }
        while True:
            before = template
            for name, fragment in filled.items():
                template = template.replace("{" + name + "}", fragment)
            if template == before:
                return template

    def rows(self, reader: Reader, template: str, **fragments: str) -> list[dict[str, Any]]:
        return reader.select(self.sql(template, **fragments), self.params)

    def with_fragments(self, **fragments: str) -> _Query:
        return _Query(self.params, self.since, self.until, {**self.fragments, **fragments})


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
        params["token"] = token
        query = _Query(params, since, until, {"trees": _TREES_HOLDING})
        found = query.rows(reader, _FOUND)[0]
        if not found["found"]:
            raise NotFound(f"no stored credential of tenant {tenant} has token id {token}")
        rotations = query.rows(reader, _ROTATIONS)
        params["lineage"] = json.dumps(sorted(_rotations(token, rotations)))
        query = query.with_fragments(
            own=_TASK_HOLDING, held=_LINEAGE, by_identity="0", alerted_identity="0"
        )
        return _gather(reader, query, TOKEN, token, found["trees"])
    params["identity"] = identity
    query = _Query(params, since, until, {"trees": _IDENTITY_TREES})
    found = query.rows(reader, _FOUND)[0]
    if not found["found"]:
        raise NotFound(f"no stored event of tenant {tenant} has actor {identity}")
    query = query.with_fragments(
        own=_OWN_OF_IDENTITY,
        held=_HELD_BY_IDENTITY,
        by_identity="actor_workload_id = {identity:String}",
        alerted_identity="workload_id = {identity:String}",
    )
    return _gather(reader, query, IDENTITY, str(identity), found["trees"])


def _rotations(token: str, rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The token and every token issued from it, directly or through a rotation."""
    children: dict[str, list[str]] = {}
    for row in rows:
        children.setdefault(row["parent_token_id"], []).append(row["token_id"])
    found: set[str] = set()
    frontier = [token]
    while frontier:
        current = frontier.pop()
        if current not in found:
            found.add(current)
            frontier += children.get(current, [])
    return found


def _delegations(reader: Reader, query: _Query) -> tuple[_Query, list[DelegatedTask]]:
    """The query with ``{delegated}`` (the tasks delegated below the subject's own, every
    hop: no tree is deeper than its deepest task), and those delegations, each at the
    first hop that reaches it."""
    hops = query.rows(reader, _HOPS)[0]["hops"] or 0
    previous, reached, listed = "{own}", [], []
    for hop in range(1, hops + 1):
        listed.append(
            _DELEGATIONS_OF_HOP.replace("{hop}", str(hop)).replace("{previous}", previous)
        )
        previous = _HOP.replace("{previous}", previous)
        reached.append(previous)
    query = query.with_fragments(delegated=" UNION ALL ".join(reached) or _NO_TASKS)
    if not listed:
        return query, []
    union = " UNION ALL ".join(listed)
    rows = query.rows(reader, f"SELECT * FROM ({union})")  # noqa: S608 (constant fragments)
    first: dict[tuple[str, str], DelegatedTask] = {}
    for row in sorted(rows, key=lambda r: r["hops"]):
        first.setdefault((row["root_task_id"], row["child_task_id"]), DelegatedTask.from_row(row))
    return query, sorted(first.values(), key=lambda d: (d.delegated_at, d.child_task_id))


def _gather(reader: Reader, query: _Query, kind: str, subject: str, trees: int) -> BlastRadius:
    """What the subject's credentials and tasks reached, who was involved and which
    alerts were raised, once ``query`` names them."""
    query, delegations = _delegations(reader, query)
    credentials = read(reader, HeldCredential, query.sql(_CREDENTIALS), query.params)
    identity = subject
    if kind == TOKEN:
        identity = next(c.token_subject for c in credentials if c.token_id == subject)
    return BlastRadius(
        kind=kind,
        subject=subject,
        tenant=str(query.params["tenant"]),
        since=_text(query.params.get("since")),
        until=_text(query.params.get("until")),
        identity=identity,
        trees=trees,
        tasks=[row["task_id"] for row in query.rows(reader, _OWN_TASKS)],
        credentials=credentials,
        delegations=delegations,
        accesses=[_reach(row) for row in query.rows(reader, _ACCESSES)],
        humans=read(reader, Human, query.sql(_HUMANS), query.params),
        alerts=read(reader, Alert, query.sql(_ALERTS), query.params),
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _reach(row: Mapping[str, Any]) -> Reach:
    """An access row, its outcome counts as a mapping of the outcomes seen."""
    counts = {"SUCCESS": row["success"], "FAILURE": row["failure"], "DENIED": row["denied"]}
    return Reach(
        workload_id=row["workload_id"],
        tool=row["tool"],
        resource=row["resource"],
        action=row["action"],
        outcomes={outcome: int(n) for outcome, n in counts.items() if n},
        scopes=sorted(row["scopes"]),
        tokens=row["tokens"],
        first=row["first"],
        last=row["last"],
    )
