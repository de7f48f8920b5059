"""Sample events: one valid event of every type, many such trees, their stamped and JSON
forms, and the hash chain a producer instance stamps."""

from __future__ import annotations

import io
import uuid
from typing import Any, TypeVar, cast

import fastavro

from producers.chain import HashChain
from producers.context import CustodyContext
from producers.events import Source
from schemas import catalog
from schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, body_bytes, event_to_avro
from schemas.models import EVENT_MODELS, CustodyEvent, Envelope, EventType
from tests.support import events as build
from tests.support.events import at

E = TypeVar("E", bound=Envelope)

AGENT = Source.of(
    "acme", "agent-runtime", "spiffe://acme/agent/planner", "AGENT", "pod-1", "alice@acme"
)
HELPER = Source.of("acme", "agent-runtime", "spiffe://acme/agent/coder", "AGENT", "pod-2")
POLICY = Source.of("acme", "policy.opa", "spiffe://acme/policy/opa", "POLICY_ENGINE", "opa-0")
BROKER = Source.of("acme", "broker.vault", "spiffe://acme/broker/vault", "BROKER", "vault-0")
HUMAN = Source.of("acme", "approvals", "user:bob@acme", "HUMAN", "portal-1")

_CODEC = AvroCodec()
_EVENT_TYPES = tuple(EVENT_MODELS.values())


def as_event(event: Envelope) -> CustodyEvent:
    """``event`` as one of the event types (what has a ``body``); the builders and the
    simulator hand out the envelope type."""
    assert isinstance(event, _EVENT_TYPES), type(event)
    # EVENT_MODELS holds the members of the union, which isinstance cannot tell mypy.
    return cast(CustodyEvent, event)


def one_of_each(root: CustodyContext | None = None) -> list[Envelope]:
    """One valid event of each of the ten types, in a two-level tree, a second apart from
    ``T0`` on; the broker renews the token (schema v2) half a second after its use."""
    ctx = root or CustodyContext.new_root()
    child = ctx.child()
    crm = ["crm:read"]
    hour = at(3600)
    return [
        build.declare(ctx, at(0), source=AGENT, purpose="report", scopes=crm),
        build.allow(
            ctx,
            "dec-1",
            at(1),
            source=POLICY,
            scopes=crm,
            resource="crm://accounts",
            policy_version="7",
            reasons=["purpose matches"],
            context={"ip": "10.0.0.1"},
        ),
        build.issue(
            ctx,
            "tok-1",
            at(2),
            subject=AGENT.actor.workload_id,
            source=BROKER,
            scopes=crm,
            audience="crm",
            decision_id="dec-1",
        ),
        build.use(
            ctx,
            "tok-1",
            at(3),
            source=AGENT,
            scopes=crm,
            resource="crm://accounts",
            tool="crm.search",
            decision_id="dec-1",
            detail="42 rows",
        ),
        build.renew(ctx, "tok-1", at(3.5), source=BROKER),
        build.delegate(
            ctx,
            child,
            at(4),
            delegatee=HELPER.actor.workload_id,
            decision_id="dec-1",
            source=AGENT,
            scopes=crm,
        ),
        build.approve(
            child,
            "appr-1",
            child.task_id,
            at(5),
            source=HUMAN,
            approver="bob@acme",
            scopes=crm,
            reason="ok",
            expires=hour,
        ),
        build.break_glass(
            child,
            "bg-1",
            at(6),
            expires=hour,
            source=HELPER,
            reason="incident 42",
            standing="on-call role not provisioned",
            approval_id="appr-1",
        ),
        build.revoke(ctx, "tok-1", at(7), source=BROKER),
        build.complete(ctx, at(8), source=AGENT),
    ]


def stamped(event: E, seq: int = 1, instance: str = "test/1") -> E:
    """A copy of ``event`` with hash-chain fields set, ready to encode."""
    return event.model_copy(update={"producer_instance": instance, "seq": seq})


def json_form(event: Envelope) -> dict[str, Any]:
    """The JSON-lines form of an unstamped event, as a service would write it."""
    data = event.model_dump(mode="json")
    for key in ("producer_instance", "seq", "prev_hash"):
        data.pop(key)
    return data


def many_trees(count: int) -> list[Envelope]:
    """``count`` trees of nine events each, interleaved by position (realistic arrival):
    :func:`one_of_each` without its renewal, so bulk traffic has schema v1's types only."""
    trees = [
        [
            event
            for event in one_of_each(CustodyContext.new_root(f"root-{i}-{uuid.uuid4().hex[:6]}"))
            if event.event_type != EventType.CREDENTIAL_RENEWED
        ]
        for i in range(count)
    ]
    return [tree[i] for i in range(9) for tree in trees]


class Chain:
    """Stamps and encodes events as one producer instance does: ``seq`` from 1, each
    ``prev_hash`` the hash of the event before, so valid input raises no EVIDENCE_GAP.

    ``version``: the shipped custody_event schema version to write with (single-object
    framing), as a producer of that release did; the newest by default. Settable between
    events, as a producer upgraded mid-chain."""

    def __init__(self, instance: str, version: int | None = None) -> None:
        self.instance = instance
        self.version = version
        self._chain = HashChain()

    def stamp(self, event: E) -> tuple[E, bytes]:
        """The next event of the chain, and its encoding."""
        link = self._chain.next_link()
        chained = {"producer_instance": self.instance, "seq": link.seq, "prev_hash": link.prev_hash}
        model = event.model_copy(update=chained)
        if self.version is None:
            encoded = _CODEC.encode_event(model)
        else:
            schema = next(v for v in catalog.versions(catalog.EVENT) if v.version == self.version)
            body = io.BytesIO()
            fastavro.schemaless_writer(body, schema.parsed, event_to_avro(model))
            encoded = SINGLE_OBJECT_MAGIC + schema.fingerprint + body.getvalue()
        self._chain.advance(link.seq, body_bytes(encoded))
        return model, encoded

    def encode(self, event: Envelope) -> bytes:
        """The encoding of the next event of the chain."""
        return self.stamp(event)[1]
