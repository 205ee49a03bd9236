"""`cdc demo`: the main job on the embedded default."""

from __future__ import annotations

import click

from cdc import orininu, pg
from cdc.cli import settings_options
from cdc.commands.schema import print_report
from cdc.config import Settings
from cdc.errors import CheckFailed
from cdc.stack import Stack
from generator import load
from generator.sizes import NAMED_SCALES, counts_for, parse_scale
from generator.workload import Workload


@click.command()
@settings_options
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds of live workload.",
)
@click.option(
    "--scale",
    default="tiny",
    show_default=True,
    help=f"Size of the generated dataset ({', '.join(NAMED_SCALES)} or a multiplier).",
)
@click.option("--keep", is_flag=True, help="Leave the embedded stack running afterwards.")
def demo(settings: Settings, duration: float, scale: str, keep: bool) -> None:
    """Run the main job on the embedded default.

    Stack up, schema apply, generate (replacing the Orininu tables' rows), a live workload, and the
    schema checks. The pipeline stages join as they land. Uses --pg/--mongo instead of the
    embedded stack when both are given; stops the embedded stack at the end unless --keep.
    """
    counts = counts_for(parse_scale(scale))
    embedded = not (settings.pg_dsn_given and settings.mongo_uri_given)
    stack = Stack(settings.data_dir)
    if embedded:
        stack.up()
        click.echo(f"[1/5] stack up under {settings.data_dir} ({stack.paths.env_file})")
    try:
        dsn = settings.pg_dsn()
        with pg.connect(dsn) as conn:
            orininu.apply(conn)
            click.echo("[2/5] schema applied")
            loaded = load.load(conn, seed=1, counts=counts, replace=True)
            click.echo(f"[3/5] generated {sum(entry.rows for entry in loaded):,} rows ({scale})")
        stats = Workload(dsn, rate=50, duration=duration, seed=1).run()
        click.echo(f"[4/5] workload: {stats.changes} changes in {stats.seconds:.0f}s ({stats.rate:.0f}/s)")
        with pg.connect(dsn) as conn:
            report = orininu.check(conn)
        print_report(report)
        if report.failed:
            raise CheckFailed("demo: the schema checks failed")
        click.echo("[5/5] schema checks passed")
    finally:
        if embedded and not keep:
            stack.down()
            click.echo("stack stopped (pass --keep to leave it running)")
    click.echo("demo finished")
