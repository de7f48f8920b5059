"""The ``custody`` command.

Settings come from ``CUSTODY_*`` environment variables; the global flags override them.
``--json`` output is one JSON object (or one per line for lists) and is stable.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from processors import roles, stack, starting
from processors.broker import BrokerError
from processors.collect import commands as collect_commands
from processors.command_context import (
    JsonLinesOption,
    JsonOption,
    TenantOption,
    fail,
    settings_of,
)
from processors.reporting import commands as reporting_commands
from processors.serving.reader import Reader
from producers import simulator
from producers.admin import TopicSetupError
from producers.jsonlines import parse_event_lines
from producers.producer import CustodyProducer, DeliveryReport, PublishError
from producers.settings import Settings
from producers.traffic import publish_simulation
from schemas.models import describe_validation_error
from schemas.topics import EVENTS

app = typer.Typer(
    help="Custody: provenance evidence for autonomous agents.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback must never print local variables: they may hold event values.
    pretty_exceptions_show_locals=False,
)
out = Console()
err = Console(stderr=True)


@app.callback()
def configure(
    ctx: typer.Context,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (CUSTODY_KAFKA_BOOTSTRAP).")
    ] = None,
    tenant: TenantOption = None,
    home: Annotated[
        Path | None, typer.Option(help="Local stack state and logs (CUSTODY_HOME).")
    ] = None,
) -> None:
    overrides: dict[str, Any] = {
        key: value
        for key, value in {"kafka_bootstrap": bootstrap, "tenant": tenant, "home": home}.items()
        if value is not None
    }
    try:
        ctx.obj = Settings(**overrides)
    except ValidationError as exc:
        fail(f"[red]invalid configuration:[/] {describe_validation_error(exc)}", 2)


def _print_status(statuses: list[stack.ProcessStatus], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"processes": [s.as_dict() for s in statuses]}))
        return
    table = Table(title="Custody local stack")
    for column in ("process", "pid", "running", "healthy", "address", "metrics", "log"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            str(s.pid or "-"),
            "[green]yes[/]" if s.running else "[red]no[/]",
            "[green]yes[/]" if s.healthy else "[red]no[/]",
            s.address or "-",
            s.metrics or "-",
            s.log,
        )
    out.print(table)


def _up(
    settings: Settings,
    start_timeout: float = stack.START_TIMEOUT_SECONDS,
    correlators: int | None = None,
) -> None:
    """Start what is not running of the local stack, print its status; exit 1 on failure.
    ``correlators``: see :func:`processors.stack.up`."""
    title = "starting the local stack (broker, correlate, ingest+serve)"
    with err.status(title) as spinner:

        def progress(said: str) -> None:
            spinner.update(f"{title}: {escape(said)}")

        try:
            statuses = stack.up(
                settings, start_timeout=start_timeout, progress=progress, correlators=correlators
            )
        except (BrokerError, TopicSetupError, starting.StackError) as exc:
            fail(f"[red]custody up failed:[/] {escape(str(exc))}")
    _print_status(statuses, as_json=False)


@app.command()
def up(
    ctx: typer.Context,
    timeout: Annotated[
        float,
        typer.Option(
            min=1,
            envvar="CUSTODY_UP_TIMEOUT_SECONDS",
            help="Seconds at most to wait for the workers to start, however they progress "
            f"(one whose log stops moving for {starting.START_STALL_SECONDS:.0f}s fails sooner).",
        ),
    ] = stack.START_TIMEOUT_SECONDS,
    correlators: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Correlator workers to run in one consumer group from now on (default: as "
            "many as the last up was given, at first 1); the partitions of "
            f"{EVENTS} bound how many do useful work.",
        ),
    ] = None,
) -> None:
    """Start the local stack (what is not already running) and create the topics."""
    _up(settings_of(ctx), timeout, correlators)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local stack."""
    stopped = stack.down(settings_of(ctx))
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Show each process of the local stack with its PID and health."""
    statuses = stack.status(settings_of(ctx))
    _print_status(statuses, as_json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(3)


def _open_input(source: str) -> TextIO:
    if source == "-":
        return sys.stdin
    return Path(source).open(encoding="utf-8")


@app.command()
def publish(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="FILE|-", help="JSON-lines events.")],
) -> None:
    """Validate JSON-lines events and publish them, all or nothing.

    Every line is validated first. If any is invalid, each problem is printed with its
    line number, field and reason, nothing is published, and the exit code is 1.
    Lines without hash-chain fields are stamped on this publisher's own instance; a line
    already stamped (``producer_instance`` and ``seq`` together) is published as given.
    """
    settings = settings_of(ctx)
    try:
        with _open_input(source) as stream:
            parsed = parse_event_lines(stream)
    except OSError as exc:
        fail(f"[red]cannot read {source}:[/] {exc.strerror}", 2)
    except UnicodeDecodeError as exc:
        fail(f"[red]cannot read {source}:[/] not UTF-8 (byte {exc.start})", 2)
    if parsed.errors:
        for problem in parsed.errors:
            err.print(str(problem), markup=False, highlight=False)
        lines = len({p.line for p in parsed.errors})
        fail(f"[red]{lines} invalid line(s); nothing was published.[/]")
    if not parsed.events:
        err.print("no events in input; nothing was published.")
        return

    started = time.monotonic()
    partitions: set[int] = set()
    by_type: Counter[str] = Counter()
    try:
        producer = CustodyProducer(settings)
    except TopicSetupError as exc:
        fail(f"[red]cannot publish:[/] {exc}", 2)

    def note_partition(report: DeliveryReport) -> None:
        if report.partition is not None:
            partitions.add(report.partition)

    progress = Progress(
        TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), console=err, transient=True
    )
    try:
        with progress:
            task = progress.add_task("publish", total=len(parsed.events))
            for _, event in parsed.events:
                producer.publish(event, on_delivery=note_partition)
                by_type[str(event.event_type)] += 1
                progress.advance(task)
            producer.close()
    except PublishError as exc:
        # Validation was all or nothing; a broker failure mid-way is not, so say how far
        # it got (the hash chain shows the gap downstream too).
        err.print(f"[red]publish failed:[/] {exc}")
        err.print(
            f"{producer.delivered} of {len(parsed.events)} events were acknowledged "
            "before the failure."
        )
        raise typer.Exit(2) from None
    elapsed = time.monotonic() - started
    table = Table(title=f"Published to {EVENTS} on {settings.kafka_bootstrap}")
    table.add_column("event_type")
    table.add_column("events", justify="right")
    for event_type, count in sorted(by_type.items()):
        table.add_row(event_type, str(count))
    table.add_row("[bold]total[/]", f"[bold]{len(parsed.events)}[/]")
    out.print(table)
    out.print(
        f"{len(parsed.events)} events in {elapsed:.2f}s, {len(partitions)} partition(s), "
        f"producer_instance {producer.producer_instance}"
    )


@app.command()
def simulate(
    ctx: typer.Context,
    roots: Annotated[int, typer.Option(min=1, help="Root tasks (custody trees).")] = 100,
    rate: Annotated[
        float, typer.Option(min=0, help="Events per second; 0 = as fast as possible.")
    ] = 0,
    misbehaviour_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of root tasks that misbehave.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 1,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop publishing after this many seconds.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="When the simulated work begins: an ISO-8601 time or a duration back from "
            "now (8h, 2d). Default: now."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Publish realistic multi-agent traffic (see producers/simulator.py).

    Event times follow the simulated work (a batch job runs for hours), so when publishing
    faster than real time from now they run ahead of the wall clock, and alerts that wait
    for a deadline (an unrevoked token) fire only when the wall clock gets there. Started in
    the past (--start 8h), most deadlines have passed when the events arrive; those of each
    partition's latest trees still wait for its watermark's idle advance (grace + lateness).
    """
    from processors.serving.alerts import parse_since
    from processors.storage.backend import iso

    settings = settings_of(ctx)
    try:
        begin = parse_since(start) if start else datetime.now(UTC)
    except ValueError as exc:
        fail(f"[red]{escape(str(exc).replace('--since', '--start'))}[/]", 2)
    config = simulator.SimulationConfig(
        roots=roots,
        misbehaviour_rate=misbehaviour_rate,
        seed=seed,
        start=begin.replace(microsecond=0),
        tenant=settings.tenant,
    )
    try:
        run = publish_simulation(settings, config, rate, duration, err)
    except TopicSetupError as exc:
        fail(f"[red]cannot publish:[/] {exc}", 2)
    except PublishError as exc:
        fail(f"[red]simulate failed:[/] {exc}", 2)
    summary = {
        "events": run.published,
        "planned_events": run.planned_events,
        "trees": len(run.published_roots),
        "events_by_type": dict(sorted(run.by_type.items())),
        "misbehaviours": dict(sorted(run.misbehaviours().items())),
        "seed": seed,
        "start": iso(config.start),
        "elapsed_seconds": round(run.elapsed_seconds, 3),
        "events_per_second": (
            round(run.published / run.elapsed_seconds, 1) if run.elapsed_seconds > 0 else None
        ),
        "producer_instance": run.producer_instance,
    }
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table(title=f"Simulated to {EVENTS} on {settings.kafka_bootstrap}")
    table.add_column("")
    table.add_column("count", justify="right")
    for event_type, count in sorted(run.by_type.items()):
        table.add_row(event_type, str(count))
    table.add_row("[bold]events[/]", f"[bold]{run.published}[/] of {run.planned_events}")
    table.add_row("[bold]trees[/]", f"[bold]{len(run.published_roots)}[/] of {roots}")
    for kind, count in sorted(run.misbehaviours().items()):
        table.add_row(f"misbehaviour: {kind}", str(count))
    out.print(table)
    out.print(
        f"{run.published} events in {run.elapsed_seconds:.2f}s "
        f"({summary['events_per_second']}/s), seed {seed}"
    )


