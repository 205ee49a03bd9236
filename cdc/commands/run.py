"""`cdc run`: the sync worker."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cdc.capture import mapping
from cdc.capture.install import require_installed as _require_capture
from cdc.commands.connect import applier as _applier
from cdc.commands.options import metrics_options, settings_options
from cdc.export import batch as export
from cdc.infra import pg, shutdown
from cdc.infra.config import Settings
from cdc.infra.errors import CdcError, UsageError
from cdc.infra.redact import redact
from cdc.usecases import sync

log = logging.getLogger(__name__)


@click.command()
@settings_options
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=300, show_default=True, help="Seconds between polls."
)
@click.option("--listen", is_flag=True, help="Wake at once on NOTIFY (and still poll every --interval).")
@click.option(
    "--once",
    is_flag=True,
    help="Drain up to the outbox position seen at start, then exit (exit 1 when a signal stops it first).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=export.BATCH_SIZE, show_default=True, help="Keys per batch."
)
@metrics_options
@click.option(
    "--metrics-textfile",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CDC_METRICS_TEXTFILE",
    show_envvar=True,
    help="With --once: write the metrics to this file when the run succeeds, not when it is stopped"
    " (node-exporter's textfile collector).",
)
def run(
    settings: Settings,
    *,
    interval: float,
    listen: bool,
    once: bool,
    batch_size: int,
    metrics_port: int | None,
    metrics_host: str,
    metrics_textfile: Path | None,
) -> None:
    """The sync worker: claim → archive → apply → mark applied, every --interval seconds.

    Claimed keys stay in the ledger until MongoDB acknowledged the batch (w:majority), so a lost
    archive folder is re-exported from them. On start it first finishes batches claimed but not
    applied. A second worker waits for the first one's lock. Each time it takes the lock, it moves
    positions past the versions MongoDB holds (after a re-install, or a restored PostgreSQL).
    SIGTERM/SIGINT stop it cleanly after the current write; nothing is lost if it is killed instead.
    With --once, a stop by a signal before the run drained the outbox exits 1 (a cron `timeout` does
    not look like success).

    Output: one start line (targets, passwords masked; mode; interval; archive; installed mapping),
    then every 10 s while batches are applied one summary line (batches, changes, stale, rejected,
    backlog); each batch's own lines are debug lines (-v). At the end, the run's totals.
    """
    if metrics_textfile is not None and not once:
        raise UsageError("--metrics-textfile needs --once (a long-running worker serves --metrics-port instead)")
    stop = shutdown.install_handlers()
    dsn = settings.pg_dsn()
    mongo_uri = settings.mongo_uri()
    with pg.connect(dsn) as conn:
        _require_capture(conn)
        installed = mapping.installed_filename(conn)
    mode = "once" if once else "listen" if listen else "interval"
    # on stdout: stderr stays for logs, and for the one line of an error
    click.echo(
        f"run: PostgreSQL {redact(dsn) if dsn else '(libpq' + chr(39) + 's PG* variables)'},"
        f" MongoDB {redact(mongo_uri)} database {settings.mongo_db}; mode {mode},"
        f" interval {'-' if once else f'{interval:g}'}s; archive {settings.archive_dir}; mapping {installed or 'none'}"
    )
    stats = sync.run_worker(
        dsn,
        lambda on_retry: _applier(settings, on_retry=on_retry),
        settings.archive_dir,
        interval=interval,
        listen=listen,
        once=once,
        batch_size=batch_size,
        stop=stop,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        metrics_textfile=metrics_textfile,
    )
    click.echo(
        f"applied {stats.batches} batches, {stats.changes} changes ({stats.stale} stale, {stats.rejected} rejected)"
    )
    if once and stop.is_set():  # a cron `timeout` (SIGTERM) must not look like a finished run
        raise CdcError("stopped by a signal before the outbox was drained: the rest waits for the next run")
