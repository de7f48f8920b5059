"""Collector throughput: OPA decision-log uploads and OTLP trace exports through
``custody collect`` and Vault audit lines followed from a file, each against the SDK
publishing the same events in the same run.

The rows run on one fresh local Tansu broker, every side with the same settings (the
``development`` Kafka profile), and build their inputs before anything is timed.

- **collect.opa**: N decision events (``CUSTODY_BENCH_COLLECT_DECISIONS``, default 20,000)
  made from the first of OPA's documented upload samples (``tests/data/opa/upload.json``),
  each with its own ``decision_id`` and time, a custody context in ``input.custody`` (trees
  of a root and its children), and one of several resources and actions (half as
  ``input.resource``/``action``, half as OPA's HTTP example writes them,
  ``input.path``/``method``), with boolean, string and object results. They are cut into
  uploads of 1,000 and each is gzip-compressed as OPA's ``decision_logs`` plugin sends it.
  A real ``custody collect`` process (the installed command) takes them on
  ``POST /v1/opa/logs`` over HTTP with a collect token; the client keeps one connection
  and sends the uploads one after the other, each once the previous was answered, as one
  OPA does (``CUSTODY_BENCH_COLLECT_CLIENTS=2``: two such clients at once, like two OPAs).
  The service answers 200 only after Kafka acked every event of an upload; every answer
  must be 200 and count every decision published. Rate = N / (last answer - first
  request sent). The collector is started, and has taken one small upload, before the
  first round.
- **collect.vault_file**: N audit lines (``CUSTODY_BENCH_COLLECT_LINES``, default 20,000),
  request and response pairs in Vault's file audit device format: an AppRole login
  (``tests/data/vault/login_approle.jsonl``) every tenth pair and nine KV reads
  (``kv_read.jsonl``) made with the token it issued, each pair with its own request id,
  time and path, each login with its own token and custody context. They are written to a
  file, then a :class:`VaultFileFollower` with a fresh :class:`CollectPublisher`, mapper and
  checkpoint steps in this process until it has taken every line (each step reads up to
  2,000 lines, publishes their events, waits for Kafka's acks and moves the checkpoint).
  Rate = N / (end of the last step - start of the first).
- **collect.otlp**: N spans a round (``CUSTODY_BENCH_COLLECT_SPANS``, default 20,480,
  rounded down to whole exports) in OTLP/HTTP protobuf exports of :data:`EXPORT_SPANS`,
  each of whole traces (every span's parent in the same export, so none waits for one).
  A trace is a copy of the multi-agent sample (``tests/data/otlp/multi_agent.json``) with
  its own trace, span, tool-call, session and conversation ids and times, the parent
  links kept: the planner's and the researcher's ``invoke_agent`` spans, an
  ``execute_tool`` span, the MCP ``tools/call`` client span (failing in one trace of four,
  as in the sample) and the MCP server's span under it, and one to three chat spans (the
  last trace of an export takes up to seven more, to fill it). The client spans are one
  resource, the server spans another. Every round sends traces of its own, since the
  collector remembers the spans it saw and skips them when sent again. A real
  ``custody collect`` process takes them on ``POST /v1/traces``
  (``application/x-protobuf``, a collect token), one export after the other on one
  kept-alive connection, as one SDK's batch span processor sends them; every answer must
  be a 200 rejecting no span (given only after Kafka acked every event), and the
  collector's metrics must count every event published. Rate = spans / (last answer -
  first request sent).
- **the SDK (baseline)**: the same decisions mapped by :func:`opa.map_decision`, the same
  lines by a :class:`VaultAuditMapper`, the same spans by a fresh
  :class:`~processors.collect.otlp.TraceAssembler` (each export fed alone, as the
  collector does; none may be rejected or held) before the clock starts, and the resulting events
  turned into their JSON form (without the hash-chain fields); a fresh
  :class:`CustodyProducer` publishes them, then flushes, as the producer benchmark's
  ``sdk`` path does: validation, secret check, stamping, encoding, produce. Its rate
  counts the decisions, lines or spans those events came from. After it, in each round, a fresh
  producer publishes the adapter's models themselves (no validation left to do): that
  rate is in the detail (``sdk_prebuilt_models_rounds``). Each fresh producer (and each
  collect publisher) first delivers one warm-up event, not timed.

Medians of :data:`ROUNDS` alternating rounds (SDK, then collect); ratio = collect / SDK.
Goal: ratio >= 0.7 for every row. CPU per item: for the OPA and OTLP rows the collector
process's CPU time (read from ``/proc``) against the SDK's in this process; for the Vault
row this process's (all threads) on both sides. ``CUSTODY_BENCH_COLLECT_OPA_PYSPY`` /
``CUSTODY_BENCH_COLLECT_OTLP_PYSPY`` / ``CUSTODY_BENCH_COLLECT_VAULT_PYSPY`` (a file)
record the first round's collect run with py-spy (the collector process / the collector
process / this process).
"""

