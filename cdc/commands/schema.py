"""`cdc schema apply|check`: the Orininu reference schema."""

from __future__ import annotations

import click

from cdc import pg
from cdc.commands.options import settings_options
from cdc.config import Settings
from cdc.demo import orininu
from cdc.errors import CheckFailed


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


def print_report(report: orininu.CheckReport) -> None:
    for result in report.results:
        if result.kind == "check":
            verdict = "ok" if not result.problems else f"FAILED ({result.problems} rows)"
            click.echo(f"check  {result.name:<32} {verdict}")
        else:
            click.echo(f"report {result.name}: " + ", ".join(result.columns))
            for row in result.rows:
                click.echo("         " + " | ".join(str(value) for value in row))


@schema.command()
@settings_options
def check(settings: Settings) -> None:
    """Run the validation queries (schema/DQL.sql); exit 1 when a check finds orphans."""
    with pg.connect(settings.pg_dsn()) as conn:
        report = orininu.check(conn)
    print_report(report)
    if report.failed:
        names = ", ".join(f"{result.name} ({result.problems})" for result in report.failed)
        raise CheckFailed(f"schema check failed: {names}")
