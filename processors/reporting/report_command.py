"""``custody report`` (build the auditor's report) and ``custody report verify FILE``
(check that a report still holds against ClickHouse)."""

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
    TenantOption,
    ToOption,
    fail,
    settings_of,
    time_option,
)

report_app = typer.Typer(help="The auditor's evidence report over a period.")
out = Console()
err = Console(stderr=True)


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
