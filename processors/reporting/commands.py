"""The reporting subcommands: ``custody report`` (build the auditor's report) and
``custody report verify FILE`` (check that a report still holds against ClickHouse), and
``custody blast-radius`` (what a workload identity or a token could reach and did reach);
:func:`register` adds them to the command."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from processors.command_context import (
    FromOption,
    JsonOption,
    TenantOption,
    ToOption,
    fail,
    settings_of,
    time_option,
)

out = Console()
err = Console(stderr=True)


report_app = typer.Typer(help="The auditor's evidence report over a period.")


class Format(StrEnum):
    HTML = "html"
    JSON = "json"
    PDF = "pdf"


@report_app.callback(invoke_without_command=True)
def report(
    ctx: typer.Context,
    tenant: TenantOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    format_: Annotated[Format, typer.Option("--format", help="html, json or pdf.")] = Format.HTML,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: stdout; pdf needs it).")
    ] = None,
) -> None:
    """Build the report of --from (default: 30 days before --to) to --to (default: now):
    controls, exceptions, identity inventory, break-glass register, delegation summary,
    framework mapping, sealed with SHA-256 digests."""
    if ctx.invoked_subcommand is not None:
        return
    from processors.reporting.build import ReportError, build_report
    from processors.reporting.render import RenderError, render

    settings = settings_of(ctx)
    end = time_option("--to", to) or datetime.now(UTC)
    start = time_option("--from", from_) or end - timedelta(days=30)
    if format_ is Format.PDF and out_file is None:
        raise typer.BadParameter("a PDF needs --out FILE", param_hint="--out")
    try:
        sealed = build_report(settings, tenant or settings.tenant, start, end)
        content = render(sealed, format_.value)
    except (ReportError, RenderError) as exc:
        fail(f"[red]custody report failed:[/] {escape(str(exc))}")
    if out_file is None:
        sys.stdout.buffer.write(content)
        return
    out_file.write_bytes(content)
    counts = sealed["counts"]
    err.print(
        f"{out_file}: {format_.value}, tenant {sealed['tenant']}, {counts['events']} events, "
        f"{counts['alerts']} alerts, sha256 {sealed['integrity']['report_sha256'][:16]}..."
    )


@report_app.command("verify")
def verify(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A report in JSON (or its HTML form).")],
) -> None:
    """Recompute a report's digests against ClickHouse: exit 0 if it still holds, 5 if
    not (saying what changed)."""
    from processors.reporting.build import ReportError, verify_report
    from processors.reporting.render import RenderError, embedded_report

    try:
        text = file.read_text(encoding="utf-8")
        stored: dict[str, Any] = (
            embedded_report(text) if text.lstrip().startswith("<") else json.loads(text)
        )
        problems = verify_report(settings_of(ctx), stored)
    except (OSError, ValueError, ReportError, RenderError) as exc:
        fail(f"[red]cannot verify {escape(str(file))}:[/] {escape(str(exc))}")
    if problems:
        for problem in problems:
            out.print(f"[red]does not hold[/] {escape(problem)}")
        raise typer.Exit(5)
    out.print(
        f"[green]holds[/]: tenant {stored['tenant']}, {stored['period']['from']} to "
        f"{stored['period']['to']}, sha256 {stored['integrity']['report_sha256']}"
    )


def blast_radius(
    ctx: typer.Context,
    identity: Annotated[
        str | None, typer.Option(help="A workload identity (actor_workload_id).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="A token id.")] = None,
    tenant: TenantOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything a workload identity or a token could reach (credentials and their
    scopes, tasks delegated on) and did reach (tools and resources accessed), the gap
    between them, the humans involved and the alerts on the way."""
    from processors.reporting.blast_radius import NotFound
    from processors.reporting.blast_radius import blast_radius as build
    from processors.reporting.blast_radius_view import blast_radius_tree
    from processors.serving.reader import QueryError, open_reader
    from processors.serving.readonly import ReadOnlyError
    from processors.storage.target import TargetError

    if (identity is None) == (token is None):
        fail("[red]name exactly one of --identity and --token[/]", 2)
    since, until = time_option("--from", from_), time_option("--to", to)
    settings = settings_of(ctx)
    try:
        with open_reader(settings) as reader:
            radius = build(reader, tenant or settings.tenant, identity, token, since, until)
    except NotFound as exc:
        fail(f"[red]not found:[/] {escape(str(exc))}", 4)
    except (QueryError, ReadOnlyError, TargetError) as exc:
        fail(f"[red]query failed:[/] {escape(str(exc))}")
    if as_json:
        sys.stdout.write(json.dumps(radius.as_json()) + "\n")
    else:
        out.print(blast_radius_tree(radius))


def register(app: typer.Typer) -> None:
    """Add ``report`` (with ``report verify``) and ``blast-radius`` to ``app``."""
    app.add_typer(report_app, name="report")
    app.command("blast-radius")(blast_radius)
