"""`cdc status`: backlog, lag, last batches, worker, servers and captured tables."""

from __future__ import annotations

import click
import orjson

from cdc.commands.options import settings_options
from cdc.infra.config import Settings
from cdc.infra.errors import CheckFailed
from cdc.usecases import status as usecase


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


@click.command(name="status")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.option(
    "--max-backlog", type=int, help="Exit 1 when more changes than this are not yet in MongoDB (outbox and batches)."
)
@click.option(
    "--max-lag", type=float, help="Exit 1 when the oldest change not yet in MongoDB is older than this (seconds)."
)
def status_command(settings: Settings, as_json: bool, max_backlog: int | None, max_lag: float | None) -> None:
    """Backlog, lag, last batches, worker state, and captured tables whose triggers are missing.

    The backlog counts every change not yet in MongoDB: in the outbox, and in batches claimed and
    not yet applied (for `cdc export`: not yet archived). Times are ISO-8601, ages in seconds. Needs
    PostgreSQL only: a MongoDB that is down is reported, and so is a PostgreSQL that is down.

    Exit 1 also when the worker's last cycle failed (`cdc run` records each cycle's outcome: the
    error, and since when), or when a `cdc run` holds the worker lock and has completed no cycle
    for more than three --interval.
    """
    status = usecase.read(settings)
    report = status.fields
    if as_json:
        click.echo(orjson.dumps(report).decode())
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            click.echo(f"{key:<{width}} {_show(value)}")
    problems = status.problems(max_backlog=max_backlog, max_lag=max_lag)
    if problems:
        raise CheckFailed("; ".join(problems))
