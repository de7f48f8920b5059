"""The ``custody collect``, ``custody collect-token`` and ``custody import`` commands;
:func:`register` adds them to the command."""

from __future__ import annotations

import json
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from processors.command_context import JsonOption, TenantOption, fail, settings_of

out = Console()

SourceOption = Annotated[
    str | None, typer.Option(help="Source name the events carry (default: the command's).")
]


def collect(
    ctx: typer.Context,
    vault_file: Annotated[
        list[Path] | None,
        typer.Option(help="A Vault file audit log to follow (repeatable)."),
    ] = None,
    otlp_topic: Annotated[
        list[str] | None,
        typer.Option(help="A Kafka topic of OTLP traces (otlp_proto) to read (repeatable)."),
    ] = None,
    tenant: TenantOption = None,
    source: Annotated[
        str, typer.Option(help="Source name of the followed files' and topics' events.")
    ] = "collect-local",
    metrics_address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT of /metrics. Default: CUSTODY_COLLECT_METRICS_ADDRESS."),
    ] = None,
) -> None:
    """Run the collector: OPA decision-log uploads (POST /v1/opa/logs), OTLP traces
    (POST /v1/traces), Vault's socket audit device (CUSTODY_COLLECT_VAULT_ADDRESS), Vault
    file audit logs and Kafka topics of OTLP traces."""
    from processors.collect.app import CollectError, FileToFollow, TopicToRead, run
    from processors.collect.records import Origin
    from processors.logs import log_json_to_stderr
    from processors.metrics_endpoint import MetricsError

    log_json_to_stderr()
    settings = settings_of(ctx)
    origin = Origin(tenant or settings.tenant, source)
    files = [FileToFollow(path, origin) for path in vault_file or []]
    topics = [TopicToRead(topic, origin) for topic in otlp_topic or []]
    try:
        run(settings, metrics_address or settings.collect_metrics_address, files, topics)
    except (CollectError, MetricsError) as exc:
        logging.getLogger("custody.collect").error("collect cannot start: %s", exc)
        raise typer.Exit(1) from None


def collect_token(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="The tenant every event of the source is for.")],
    source: Annotated[str, typer.Option(help="The source's name (its events' producer).")],
    observe_only: Annotated[
        bool,
        typer.Option(
            "--observe-only",
            help="The source reports no credentials or decisions (an agent runtime's "
            "spans): its accesses are recorded, never judged UNAUTHORIZED_ACCESS.",
        ),
    ] = False,
) -> None:
    """Make a collect token for a source: printed once, only its hash is kept."""
    from processors.collect.tokens import TokenError, issue_token, tokens_path

    path = tokens_path(settings_of(ctx))
    try:
        token = issue_token(path, tenant, source, observe_only=observe_only)
    except TokenError as exc:
        fail(f"[red]custody collect-token:[/] {escape(str(exc))}", 2)
    # The token alone on stdout, so a script can take it; the advice on stderr.
    print(token)
    Console(stderr=True).print(
        f"Collect token for tenant {escape(tenant)}, source {escape(source)}: shown once, "
        f"only its SHA-256 is kept in {escape(str(path))}."
    )


class LogKind(StrEnum):
    """The saved logs ``custody import`` reads."""

    OPA = "opa"
    VAULT = "vault"


def import_log(
    ctx: typer.Context,
    kind: Annotated[
        LogKind,
        typer.Argument(
            help="opa: decision logs (a JSON array, JSON lines, or the console logger's "
            "output); vault: an audit log (JSON lines, from the file device)."
        ),
    ],
    file: Annotated[str, typer.Argument(help="The log file, or - for stdin.")],
    tenant: TenantOption = None,
    source: SourceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Backfill a saved OPA decision log or Vault audit log; prints what was published,
    skipped and dead-lettered, by reason."""
    from rich.progress import Progress

    from processors.collect.importing import import_log as publish_log
    from processors.collect.mapping_file import MappingError, load_mapping
    from processors.collect.publisher import CollectPublisher, Unavailable
    from processors.collect.records import Origin

    settings = settings_of(ctx)
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        mapping = load_mapping(settings.collect_mapping)
    except (OSError, UnicodeDecodeError, MappingError) as exc:
        fail(f"[red]custody import {kind}:[/] {escape(str(exc))}", 2)
    origin = Origin(tenant or settings.tenant, source or f"import-{kind}")
    publisher = CollectPublisher(settings)
    try:
        with Progress(console=Console(stderr=True), transient=True, disable=as_json) as bar:
            task = bar.add_task(f"importing {kind}", total=None)
            tally = publish_log(
                kind.value, text, origin, mapping, publisher, lambda n: bar.advance(task, n)
            )
    except Unavailable as exc:
        fail(f"[red]custody import {kind}:[/] {escape(str(exc))}; importing again is safe")
    finally:
        publisher.close()
    if as_json:
        print(json.dumps(tally.as_json()))
        return
    table = Table(title=f"custody import {kind}: {tally.records} records")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("count", justify="right")
    table.add_row("published events", "", str(tally.published))
    for name, counts in (("skipped", tally.skipped), ("dead-lettered", tally.dead_lettered)):
        for reason, count in sorted(counts.items()):
            table.add_row(name, reason, str(count))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add the collect commands to ``app``."""
    app.command()(collect)
    app.command("collect-token")(collect_token)
    app.command("import")(import_log)