from __future__ import annotations

import copy
import gc
import gzip
import hashlib
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from processors.collect.opa import OpaMapping, map_decision
from processors.collect.publisher import CollectPublisher
from processors.collect.records import Mapped, Origin, Skipped
from processors.collect.service import HEALTH, OPA_LOGS
from processors.collect.tokens import issue_token
from processors.collect.vault import VaultAuditMapper, VaultMapping
from processors.collect.vault_file import VaultFileFollower
from processors.collect.vault_lines import REQUEST_HELD, outcomes_of_lines
from processors.stack import COLLECT, state_path
from producers.admin import ensure_topics
from producers.producer import CustodyProducer
from producers.settings import Settings
from schemas.models import Envelope
from tests.bench.bench_producer import json_form
from tests.bench.results import (
    Entry,
    TimedRun,
    alternate,
    announce,
    entry,
    env_count,
    first_run_profile,
    rates_by_round,
)
from tests.support.broker import CUSTODY, local_broker
from tests.support.collect import sample_json, sample_lines
from tests.support.measure import py_spy

DEFAULT_DECISIONS = 20_000
DEFAULT_LINES = 20_000
DEFAULT_SPANS = 20_480
UPLOAD_DECISIONS = 1_000
EXPORT_SPANS = 512
ROUNDS = 5
GOAL_RATIO = 0.7
TENANT = "acme-prod"
OPA_SOURCE = "opa-bench"
VAULT_SOURCE = "vault-bench"
OTLP_SOURCE = "otlp-bench"
SEED = 20261203
# A login every tenth request, the other nine KV reads with the token it issued.
READS_PER_LOGIN = 9
START_TIMEOUT = 60.0
UPLOAD_TIMEOUT = 120.0
RUN_TIMEOUT = 300.0
EPOCH = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


# ---- runs -----------------------------------------------------------------------------


Run = TimedRun
"""One timed run: ``count`` decisions, lines or spans."""


def bench_settings(bootstrap: str, workdir: Path) -> Settings:
    """The settings of every side: the development profile, state under ``workdir``."""
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_profile="development",
        home=workdir / "home",
        tenant=TENANT,
    )


@contextmanager
def warm_sdk(settings: Settings, warmup: Envelope) -> Iterator[CustodyProducer]:
    """A fresh SDK producer that has already delivered ``warmup``; closed after."""
    with CustodyProducer(settings, create_topics=False) as producer:
        producer.publish(warmup)
        producer.flush()
        yield producer


