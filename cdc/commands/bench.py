"""`cdc bench`: the performance suite."""

from __future__ import annotations

import click
import orjson

from cdc.commands.options import settings_options
from cdc.devtools.bench import suite
from cdc.infra.config import Settings
from cdc.sinks.mongo import client as mongo


@click.command()
@settings_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object with every figure and the raw times.")
@click.option("--scale", type=click.Choice(sorted(suite.SCALES)), default="small", show_default=True)
def bench(settings: Settings, as_json: bool, scale: str) -> None:
    """Measure the pipeline; every figure is a ratio against a baseline taken in the same run.

    Runs on a throw-away table (cdc_bench_songs) and throw-away MongoDB databases on the given
    servers (the embedded stack by default). Capture overhead (single-row and 200k-row statements),
    export rate, apply and snapshot against raw pymongo, NOTIFY latency, one incremental cycle
    against the seed's full CSV → JSON → reload, and export memory for a 10k vs a 1M backlog.
    Takes a few minutes at --scale small.
    """
    mongo.client(settings.mongo_uri()).close()  # fail early, with one line, if MongoDB is not there
    report = suite.run(
        settings.pg_dsn(), settings.mongo_uri(), scale, lambda step: click.echo(f"bench: {step}", err=True)
    )
    if as_json:
        click.echo(orjson.dumps(report, default=str).decode())
        return
    for key, (relation, target) in suite.TARGETS.items():
        value = report.get(key)
        if value is None:
            click.echo(f"{key:<32} {'n/a':>12}")
            continue
        met = value <= target if relation == "<=" else value >= target
        click.echo(f"{key:<32} {value:>12.3f}   target {relation} {target:g}   {'met' if met else 'NOT met'}")
    for key, meaning in suite.FLOORS.items():
        value = report.get(key)
        click.echo(f"{key:<32} {'n/a' if value is None else f'{value:.3f}':>12}   ({meaning})")