@app.command()
def demo(
    ctx: typer.Context,
    roots: Annotated[int, typer.Option(min=1, help="Root tasks (custody trees).")] = 300,
    misbehaviour_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Share of root tasks that misbehave.")
    ] = 0.1,
    seed: Annotated[
        int | None, typer.Option(help="Same seed, same trees (default: a new one each run).")
    ] = None,
    hours_ago: Annotated[
        float, typer.Option(min=0, help="When the simulated work began, hours back.")
    ] = 8.0,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for everything to be stored.")
    ] = 180.0,
    deadline_wait: Annotated[
        float,
        typer.Option(min=0, help="Seconds more to wait for alerts that fire on a deadline."),
    ] = 30.0,
) -> None:
    """Start the local stack, simulate a few hundred custody trees, wait until ClickHouse
    holds them, and print a summary, one tree, the alerts by type and the explorer's URL.
    The stack keeps running (custody down stops it)."""
    from processors import demo as demo_run
    from processors.serving.reader import running_api
    from processors.serving.render import rows_table, trace_tree
    from processors.serving.trace import trace as build_trace

    settings = settings_of(ctx)
    _up(settings)
    seed = seed if seed is not None else int(time.time())
    with _reader(ctx) as reader:
        start = demo_run.simulation_start(reader, datetime.now(UTC), hours_ago)
    config = simulator.SimulationConfig(
        roots=roots,
        misbehaviour_rate=misbehaviour_rate,
        seed=seed,
        start=start,
        tenant=settings.tenant,
    )
    try:
        run = publish_simulation(settings, config, console=err)
    except (TopicSetupError, PublishError) as exc:
        fail(f"[red]simulate failed:[/] {escape(str(exc))}", 2)
    out.print(
        f"Published {run.published} events of {len(run.published_roots)} custody trees "
        f"(seed {seed}, {sum(run.misbehaviours().values())} misbehaving) "
        f"in {run.elapsed_seconds:.1f}s"
    )
    with _reader(ctx) as reader:
        with err.status("waiting for ClickHouse") as spinner:
            progress = demo_run.wait_until_stored(
                reader,
                run,
                timeout,
                deadline_wait,
                lambda p: spinner.update(
                    f"waiting for ClickHouse: {p.events}/{run.published} events, "
                    f"{p.finished_tasks}/{run.by_type['TASK_COMPLETED']} tasks finished, "
                    f"{len(p.missing_alerts)} expected alerts to come"
                ),
            )
        if not progress.stored(run):
            err.print(
                f"[yellow]not all stored after {timeout:.0f}s:[/] {progress.events}/"
                f"{run.published} events, {len(progress.missing_alerts)} expected alerts "
                "missing; showing what is there"
            )
        counts = demo_run.summary(reader, run)
        by_type = demo_run.alerts_by_type(reader, run)
        root = demo_run.showcase_tree(run)
        tree = build_trace(reader, root)
        reader_alert_ids = demo_run.alert_ids(reader, run)
    table = Table(title="Stored in ClickHouse")
    table.add_column("")
    table.add_column("count", justify="right")
    for name, value in counts.items():
        table.add_row(name.replace("_", " "), str(value))
    out.print(table)
    out.print(trace_tree(tree))
    out.print(rows_table(by_type, title="Alerts by type (planted = misbehaviours simulated)"))
    pending = progress.waiting_for_deadline()
    if pending:
        out.print(
            f"{len(pending)} planted {', '.join(sorted(set(pending.values())))} alerts are "
            "still to come: they fire when the correlator's watermark passes their deadline "
            f"(a tree's end or a late access, plus the {settings.grace_seconds:.0f}s grace; on "
            "a quiet stack, by idle advancement within minutes); custody alerts shows them."
        )
    address = running_api(settings)
    if address:
        out.print(f"Explorer: [bold]{address}/#tree={root}&tenant={settings.tenant}[/]")
    if settings.alertmanager_url is not None:
        _print_notified(
            settings.alertmanager_url.get_secret_value(),
            settings.notify_timeout_seconds,
            reader_alert_ids,
        )
    out.print("The stack keeps running; stop it with: custody down")
    if not progress.stored(run):
        raise typer.Exit(3)