@contextmanager
def own_heap() -> Iterator[None]:
    """A timed block whose garbage collections see only what it allocates: the
    benchmark's inputs (tens of thousands of prepared objects no service holds) are kept
    out of their reach (``gc.freeze``), for both sides alike."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def sdk_run(
    settings: Settings,
    events: Sequence[Envelope | dict[str, Any]],
    count: int,
    warmup: Envelope,
    mode: str,
) -> Run:
    """Publish the pre-mapped events, then flush; ``count`` items they came from."""
    with warm_sdk(settings, warmup) as producer, own_heap():
        started = time.perf_counter(), time.process_time()
        for event in events:
            producer.publish(event)
        producer.flush()
        done = time.perf_counter(), time.process_time()
    return Run(mode, count, done[0] - started[0], done[1] - started[1])


class Baseline:
    """The SDK side of a row. Each round publishes the events in their JSON form, as a
    service calling the SDK hands them over (validated by ``publish``), which is the rate
    the row compares with; then the same events as the adapter's validated models, for
    the detail. ``rounds`` holds each round's events (round n takes the n-th, cycling: one
    set when every round sends the same inputs)."""

    def __init__(
        self,
        settings: Settings,
        rounds: Sequence[Sequence[Envelope]],
        count: int,
        warmup: Envelope,
    ) -> None:
        self.settings = settings
        self.models = rounds
        self.json_events = [[json_form(event) for event in events] for events in rounds]
        self.count = count
        self.warmup = warmup
        self.prebuilt: list[Run] = []

    def __call__(self, number: int) -> Run:
        index = (number - 1) % len(self.models)
        run = sdk_run(self.settings, self.json_events[index], self.count, self.warmup, "sdk")
        self.prebuilt.append(
            sdk_run(self.settings, self.models[index], self.count, self.warmup, "sdk_models")
        )
        return run

    def detail(self, per: str) -> dict[str, Any]:
        """The prebuilt models' rates and CPU time, for a row's detail."""
        return {
            "sdk_prebuilt_models_rounds": [round(r.rate) for r in self.prebuilt],
            f"sdk_prebuilt_models_cpu_us_per_{per}": round(
                statistics.median(r.cpu_us for r in self.prebuilt), 1
            ),
        }


def mapped_events(outcomes: Sequence[Any], what: str) -> list[Envelope]:
    """The events of adapter outcomes, every one of which must be mapped."""
    found: list[Envelope] = []
    for outcome in outcomes:
        if not isinstance(outcome, Mapped):
            raise RuntimeError(f"{what}: an input did not map: {outcome!r}")
        found.extend(outcome.events)
    return found


# ---- OPA: the decisions ---------------------------------------------------------------

_TOOLS: tuple[tuple[str, str, list[str]], ...] = (
    ("github://acme/payments-service/src", "read", ["repo:read"]),
    ("postgres://orders-db/public.orders", "select", ["orders:read"]),
    ("s3://acme-reports/2026/q4/revenue.parquet", "get", ["reports:read"]),
    ("jira://SEC/issues/SEC-4211", "comment", ["tickets:write"]),
    ("/salary/bob", "GET", []),
)
_RESULTS: tuple[Any, ...] = (
    True,
    "true",
    {"allow": True, "reasons": ["purpose matches requested scopes"]},
    {"allowed": False, "reasons": ["scope not delegated by the parent task"]},
    False,
)
_TREE_DECISIONS = 8


def _stamp(when: datetime) -> str:
    """An RFC 3339 time with nanoseconds, as OPA and Vault write them."""
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond:06d}000Z"


def decisions(count: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``count`` distinct decision events shaped like OPA's documented upload sample."""
    base = sample_json("opa/upload.json")[0]
    rng = random.Random(seed)
    found = []
    for i in range(count):
        decision = copy.deepcopy(base)
        decision["decision_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        decision["timestamp"] = _stamp(EPOCH + timedelta(milliseconds=37 * i))
        tree = i // _TREE_DECISIONS
        root = f"task-{seed}-{tree:06d}-planner"
        depth = 0 if i % _TREE_DECISIONS == 0 else 1
        task = root if depth == 0 else f"task-{seed}-{tree:06d}-agent-{i % 3}"
        resource, action, scopes = rng.choice(_TOOLS)
        custody = {
            "tenant": TENANT,
            "root_task_id": root,
            "task_id": task,
            "parent_task_id": None if depth == 0 else root,
            "depth": depth,
            "workload_id": f"spiffe://{TENANT}.example/ns/agents/sa/agent-{i % 3}",
        }
        if i % 2:
            decision["input"] = {"method": action, "path": resource, "custody": custody}
        else:
            decision["input"] = {
                "resource": resource,
                "action": action,
                "data_scope": scopes,
                "custody": custody,
            }
        decision["result"] = copy.deepcopy(_RESULTS[i % len(_RESULTS)])
        decision["requested_by"] = f"10.42.{i % 7}.{i % 250}:{40000 + i % 20000}"
        found.append(decision)
    return found


def uploads(items: Sequence[dict[str, Any]]) -> list[tuple[int, bytes]]:
    """The decisions in uploads of :data:`UPLOAD_DECISIONS`: (count, gzip JSON array)."""
    cut = [items[i : i + UPLOAD_DECISIONS] for i in range(0, len(items), UPLOAD_DECISIONS)]
    return [(len(part), gzip.compress(json.dumps(part).encode())) for part in cut]


# ---- OPA: the collector process -------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; the split starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CollectProcess:
    """``custody collect`` as a process of its own, on a port of the system's choosing,
    with a collect token for ``source``; its metrics on ``metrics_port`` (0: the system's
    choice, not told)."""

    def __init__(
        self, settings: Settings, tokens: Path, workdir: Path, source: str, metrics_port: int = 0
    ) -> None:
        self.settings = settings
        self.token = issue_token(tokens, TENANT, source)
        self.metrics_port = metrics_port
        env = {
            **os.environ,
            "CUSTODY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "CUSTODY_KAFKA_PROFILE": settings.kafka_profile,
            "CUSTODY_HOME": str(settings.home),
            "CUSTODY_TENANT": TENANT,
            "CUSTODY_COLLECT_TOKENS_FILE": str(tokens),
            "CUSTODY_COLLECT_ADDRESS": "127.0.0.1:0",
            "CUSTODY_COLLECT_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        }
        self.log = workdir / f"collect-{source}.log"
        # A collector run before this one (another row) left its address there.
        state_path(settings, COLLECT).unlink(missing_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [CUSTODY, "collect"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.port = self._started()

    def _started(self) -> int:
        """The port once the service answers its health check."""
        state = state_path(self.settings, COLLECT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"custody collect exited: {self.log.read_text()[-2000:]}")
            try:
                port = int(json.loads(state.read_text())["address"].rsplit(":", 1)[1])
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", HEALTH)
                if connection.getresponse().status == 200:
                    connection.close()
                    return port
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"custody collect did not start: {self.log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        """CPU time the collector has spent so far."""
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """SIGTERM (the collector delivers what it holds), killed after 30 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _send_each(port: int, token: str, bodies: Sequence[tuple[int, bytes]]) -> None:
    """POST each upload on one kept-alive connection, the next once the previous was
    answered; each answer must be 200 with every decision published."""
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Authorization": f"Bearer {token}",
    }
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=UPLOAD_TIMEOUT)
    try:
        for count, body in bodies:
            connection.request("POST", OPA_LOGS, body, headers)
            answer = connection.getresponse()
            text = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"upload answered {answer.status}: {text[:500]!r}")
            tally = json.loads(text)
            if tally["published"] != count or tally["dead_lettered"] or tally["skipped"]:
                raise RuntimeError(f"upload of {count} decisions answered {tally}")
    finally:
        connection.close()


def send_all(port: int, token: str, bodies: Sequence[tuple[int, bytes]], clients: int) -> None:
    """Every upload, by ``clients`` clients at once (each sending its share in turn)."""
    if clients == 1:
        _send_each(port, token, bodies)
        return
    failures: list[BaseException] = []

    def client(share: Sequence[tuple[int, bytes]]) -> None:
        try:
            _send_each(port, token, share)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=client, args=(bodies[i::clients],), name=f"opa-{i}")
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RUN_TIMEOUT)
    if failures or any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"uploads failed: {failures[:1] or 'timed out'}")


