"""Producer throughput: the SDK's ``publish`` against a floor measured in the same run.

Both paths send the same events, byte for byte, to the same local Tansu broker with the
same librdkafka settings (``Settings.kafka_producer()``):

- **floor**: pre-built Avro datums, each written with fastavro (schema parsed once) behind
  the single-object header, and handed to a raw confluent-kafka ``Producer``; then flush.
- **sdk**: ``CustodyProducer.publish`` of each event in its JSON form (validation, secret
  check, hash-chain stamping, encoding, produce with a delivery callback); then flush.
- **sdk_async**: the same through ``AsyncCustodyProducer.publish``, awaited one event after
  the other in a running event loop; then ``await flush()``.

The floor's datums carry the hash-chain fields the SDK will stamp (same producer instance,
``seq`` and ``prev_hash``), so both write identical messages. Each path runs
:data:`ROUNDS` times, alternating; medians are reported. Generating the events and building
the datums is not timed, nor is a client's start-up: each fresh client first sends one
warm-up event and flushes (on Tansu, connecting and getting an idempotent producer id takes
0.5-1 s, which would otherwise count as throughput).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import os
import pstats
import random
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
from confluent_kafka import Producer

from processors.broker import start_broker, wait_until_ready
from producers import events
from producers.admin import ensure_topics
from producers.aio import AsyncCustodyProducer
from producers.chain import HashChain
from producers.context import CustodyContext
from producers.events import Source
from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas import catalog, topics
from schemas.codec import SINGLE_OBJECT_MAGIC, AvroCodec, body_bytes, event_to_avro
from schemas.models import AuthzDecisionEvent, CredentialIssuedEvent, Envelope
from tests.bench.results import Entry, entry, env_count

DEFAULT_EVENTS = 100_000
PROFILE_EVENTS = 20_000
ROUNDS = 3
PARTITIONS = 6
INSTANCE = "bench/1"
# Warm-up events get their own hash chain, so the timed events' chain matches the floor's.
WARMUP_INSTANCE = "bench/warm-up"
UNIT = "events/s"
SEED = 20261129

# ---- events ---------------------------------------------------------------------------

_TENANTS = ("acme-prod", "acme-staging", "globex-eu")
_HUMANS = ("alice@acme.example", "bob@acme.example", "carol@globex.example")
_CHILD_AGENTS = ("researcher", "coder", "reviewer", "data-analyst")
# (tool, resource, action, data scope)
_TOOLS = (
    ("github.contents", "github://acme/payments-service/src", "read", "repo:read"),
    ("postgres.query", "postgres://orders-db/public.orders", "select", "orders:read"),
    ("s3.get_object", "s3://acme-reports/2026/q4/revenue.parquet", "get", "reports:read"),
    ("jira.comment", "jira://SEC/issues/SEC-4211", "comment", "tickets:write"),
    ("slack.post", "slack://acme/channels/incident-payments", "post", "chat:write"),
)
_PURPOSES = (
    "Triage the payment failures reported in incident {n} and propose a fix",
    "Summarise last quarter's revenue by region for the finance review {n}",
    "Review pull request {n} for security regressions before release",
)


def _workload(tenant: str, name: str) -> str:
    return f"spiffe://{tenant}.example/ns/agents/sa/{name}"


class TreeGenerator:
    """Realistic custody trees: a planner delegating to agents over up to three levels.

    Every task declares itself, gets a policy decision and a short-lived credential, makes
    a few tool accesses, may delegate, and ends with revocation and completion; a few
    trees carry a human approval or a break-glass.
    """

    def __init__(self, seed: int = SEED) -> None:
        self._rng = random.Random(seed)
        self._now = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)

    def _tick(self) -> datetime:
        self._now += timedelta(milliseconds=self._rng.randint(1, 400))
        return self._now

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.UUID(int=self._rng.getrandbits(128)).hex}"

    def tree(self) -> list[Envelope]:
        """One custody tree, events in the order they happened."""
        tenant = self._rng.choice(_TENANTS)
        human = self._rng.choice(_HUMANS)
        return self._task(tenant, human, "planner", CustodyContext.new_root())

    def _task(self, tenant: str, human: str, agent: str, ctx: CustodyContext) -> list[Envelope]:
        rng = self._rng
        agent_source = Source.of(
            tenant, "runtime.agentd", _workload(tenant, agent), "AGENT", self._id(agent), human
        )
        policy = Source.of(
            tenant, "policy.opa-gateway", _workload(tenant, "opa"), "POLICY_ENGINE", "opa-0"
        )
        broker = Source.of(
            tenant, "broker.jit-vault", _workload(tenant, "vault"), "BROKER", "vault-1"
        )
        tools = rng.sample(_TOOLS, 3)
        scopes = [scope for *_, scope in tools]
        attributes = {"env": tenant.split("-")[-1], "trace_id": uuid.uuid4().hex}
        purpose = rng.choice(_PURPOSES).format(n=rng.randint(1000, 9999))
        found: list[Envelope] = [
            events.task_declared(
                agent_source,
                ctx,
                purpose=purpose,
                requested_scopes=scopes,
                deadline=self._now + timedelta(hours=2),
                event_time=self._tick(),
                attributes=attributes,
            )
        ]
        if ctx.depth == 0 and rng.random() < 0.05:
            found.append(self._break_glass(tenant, human, ctx))
        decision, credential = self._grant(
            policy, broker, agent_source, ctx, tools[0], scopes, attributes
        )
        found += [decision, credential]
        decision_id, token_id = decision.body.decision_id, credential.body.token_id
        for _ in range(rng.randint(2, 6)):
            found.append(self._access(agent_source, ctx, token_id, decision_id, tools))
        for child_agent in self._delegatees(ctx):
            child = ctx.child()
            # In the order they happen: a child's events follow its delegation.
            found += [
                events.delegation(
                    agent_source,
                    ctx,
                    child=child,
                    delegator=agent_source.actor.workload_id,
                    delegatee=_workload(tenant, child_agent),
                    scopes=scopes[:2],
                    decision_id=decision_id,
                    event_time=self._tick(),
                    attributes=attributes,
                ),
                *self._task(tenant, human, child_agent, child),
            ]
        found += [
            events.credential_revoked(
                broker,
                ctx,
                token_id=token_id,
                reason="TASK_ENDED",
                revoked_by=broker.actor.workload_id,
                event_time=self._tick(),
                attributes=attributes,
            ),
            events.task_completed(
                agent_source,
                ctx,
                outcome=rng.choices(("SUCCEEDED", "FAILED"), (9, 1))[0],
                detail="finished within its deadline",
                event_time=self._tick(),
                attributes=attributes,
            ),
        ]
        return found

    def _delegatees(self, ctx: CustodyContext) -> list[str]:
        if ctx.depth == 0:
            return self._rng.sample(_CHILD_AGENTS, self._rng.randint(1, 2))
        if ctx.depth == 1 and self._rng.random() < 0.5:
            return [self._rng.choice(_CHILD_AGENTS)]
        return []

    def _grant(
        self,
        policy: Source,
        broker: Source,
        agent: Source,
        ctx: CustodyContext,
        tool: tuple[str, str, str, str],
        scopes: list[str],
        attributes: Mapping[str, str],
    ) -> tuple[AuthzDecisionEvent, CredentialIssuedEvent]:
        """The policy's ALLOW of ``tool`` for the task, and the broker's 15-minute
        credential for ``agent`` on it (its audience the tool's service)."""
        _, resource, action, _ = tool
        decision_id = self._id("dec")
        decision = events.authz_decision(
            policy,
            ctx,
            decision_id=decision_id,
            policy_engine="opa-gateway",
            policy_id="agents.tool_access",
            policy_version="2026.11.3",
            decision="ALLOW",
            resource=resource,
            action=action,
            data_scope=scopes,
            reasons=["purpose matches requested scopes", "delegation within parent scopes"],
            context={"source_ip": "10.42.7.19", "risk": "low"},
            event_time=self._tick(),
            attributes=attributes,
        )
        token_id = self._id("tok")
        issued = self._tick()
        credential = events.credential_issued(
            broker,
            ctx,
            token_id=token_id,
            token_subject=agent.actor.workload_id,
            credential_kind=self._rng.choice(("JWT", "DB_CREDENTIAL", "CLOUD_SESSION")),
            audience=tool[0].split(".")[0],
            scopes=scopes,
            issued_at=issued,
            expires_at=issued + timedelta(minutes=15),
            decision_id=decision_id,
            event_time=issued,
            attributes=attributes,
        )
        return decision, credential

    def _access(
        self,
        agent: Source,
        ctx: CustodyContext,
        token_id: str,
        decision_id: str,
        tools: Sequence[tuple[str, str, str, str]],
    ) -> Envelope:
        tool, resource, action, scope = self._rng.choice(tools)
        rows, millis = self._rng.randint(1, 5000), self._rng.randint(3, 900)
        return events.access(
            agent,
            ctx,
            token_id=token_id,
            tool=tool,
            resource=resource,
            action=action,
            data_scope=[scope],
            outcome=self._rng.choices(("SUCCESS", "FAILURE", "DENIED"), (18, 1, 1))[0],
            decision_id=decision_id,
            detail=f"{rows} records returned in {millis} ms",
            event_time=self._tick(),
            attributes={"trace_id": uuid.uuid4().hex},
        )

    def _break_glass(self, tenant: str, human: str, ctx: CustodyContext) -> Envelope:
        oncall = Source.of(tenant, "portal.break-glass", f"user:{human}", "HUMAN", "portal-2")
        return events.break_glass(
            oncall,
            ctx,
            break_glass_id=self._id("bg"),
            reason="payments outage: production database read needed to find failing orders",
            standing_access_unavailable="on-call role is not provisioned for this tenant",
            expires_at=self._now + timedelta(hours=1),
            event_time=self._tick(),
        )


def generate(count: int) -> list[Envelope]:
    """``count`` unstamped events from as many whole trees as needed (the last one cut)."""
    generator = TreeGenerator()
    found: list[Envelope] = []
    while len(found) < count:
        found.extend(generator.tree())
    return found[:count]


# ---- the two inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """The same events in the form each path starts from."""

    json_events: list[dict[str, Any]]
    """What a service hands to ``publish``: the JSON form, without hash-chain fields."""
    datums: list[dict[str, Any]]
    """Avro datums stamped exactly as the SDK will stamp them, for the floor."""
    mean_message_bytes: float
    warmup_event: dict[str, Any]
    """One more event in JSON form, on its own producer instance, for the SDK's warm-up."""
    warmup_message: bytes
    """The same event encoded, for the floor's warm-up."""


def json_form(event: Envelope) -> dict[str, Any]:
    """The JSON form of an unstamped event, as a service would send it."""
    data = event.model_dump(mode="json")
    for key in ("producer_instance", "seq", "prev_hash"):
        data.pop(key)
    return data


def prepare(models: list[Envelope], warmup: Envelope) -> Workload:
    """Both inputs; the floor's datums chained like the SDK's (same instance, seq, hashes)."""
    codec = AvroCodec()
    chain = HashChain()
    datums = []
    total = 0
    for model in models:
        link = chain.next_link()
        stamped = model.model_copy(
            update={"producer_instance": INSTANCE, "seq": link.seq, "prev_hash": link.prev_hash}
        )
        datum = event_to_avro(stamped)
        message = codec.encode(catalog.EVENT, datum)
        chain.advance(link.seq, body_bytes(message))
        datums.append(datum)
        total += len(message)
    warmup_stamped = warmup.model_copy(update={"producer_instance": WARMUP_INSTANCE, "seq": 1})
    return Workload(
        json_events=[json_form(m) for m in models],
        datums=datums,
        mean_message_bytes=total / len(models),
        warmup_event={**json_form(warmup), "producer_instance": WARMUP_INSTANCE, "seq": 1},
        warmup_message=codec.encode_event(warmup_stamped),
    )


# ---- timed paths ----------------------------------------------------------------------


def floor_rate(settings: Settings, work: Workload) -> float:
    """Events/s of fastavro + single-object header + raw produce, then flush."""
    producer = Producer(settings.kafka_producer())
    producer.produce(topics.EVENTS, work.warmup_message, key=work.warmup_event["root_task_id"])
    producer.flush()
    datums = work.datums
    schema = catalog.latest(catalog.EVENT)
    parsed = schema.parsed
    header = SINGLE_OBJECT_MAGIC + schema.fingerprint
    topic = topics.EVENTS
    gc.collect()
    start = time.perf_counter()
    for datum in datums:
        buffer = io.BytesIO()
        buffer.write(header)
        fastavro.schemaless_writer(buffer, parsed, datum)
        value = buffer.getvalue()
        while True:
            try:
                producer.produce(topic, value, key=datum["root_task_id"])
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush()
    elapsed = time.perf_counter() - start
    if remaining:
        raise RuntimeError(f"floor: {remaining} events not delivered")
    return len(datums) / elapsed


def publish_all(producer: CustodyProducer, json_events: list[dict[str, Any]]) -> None:
    """The SDK path: publish every event, then wait for every delivery report."""
    for event in json_events:
        producer.publish(event)
    producer.flush()


@contextmanager
def warm_sdk(settings: Settings, work: Workload) -> Iterator[CustodyProducer]:
    """A fresh SDK producer that has already delivered the warm-up event; closed after."""
    with CustodyProducer(settings, producer_instance=INSTANCE, create_topics=False) as producer:
        publish_all(producer, [work.warmup_event])
        yield producer


def sdk_rate(settings: Settings, work: Workload) -> float:
    """Events/s of ``CustodyProducer.publish`` of JSON-form events, then flush."""
    json_events = work.json_events
    with warm_sdk(settings, work) as producer:
        gc.collect()
        start = time.perf_counter()
        publish_all(producer, json_events)
        elapsed = time.perf_counter() - start
    return len(json_events) / elapsed


async def publish_all_async(
    producer: AsyncCustodyProducer, json_events: list[dict[str, Any]]
) -> None:
    """The asyncio SDK path: await the publish of every event, then every delivery report."""
    for event in json_events:
        await producer.publish(event)
    await producer.flush()


def sdk_async_rate(settings: Settings, work: Workload) -> float:
    """Events/s of ``AsyncCustodyProducer.publish`` of JSON-form events, then flush."""
    json_events = work.json_events

    async def timed() -> float:
        async with await AsyncCustodyProducer.start(
            settings, producer_instance=INSTANCE, create_topics=False
        ) as producer:
            await publish_all_async(producer, [work.warmup_event])
            gc.collect()
            start = time.perf_counter()
            await publish_all_async(producer, json_events)
            return time.perf_counter() - start

    return len(json_events) / asyncio.run(timed())


def profile_sdk(settings: Settings, work: Workload, count: int) -> None:
    """Print where the SDK path spends its time (main thread), by cumulative time."""
    json_events = work.json_events[:count]
    with warm_sdk(settings, work) as producer:
        profiler = cProfile.Profile()
        profiler.runcall(publish_all, producer, json_events)
    print(f"\nprofile of CustodyProducer.publish, {len(json_events):,} events:")
    pstats.Stats(profiler).strip_dirs().sort_stats("cumulative").print_stats(15)


# ---- broker and run -------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def local_broker(host: str = "127.0.0.1") -> Iterator[str]:
    """A fresh Tansu broker on a free loopback port; yields its bootstrap address."""
    port = _free_port(host)
    process = start_broker(host, port)
    try:
        bootstrap = f"{host}:{port}"
        wait_until_ready({"bootstrap.servers": bootstrap})
        yield bootstrap
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def profiling() -> bool:
    return os.environ.get("CUSTODY_BENCH_PROFILE") == "1"


def run() -> list[Entry]:
    """Measure floor, SDK and asyncio SDK, alternating, and return their medians."""
    count = env_count("CUSTODY_BENCH_EVENTS", DEFAULT_EVENTS)
    print(f"producer: generating {count:,} events")
    *models, warmup = generate(count + 1)
    work = prepare(models, warmup)
    floors: list[float] = []
    sdks: list[float] = []
    asyncs: list[float] = []
    with local_broker() as bootstrap:
        settings = Settings(kafka_bootstrap=bootstrap)
        ensure_topics(settings.kafka_admin(), {topics.EVENTS: PARTITIONS})
        for round_number in range(1, ROUNDS + 1):
            floors.append(floor_rate(settings, work))
            sdks.append(sdk_rate(settings, work))
            asyncs.append(sdk_async_rate(settings, work))
            print(
                f"producer: round {round_number}: floor {floors[-1]:,.0f} {UNIT}, "
                f"sdk {sdks[-1]:,.0f} {UNIT} (ratio {sdks[-1] / floors[-1]:.3f}), "
                f"sdk async {asyncs[-1]:,.0f} {UNIT} (ratio {asyncs[-1] / floors[-1]:.3f})"
            )
        if profiling():
            profile_sdk(settings, work, PROFILE_EVENTS)
    floor = statistics.median(floors)
    detail = {
        "events": count,
        "rounds": ROUNDS,
        "mean_message_bytes": round(work.mean_message_bytes, 1),
        "floor_rounds": [round(rate) for rate in floors],
    }
    return [
        entry(
            "producer.sdk_publish",
            statistics.median(sdks),
            UNIT,
            floor,
            {**detail, "sdk_rounds": [round(rate) for rate in sdks]},
        ),
        entry(
            "producer.sdk_publish_async",
            statistics.median(asyncs),
            UNIT,
            floor,
            {**detail, "sdk_async_rounds": [round(rate) for rate in asyncs]},
        ),
        entry("producer.floor_encode_produce", floor, UNIT, detail=detail),
    ]