def _print_notified(url: str, timeout: float, ids: set[str]) -> None:
    """How many of the run's alerts the Alertmanager at ``url`` holds (notify posts them
    as they come)."""
    from processors import demo as demo_run
    from processors.notify.alertmanager import AlertmanagerClient

    client = AlertmanagerClient(url, timeout)
    held = demo_run.notified(client, ids, timeout=30)
    if held < 0:
        err.print(f"[yellow]Alertmanager at {client.address} does not answer[/]")
        return
    out.print(
        f"Alertmanager: [bold]{client.address}[/] holds {held} of this run's {len(ids)} "
        f"alerts (amtool --alertmanager.url={client.address} alert query source=custody)"
    )


# ---- reading: trace, alerts, query, export ---------------------------------------------


@contextmanager
def _reader(ctx: typer.Context) -> Iterator[Reader]:
    """A reader, with every read failure turned into a clear message and exit code 1."""
    from processors.serving.reader import QueryError, open_reader
    from processors.serving.readonly import ReadOnlyError
    from processors.serving.trace import AmbiguousTask, TreeNotFound
    from processors.storage.target import TargetError

    try:
        with open_reader(settings_of(ctx)) as reader:
            yield reader
    except TreeNotFound as exc:
        fail(f"[red]not found:[/] {escape(str(exc))}", 4)
    except AmbiguousTask as exc:
        fail(f"[red]ambiguous:[/] {escape(str(exc))} with --of-tenant", 2)
    except (QueryError, ReadOnlyError, TargetError) as exc:
        fail(f"[red]query failed:[/] {escape(str(exc))}")


