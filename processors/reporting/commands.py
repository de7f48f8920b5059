"""``custody blast-radius``: what a workload identity or a token could reach and did
reach; :func:`register` adds it to the command."""

from __future__ import annotations

import json
import sys
from typing import Annotated

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

out = Console()
err = Console(stderr=True)


def blast_radius(
    ctx: typer.Context,
    identity: Annotated[
        str | None, typer.Option(help="A workload identity (actor_workload_id).")
    ] = None,
    token: Annotated[str | None, typer.Option(help="A token id.")] = None,
    tenant: TenantOption = None,
    from_: FromOption = None,
    to: ToOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
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
    """Add ``blast-radius`` to ``app``."""
    app.command("blast-radius")(blast_radius)
