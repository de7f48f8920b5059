"""What every ``custody`` subcommand shares: the settings the root command made from the
environment and its flags, and the options several subcommands take alike."""

from __future__ import annotations

from typing import Annotated

import typer

from producers.settings import Settings

# A subcommand's report period's or view's tenant: unset, the settings' (CUSTODY_TENANT).
TenantOption = Annotated[str | None, typer.Option(help="Tenant (default: CUSTODY_TENANT).")]


def settings_of(ctx: typer.Context) -> Settings:
    """The settings of this invocation (kept by the root command, whatever the nesting)."""
    settings: Settings = ctx.find_root().obj
    return settings