def _print_rows(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
    from processors.serving.render import rows_table

    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    if not rows:
        err.print(f"{title}: no rows")
        return
    out.print(rows_table(rows, title=f"{title} ({len(rows)})"))


@app.command()
def trace(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Any task of the tree.")],
    tenant: Annotated[str | None, typer.Option("--of-tenant", help="The task's tenant.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The custody tree of a task: tasks, delegations, credentials, accesses, alerts."""
    from processors.serving.render import trace_tree
    from processors.serving.trace import trace as build_trace

    with _reader(ctx) as reader:
        tree = build_trace(reader, task_id, tenant)
    if as_json:
        sys.stdout.write(json.dumps(tree.as_json()) + "\n")
    else:
        out.print(trace_tree(tree))


@app.command()
def alerts(
    ctx: typer.Context,
    alert_type: Annotated[str | None, typer.Option("--type", help="One alert type.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Event time from: ISO-8601, or 90s / 15m / 2h / 7d.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--of-tenant", help="One tenant.")] = None,
    as_json: JsonLinesOption = False,
) -> None:
    """Stored alerts, oldest first."""
    from processors.serving.alerts import list_alerts, parse_since

    try:
        start = parse_since(since) if since else None
        with _reader(ctx) as reader:
            rows = [alert.as_json() for alert in list_alerts(reader, alert_type, start, tenant)]
    except ValueError as exc:
        fail(f"[red]invalid option:[/] {escape(str(exc))}", 2)
    if as_json:
        _print_rows(rows, True, "")
        return
    shown = [
        {
            key: row[key]
            for key in (
                "event_time",
                "alert_type",
                "severity",
                "root_task_id",
                "token_id",
                "workload_id",
                "detail",
            )
        }
        for row in rows
    ]
    _print_rows(shown, False, "Alerts")


@app.command()
def query(
    ctx: typer.Context,
    sql: Annotated[
        str,
        typer.Argument(help="A read-only query (SELECT or WITH), @FILE for a file, - for stdin."),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="NAME=VALUE for a {NAME:Type} placeholder (repeatable)."),
    ] = None,
    as_json: JsonLinesOption = False,
) -> None:
    """Run read-only SQL against the custody database (each key read once: FINAL)."""
    params = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"[red]invalid --param {escape(item)!r}:[/] expected NAME=VALUE", 2)
        params[name] = value
    if sql == "-":
        sql = sys.stdin.read()
    elif sql.startswith("@"):
        try:
            sql = Path(sql[1:]).read_text()
        except OSError as exc:
            fail(f"[red]cannot read {escape(sql[1:])}:[/] {escape(str(exc))}", 2)
    with _reader(ctx) as reader:
        rows = reader.select(sql, params)
    _print_rows(rows, as_json, "Rows")


@app.command()
def export(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Any task of the tree.")],
    output_format: Annotated[
        str, typer.Option("--format", help="Only prov-json for now.")
    ] = "prov-json",
    tenant: Annotated[str | None, typer.Option("--of-tenant", help="The task's tenant.")] = None,
) -> None:
    """The custody tree of a task as evidence: a W3C PROV-JSON document."""
    from processors.serving.prov_export import to_prov_json
    from processors.serving.trace import trace as build_trace

    if output_format != "prov-json":
        fail(f"[red]unknown format {escape(output_format)!r}:[/] use prov-json", 2)
    with _reader(ctx) as reader:
        tree = build_trace(reader, task_id, tenant)
    sys.stdout.write(json.dumps(to_prov_json(tree), sort_keys=True, indent=2) + "\n")


@app.command()
def verify(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Only events from this time: ISO-8601, or 90s / 15m / 2h / 7d."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check every producer instance's seq and prev_hash chain from ClickHouse: gaps,
    duplicated seq numbers, and stored events that no longer hash to what their successor
    names. Exit code 5 when evidence is missing or altered."""
    from processors.serving.alerts import parse_since
    from processors.serving.verify import verify as verify_chains

    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        fail(f"[red]invalid option:[/] {escape(str(exc))}", 2)
    with _reader(ctx) as reader, err.status("verifying hash chains"):
        report = verify_chains(reader, start)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    else:
        if report.findings:
            _print_rows(
                [
                    {
                        "kind": f.kind,
                        "producer_instance": f.producer_instance,
                        "seq": f.seq,
                        "event_id": f.event_id or "-",
                        "detail": f.detail,
                    }
                    for f in report.findings
                ],
                as_json=False,
                title="Chain findings",
            )
        verdict = "[green]intact[/]" if report.intact else "[red]EVIDENCE MISSING OR ALTERED[/]"
        out.print(
            f"{report.chains} chains, {report.events} events: {report.vouched} vouched for by "
            f"their successor, {report.unvouched} newest (nothing vouches for them yet), "
            f"{len(report.findings)} findings: {verdict}"
        )
    if not report.intact:
        raise typer.Exit(5)


roles.register(app)
reporting_commands.register(app)
collect_commands.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
