"""The ``custody`` command.

Settings come from ``CUSTODY_*`` environment variables; the global flags override them.
``--json`` output is one JSON object (or one per line for lists) and is stable.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from processors import stack
from processors.broker import BrokerError
from producers.admin import TopicSetupError
from producers.jsonlines import parse_event_lines
from producers.producer import CustodyProducer, DeliveryReport, PublishError
from producers.settings import Settings
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


def _settings(ctx: typer.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@app.callback()
def configure(
    ctx: typer.Context,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (CUSTODY_KAFKA_BOOTSTRAP).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant (CUSTODY_TENANT).")] = None,
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
        err.print(f"[red]invalid configuration:[/] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None


def _print_status(statuses: list[stack.ProcessStatus], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps({"processes": [s.as_dict() for s in statuses]}))
        return
    table = Table(title="Custody local stack")
    for column in ("process", "pid", "running", "healthy", "address", "log"):
        table.add_column(column)
    for s in statuses:
        table.add_row(
            s.name,
            str(s.pid or "-"),
            "[green]yes[/]" if s.running else "[red]no[/]",
            "[green]yes[/]" if s.healthy else "[red]no[/]",
            s.address or "-",
            s.log,
        )
    out.print(table)


@app.command()
def up(ctx: typer.Context) -> None:
    """Start the local stack (what is not already running) and create the topics."""
    settings = _settings(ctx)
    try:
        statuses = stack.up(settings)
    except (BrokerError, TopicSetupError, stack.StackError) as exc:
        err.print(f"[red]custody up failed:[/] {exc}")
        raise typer.Exit(1) from None
    _print_status(statuses, as_json=False)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the local stack."""
    stopped = stack.down(_settings(ctx))
    out.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Show each process of the local stack with its PID and health."""
    statuses = stack.status(_settings(ctx))
    _print_status(statuses, as_json)
    if not all(s.healthy for s in statuses):
        raise typer.Exit(3)


@app.command()
def correlate(ctx: typer.Context) -> None:
    """Run the correlate role: custody graphs and alerts from custody.events.v1."""
    # Imported here: faust takes a second to import, which the other commands need not pay.
    from processors.correlate import run_worker

    run_worker(_settings(ctx))


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
    settings = _settings(ctx)
    try:
        with _open_input(source) as stream:
            parsed = parse_event_lines(stream)
    except OSError as exc:
        err.print(f"[red]cannot read {source}:[/] {exc.strerror}")
        raise typer.Exit(2) from None
    except UnicodeDecodeError as exc:
        err.print(f"[red]cannot read {source}:[/] not UTF-8 (byte {exc.start})")
        raise typer.Exit(2) from None
    if parsed.errors:
        for problem in parsed.errors:
            err.print(str(problem), markup=False, highlight=False)
        lines = len({p.line for p in parsed.errors})
        err.print(f"[red]{lines} invalid line(s); nothing was published.[/]")
        raise typer.Exit(1)
    if not parsed.events:
        err.print("no events in input; nothing was published.")
        return

    started = time.monotonic()
    partitions: set[int] = set()
    by_type: Counter[str] = Counter()
    try:
        producer = CustodyProducer(settings)
    except TopicSetupError as exc:
        err.print(f"[red]cannot publish:[/] {exc}")
        raise typer.Exit(2) from None

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


def main() -> None:
    """Console-script entry point."""
    app()
