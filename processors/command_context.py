"""What every ``custody`` subcommand shares: the settings the root command made from the
environment and its flags, and the options several subcommands take alike."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from producers.settings import Settings

# A subcommand's report period's or view's tenant: unset, the settings' (CUSTODY_TENANT).
TenantOption = Annotated[str | None, typer.Option(help="Tenant (default: CUSTODY_TENANT).")]


# --json: the command's answer as one JSON object (a list: one per line), stable.
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object.")]
JsonLinesOption = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]

# A period's ends: an ISO-8601 time (UTC without an offset) or a duration back from now.
FromOption = Annotated[
    str | None,
    typer.Option("--from", help="Start: ISO-8601, or 90s / 15m / 2h / 7d back from now."),
]
ToOption = Annotated[str | None, typer.Option(help="End, excluded: ISO-8601 or 7d.")]


def time_option(option: str, text: str | None) -> datetime | None:
    """The time an option names (None when not given); exit 2, saying why, when it is
    not a time."""
    from processors.serving.alerts import parse_since

    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        Console(stderr=True).print(
            f"[red]invalid option:[/] {escape(str(exc).replace('--since', option))}"
        )
        raise typer.Exit(2) from None


def settings_of(ctx: typer.Context) -> Settings:
    """The settings of this invocation (kept by the root command, whatever the nesting)."""
    settings: Settings = ctx.find_root().obj
    return settings


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with exit status ``code``, saying ``message`` (rich markup) on
    stderr."""
    Console(stderr=True).print(message)
    raise typer.Exit(code)