def collect_opa_run(
    collector: CollectProcess, bodies: Sequence[tuple[int, bytes]], count: int, clients: int
) -> Run:
    """Upload every decision; the collector's CPU time over the run."""
    gc.collect()
    cpu = collector.cpu_seconds()
    started = time.perf_counter()
    send_all(collector.port, collector.token, bodies, clients)
    seconds = time.perf_counter() - started
    return Run("collect", count, seconds, collector.cpu_seconds() - cpu)


def bench_opa(settings: Settings, workdir: Path) -> Entry:
    """The ``collect.opa`` row."""
    count = env_count("CUSTODY_BENCH_COLLECT_DECISIONS", DEFAULT_DECISIONS)
    clients = env_count("CUSTODY_BENCH_COLLECT_CLIENTS", 1)
    started = announce("collect.opa", count, "making {count} OPA decisions")
    items = decisions(count)
    bodies = uploads(items)
    origin = Origin(TENANT, OPA_SOURCE)
    mapping = OpaMapping()
    events = mapped_events([map_decision(d, origin, mapping) for d in items], "OPA")
    warm_items = decisions(10, seed=SEED + 1)
    warmup = mapped_events([map_decision(warm_items[0], origin, mapping)], "OPA")[0]
    raw_bytes = sum(len(json.dumps(d)) for d in items) // count
    gzip_bytes = sum(len(body) for _, body in bodies) // len(bodies)
    print(
        f"collect.opa: {len(bodies)} uploads of {UPLOAD_DECISIONS:,} "
        f"({gzip_bytes:,} bytes gzip each, {raw_bytes} bytes JSON per decision)"
    )
    collector = CollectProcess(settings, workdir / "collect-tokens.json", workdir, OPA_SOURCE)
    try:
        _send_each(collector.port, collector.token, uploads(warm_items))

        def collect_run(number: int) -> Run:
            profile = first_run_profile("CUSTODY_BENCH_COLLECT_OPA_PYSPY", number)
            with py_spy(collector.process.pid, profile):
                return collect_opa_run(collector, bodies, count, clients)

        baseline = Baseline(settings, [events], count, warmup)
        sdks, runs = alternate(
            "collect.opa",
            ROUNDS,
            baseline,
            collect_run,
            "decisions/s",
        )
    finally:
        collector.stop()
    detail = {
        "decisions": count,
        "upload_decisions": UPLOAD_DECISIONS,
        "clients": clients,
        "rounds": ROUNDS,
        "mean_gzip_upload_bytes": gzip_bytes,
        "mean_decision_json_bytes": raw_bytes,
        **rates_by_round(sdk=sdks, collect=runs),
        "sdk_cpu_us_per_decision": round(statistics.median(r.cpu_us for r in sdks), 1),
        "collector_cpu_us_per_decision": round(statistics.median(r.cpu_us for r in runs), 1),
        **baseline.detail("decision"),
    }
    return finish("collect.opa", "decisions/s", sdks, runs, detail, started)


