"""`cdc export`: drain the outbox into archive batches only (the mongoimport path)."""

from __future__ import annotations

import click

from cdc import capture, drain, shutdown
from cdc.cli import settings_options
from cdc.config import Settings
from cdc.errors import ConfigError


@click.command()
@settings_options
@click.option("--once", is_flag=True, help="Drain up to the outbox position seen at start, then exit.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=50_000,
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

    Each batch is a folder under --archive (see the README for the two mongoimport commands that
    load one). Outbox rows are deleted in the transaction that commits the fsynced batch, so from
    then on the archive is the only copy of those changes: keep it on durable storage. The
    ledger (schema "cdc") keeps every batch's state and keys.
    """
    stop = shutdown.install_handlers()
    total_batches = total_changes = 0
    with drain.drain_connection(settings.pg_dsn()) as conn:
        if not capture.is_installed(conn):
            raise ConfigError("capture is not installed: run `cdc install` first")
        drain.recover_partials(conn, settings.archive_dir)
        while not stop.is_set():
            up_to = drain.outbox_head(conn) if once else None
            while not stop.is_set():
                batch = drain.export_batch(conn, settings.archive_dir, batch_size=batch_size, up_to=up_to)
                if batch is None:
                    break
                total_batches += 1
                total_changes += batch.keys
                click.echo(f"batch {batch.batch_id}: {batch.keys} changes, {batch.rejected} rejected -> {batch.path}")
            if once:
                break
            stop.wait(interval)
    click.echo(f"exported {total_changes} changes in {total_batches} batches to {settings.archive_dir}")
