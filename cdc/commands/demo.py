"""`cdc demo`: the main job on the embedded default."""

from __future__ import annotations

import click

from cdc import orininu, pg
from cdc.cli import settings_options
from cdc.commands.schema import print_report
from cdc.config import Settings
from cdc.errors import CheckFailed
from cdc.stack import Stack


@click.command()
@settings_options
def demo(settings: Settings) -> None:
    """Run the main job on the embedded default: stack up, schema, validation.

    Starts the embedded stack under --data-dir unless --pg/--mongo point elsewhere; the servers
    keep running afterwards (`cdc stack down` stops them).
    """
    if not (settings.pg_dsn_given and settings.mongo_uri_given):
        Stack(settings.data_dir).up()
        click.echo(f"stack up under {settings.data_dir}")
    with pg.connect(settings.pg_dsn()) as conn:
        orininu.apply(conn)
        click.echo("schema applied")
        report = orininu.check(conn)
    print_report(report)
    if report.failed:
        raise CheckFailed("demo: the schema checks failed")
    click.echo("demo finished")