# ---- Vault: the audit lines -----------------------------------------------------------


def _hmac(text: str) -> str:
    """A value shaped like Vault's HMAC'd fields."""
    return "hmac-sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _retoken(entry: dict[str, Any], accessor: str, token: str, metadata: dict[str, str]) -> None:
    """Make ``entry``'s request come from the token ``accessor``."""
    auth = entry["auth"]
    auth.update(accessor=accessor, client_token=token, metadata=metadata)
    entry["request"].update(client_token=token, client_token_accessor=accessor)


def vault_lines(count: int, seed: int = SEED) -> list[bytes]:
    """``count`` audit lines (request, response, ...): a login every
    ``READS_PER_LOGIN + 1`` pairs, KV reads with the token it issued between them."""
    login = [json.loads(line) for line in sample_lines("vault/login_approle.jsonl")]
    read = [json.loads(line) for line in sample_lines("vault/kv_read.jsonl")]
    rng = random.Random(seed)
    lines: list[bytes] = []
    accessor = token = ""
    metadata: dict[str, str] = {}
    for pair in range(count // 2):
        when = EPOCH + timedelta(milliseconds=13 * pair)
        request_id = str(uuid.UUID(int=rng.getrandbits(128)))
        unit = pair // (READS_PER_LOGIN + 1)
        if pair % (READS_PER_LOGIN + 1) == 0:
            entries = copy.deepcopy(login)
            accessor = _hmac(f"{seed}/accessor/{unit}")
            token = _hmac(f"{seed}/token/{unit}")
            metadata = {
                "role_name": "agent-planner",
                "custody_task_id": f"task-{seed}-{unit:06d}-planner",
                "custody_root_task_id": f"task-{seed}-{unit:06d}-planner",
                "custody_purpose": "plan the Q3 incident review",
            }
            for issued in (entries[1]["auth"], entries[1]["response"]["auth"]):
                issued.update(accessor=accessor, client_token=token, metadata=metadata)
            entries[0]["request"]["remote_port"] = 40000 + unit % 20000
        else:
            entries = copy.deepcopy(read)
            for entry in entries:
                _retoken(entry, accessor, token, metadata)
                entry["request"]["path"] = f"secret/data/app/config-{pair % 17}"
        for offset, entry in enumerate(entries):
            entry["time"] = _stamp(when + timedelta(microseconds=4000 * offset))
            entry["request"]["id"] = request_id
            lines.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    return lines


def vault_events(lines: Sequence[bytes], origin: Origin) -> list[Envelope]:
    """What a fresh mapper makes of ``lines``: events only (no line may be rejected; a
    request line is counted as waiting for its response's, which carries the events)."""
    mapper = VaultAuditMapper(origin, VaultMapping())
    outcomes = [o for o, _ in outcomes_of_lines(mapper, lines)]
    return mapped_events([o for o in outcomes if o != Skipped(REQUEST_HELD)], "Vault")


def follow_run(
    settings: Settings, log: Path, count: int, expected: int, warmup: Envelope, checkpoint: Path
) -> Run:
    """A fresh follower (publisher, mapper, checkpoint) steps until it took every line."""
    origin = Origin(TENANT, VAULT_SOURCE)
    publisher = CollectPublisher(settings)
    try:
        publisher.publish(origin, [(Mapped((warmup,)), None)])
        checkpoint.unlink(missing_ok=True)
        follower = VaultFileFollower(
            log, origin, VaultAuditMapper(origin, VaultMapping()), publisher, checkpoint
        )
        with own_heap():
            started = time.perf_counter(), time.process_time()
            deadline = time.monotonic() + RUN_TIMEOUT
            while follower.lines < count:
                if not follower.step() and time.monotonic() > deadline:
                    raise RuntimeError(f"follower took {follower.lines} of {count} lines")
            done = time.perf_counter(), time.process_time()
    finally:
        publisher.close()
    tally = follower.tally
    if tally.published != expected or tally.dead_lettered:
        raise RuntimeError(f"follower published {tally.as_json()}, expected {expected} events")
    return Run("collect", count, done[0] - started[0], done[1] - started[1])


def bench_vault_file(settings: Settings, workdir: Path) -> Entry:
    """The ``collect.vault_file`` row."""
    count = env_count("CUSTODY_BENCH_COLLECT_LINES", DEFAULT_LINES)
    started = announce("collect.vault_file", count, "making {count} Vault audit lines")
    lines = vault_lines(count)
    origin = Origin(TENANT, VAULT_SOURCE)
    events = vault_events(lines, origin)
    warmup = vault_events(vault_lines(2, seed=SEED + 1), origin)[0]
    log = workdir / "vault-audit.log"
    log.write_bytes(b"".join(lines))
    print(
        f"collect.vault_file: {len(events):,} events from {len(lines):,} lines "
        f"({log.stat().st_size // len(lines):,} bytes per line)"
    )

    def collect_run(number: int) -> Run:
        profile = first_run_profile("CUSTODY_BENCH_COLLECT_VAULT_PYSPY", number)
        with py_spy(os.getpid(), profile):
            return follow_run(
                settings, log, len(lines), len(events), warmup, workdir / "checkpoint.json"
            )

    baseline = Baseline(settings, [events], len(lines), warmup)
    sdks, runs = alternate(
        "collect.vault_file",
        ROUNDS,
        baseline,
        collect_run,
        "lines/s",
    )
    detail = {
        "lines": len(lines),
        "events": len(events),
        "rounds": ROUNDS,
        **rates_by_round(sdk=sdks, collect=runs),
        "sdk_cpu_us_per_line": round(statistics.median(r.cpu_us for r in sdks), 1),
        "collect_cpu_us_per_line": round(statistics.median(r.cpu_us for r in runs), 1),
        **baseline.detail("line"),
    }
    return finish("collect.vault_file", "lines/s", sdks, runs, detail, started)


# ---- OTLP: the spans ------------------------------------------------------------------


def finish(
    name: str,
    unit: str,
    sdks: Sequence[Run],
    runs: Sequence[Run],
    detail: dict[str, Any],
    started: float,
) -> Entry:
    """The row: the median collect rate against the median SDK rate."""
    sdk = statistics.median(r.rate for r in sdks)
    rate = statistics.median(r.rate for r in runs)
    ratios = [round(c.rate / s.rate, 3) for s, c in zip(sdks, runs, strict=True)]
    return entry(
        name,
        rate,
        unit,
        sdk,
        {
            **detail,
            "ratio_rounds": ratios,
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "goal": f"ratio >= {GOAL_RATIO}",
            "goal_met": rate / sdk >= GOAL_RATIO,
            "bench_seconds": round(time.perf_counter() - started, 1),
        },
    )


Bench = Callable[[Settings, Path], Entry]


def run() -> list[Entry]:
    """Every row on one fresh broker."""
    benches: list[Bench] = [bench_opa, bench_vault_file]
    with local_broker() as bootstrap, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        settings = bench_settings(bootstrap, workdir)
        ensure_topics(settings.kafka_admin(), settings.event_topic_partitions())
        return [bench(settings, workdir) for bench in benches]
