"""`cdc export`: drain the outbox into archive batches only (the mongoimport path)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import click
import psycopg

from cdc.capture import install as capture
from cdc.commands.options import settings_options
from cdc.export import batch as exporter  # the stage (this module's command is named export)
from cdc.infra import shutdown
from cdc.infra.config import Settings
from cdc.infra.errors import CdcError
from cdc.ledger import queries as ledger
from cdc.runtime import rebuild
from cdc.runtime.backoff import TRANSIENT, Backoff
from cdc.sinks import epoch

log = logging.getLogger(__name__)


@click.command()
@settings_options
@click.option(
    "--once",
    is_flag=True,
    help="Drain up to the outbox position seen at start, then exit (exit 1 when a signal stops it first).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=exporter.BATCH_SIZE,
    show_default=True,
    help="Keys per batch (one statement may hold many keys; a batch takes at least one statement).",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=300,
    show_default=True,
    help="Seconds between polls when not --once.",
)
def export(settings: Settings, once: bool, batch_size: int, interval: float) -> None:
    """Drain the outbox into archive batches only, with no MongoDB: the mongoimport path.

    Each batch is a folder under --archive (see docs/mongoimport.md for the two mongoimport commands that
    load one). Outbox rows are deleted in the transaction that commits the fsynced batch, so from
    then on the archive is the only copy of those changes: keep it on durable storage. The
    ledger (schema "cdc") keeps every batch's state and keys.

    Without --once, a fault that may pass (PostgreSQL unreachable, an archive folder that cannot be
    written) is retried with a pause growing from 1 s to 30 s, logged once and then every 5 minutes
    while it lasts. With --once it exits 1. Either way a batch id is taken only when its batch can
    be written. With --once, a stop by a signal (SIGTERM, SIGINT) before the outbox was drained
    exits 1 too, after the batches already written, so a cron `timeout` does not look like success.
    """
    stop = shutdown.install_handlers()
    dsn = settings.pg_dsn()
    totals = [0, 0]  # batches, changes
    session = exporter.DrainSession(dsn)  # made again after a fault broke it
    shapes = rebuild.Watch(dsn)  # migrations followed, and their rebuilds enqueued, as the worker does
    try:
        conn = session.get()
        capture.require_installed(conn)
        exporter.recover_partials(conn, settings.archive_dir)
        epoch.align(dsn, None, settings.archive_dir)  # a re-install never reuses the archive's batch ids
        if once:
            shapes.check(pages=None)
            head = ledger.outbox_head(conn)
            conn.commit()
            _drain(conn, settings, batch_size=batch_size, up_to=head, stop=stop, totals=totals)
        else:
            backoff = Backoff(stop, "export", logger=log)
            while not stop.is_set():
                try:
                    if backoff.failing:  # a fresh connection, and any batch a failed publish left behind
                        session.close()
                        exporter.recover_partials(session.get(), settings.archive_dir)
                    shapes.check()
                    _drain(session.get(), settings, batch_size=batch_size, up_to=None, stop=stop, totals=totals)
                except TRANSIENT as exc:  # (no MongoDB and no worker lock here: PostgreSQL or the archive)
                    backoff.failed(exc)
                    backoff.wait()
                    continue
                backoff.succeeded()
                stop.wait(interval)
    finally:
        shapes.close()
        session.close()
    click.echo(f"exported {totals[1]} changes in {totals[0]} batches to {settings.archive_dir}")
    if once and stop.is_set():
        raise CdcError("stopped by a signal before the outbox was drained: the rest waits for the next run")


def _drain(
    conn: psycopg.Connection[Any],
    settings: Settings,
    *,
    batch_size: int,
    up_to: int | None,
    stop: threading.Event,
    totals: list[int],
) -> None:
    """Export batches until the outbox is drained (up to ``up_to``) or a stop is requested."""
    while not stop.is_set():
        batch = exporter.export_batch(conn, settings.archive_dir, batch_size=batch_size, up_to=up_to)
        if batch is None:
            return
        totals[0] += 1
        totals[1] += batch.changes
        click.echo(f"batch {batch.batch_id}: {batch.changes} changes, {batch.rejected} rejected -> {batch.path}")
