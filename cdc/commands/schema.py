"""`cdc schema apply|check`: the Orininu reference schema."""

from __future__ import annotations

import click

from cdc.commands.options import settings_options
from cdc.demo import orininu
from cdc.infra import pg
from cdc.infra.config import Settings
from cdc.infra.errors import CheckFailed


@click.group()
def schema() -> None:
    """Create the Orininu tables and validate their data."""


@schema.command()
@settings_options
def apply(settings: Settings) -> None:
    """Create the Orininu types, tables and indexes (schema/DDL.sql); idempotent."""
    with pg.connect(settings.pg_dsn()) as conn:
        orininu.apply(conn)
    click.echo("schema applied: " + ", ".join(orininu.TABLES))


@schema.command()
@settings_options
def check(settings: Settings) -> None:
    """Run the validation queries (schema/DQL.sql); exit 1 when a check finds orphans."""
    with pg.connect(settings.pg_dsn()) as conn:
        report = orininu.check(conn)
    for line in report.lines():
        click.echo(line)
    if report.failed:
        names = ", ".join(f"{result.name} ({result.problems})" for result in report.failed)
        raise CheckFailed(f"schema check failed: {names}")
