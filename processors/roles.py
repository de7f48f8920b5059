"""The ``custody`` subcommands that run a long-lived role of the pipeline (correlate,
ingest, serve, notify) or prepare its storage (migrate); :func:`register` adds them to the
command. Each role serves its Prometheus metrics on ``--metrics-address``.

Each imports its role when run: faust and the ClickHouse clients take a moment to import,
which the other commands need not pay.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from processors import stack
from processors.command_context import fail, settings_of
from processors.logs import log_json_to_stderr
from producers.admin import TopicSetupError

out = Console()
err = Console(stderr=True)

_METRICS_HELP = "HOST:PORT of the Prometheus /metrics endpoint (port 0: any free port)."
# ingest's, serve's and notify's: unset, the setting CUSTODY_<ROLE>_METRICS_ADDRESS.
MetricsAddress = Annotated[
    str | None, typer.Option(help=f"{_METRICS_HELP} Default: CUSTODY_<ROLE>_METRICS_ADDRESS.")
]


def correlate(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option(help="The worker's name on this host: its heartbeat and data directory."),
    ] = stack.CORRELATE,
    metrics_address: Annotated[
        str, typer.Option(envvar=stack.METRICS_ADDRESS_VARIABLE, help=_METRICS_HELP)
    ] = stack.METRICS_ADDRESS,
) -> None:
    """Run the correlate role: custody graphs and alerts from custody.events.v1."""
    from processors.correlator.app import run_worker
    from processors.metrics_endpoint import MetricsError

    log_json_to_stderr()
    try:
        run_worker(settings_of(ctx), name=name, metrics_address=metrics_address)
    except (TopicSetupError, MetricsError) as exc:
        logging.getLogger("custody.correlate").error("correlate cannot start: %s", exc)
        raise typer.Exit(1) from None


def migrate(ctx: typer.Context) -> None:
    """Apply the ClickHouse migrations (CUSTODY_CLICKHOUSE_URL) that are not applied yet."""
    from processors.storage.backend import StorageError
    from processors.storage.migrations import MigrationError, access_users, run_migrations
    from processors.storage.target import TargetError, parse_target

    settings = settings_of(ctx)
    try:
        target = parse_target(settings.clickhouse())
        report = run_migrations(target, settings.retention_days, users=access_users(settings))
    except (TargetError, MigrationError, StorageError) as exc:
        fail(f"[red]custody migrate failed:[/] {escape(str(exc))}")
    out.print(
        f"{target.describe()}: "
        + (f"applied {', '.join(report.applied)}" if report.applied else "already up to date")
        + f"; retention {settings.retention_days} days"
    )
    for name, reason in report.skipped.items():
        out.print(f"[yellow]{escape(name)} not applied:[/] {escape(reason)}")
    if report.users:
        out.print(f"users kept: {', '.join(report.users)}")


def ingest(
    ctx: typer.Context,
    serve: Annotated[
        bool | None,
        typer.Option(
            "--serve/--no-serve",
            help="Also run the query API (default: yes on the embedded engine).",
        ),
    ] = None,
    metrics_address: MetricsAddress = None,
) -> None:
    """Run the ingest role: events, state and alerts from Kafka into ClickHouse."""
    from processors.ingest import run
    from processors.metrics_endpoint import MetricsError
    from processors.storage.backend import StorageError
    from processors.storage.migrations import MigrationError
    from processors.storage.target import TargetError

    log_json_to_stderr()
    settings = settings_of(ctx)
    try:
        run(settings, serve, metrics_address or settings.ingest_metrics_address)
    except (TargetError, MigrationError, StorageError, MetricsError) as exc:
        fail(f"[red]custody ingest failed:[/] {escape(str(exc))}")


def serve(
    ctx: typer.Context,
    metrics_address: MetricsAddress = None,
) -> None:
    """Run the query API alone (with a ClickHouse server; on chdb, ingest serves)."""
    import signal
    import threading

    from processors.metrics_endpoint import MetricsError, serve_registry
    from processors.serve import QueryApi
    from processors.serving.metrics import ServeMetrics
    from processors.storage.backend import StorageError, open_backend
    from processors.storage.target import TargetError, parse_target

    log_json_to_stderr()
    settings = settings_of(ctx)
    metrics = ServeMetrics()
    try:
        endpoint = serve_registry(
            metrics.registry,
            metrics_address or settings.serve_metrics_address,
            stack.SERVE_METRICS_VARIABLE,
        )
        backend = open_backend(parse_target(settings.clickhouse()))
    except (TargetError, StorageError, MetricsError) as exc:
        fail(f"[red]custody serve failed:[/] {escape(str(exc))}")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    api = QueryApi(settings, backend, metrics=metrics)
    api.start()
    try:
        stop.wait()
    finally:
        api.stop()
        backend.close()
        endpoint.close()


def notify(
    ctx: typer.Context,
    metrics_address: MetricsAddress = None,
) -> None:
    """Run the notify role: alerts from custody.alerts.v1 posted to Alertmanager
    (CUSTODY_ALERTMANAGER_URL)."""
    from processors.metrics_endpoint import MetricsError
    from processors.notify.app import NotifyError, run

    log_json_to_stderr()
    settings = settings_of(ctx)
    try:
        run(settings, metrics_address or settings.notify_metrics_address)
    except (NotifyError, MetricsError) as exc:
        logging.getLogger("custody.notify").error("notify cannot start: %s", exc)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add the role subcommands to ``app``."""
    for command in (correlate, migrate, ingest, serve, notify):
        app.command()(command)
