"""`cdc snapshot`: full migration of the captured tables (or some collections), resumable."""

from __future__ import annotations

import logging
import shlex
from typing import Any

import click

from cdc import ledger, pg, snapshot
from cdc.apply import Applier
from cdc.commands.connect import applier as _applier
from cdc.commands.connect import require_capture as _require_capture
from cdc.commands.options import settings_options
from cdc.config import Settings
from cdc.errors import CdcError, ConfigError, Interrupted
from cdc.progress import track
from cdc.prune import describe_ids
from cdc.worker import Worker

log = logging.getLogger(__name__)


@click.command(name="snapshot")
@settings_options
@click.option(
    "--collections",
    "--tables",
    "collection_list",
    metavar="A,B",
    help="Only these collections (a mapped collection, or a captured table's own) [default: all].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=snapshot.BATCH_SIZE,
    show_default=True,
    help="Keys per batch (the next batch is exported while one is applied).",
)
@click.option(
    "--export-only",
    is_flag=True,
    help="Into archive batches only, never connecting to MongoDB (the mongoimport path, like `cdc export`);"
    " load them with `cdc archive mongoimport-commands`.",
)
@click.option("--restart", is_flag=True, help="Start over instead of continuing an interrupted snapshot.")
def snapshot_command(
    settings: Settings, collection_list: str | None, batch_size: int, export_only: bool, restart: bool
) -> None:
    """Full migration of the captured tables (or some of them) to MongoDB, through the archive.

    Every key is enqueued into the outbox in keyset-paginated chunks, then drained and applied
    like any change, so it is consistent with a workload running meanwhile. A mapped collection
    (`cdc install --mapping`) is rebuilt by refreshing every row of its root table: each document
    is read whole. Empty table collections take the insert path. Creates non-unique indexes for
    the foreign-key columns (never unique ones: PostgreSQL enforces uniqueness, and a swap of
    unique values inside one batch would jam the applier). Needs the worker lock: stop `cdc run`
    first, or let it apply the enqueued keys.

    Interrupted (Ctrl-C, SIGTERM: it stops after the current page or batch; twice: at once), it says
    what is left and exits 130 (143). Running it again continues it: tables whose keys were all
    enqueued are skipped, the others continue after their last key (recorded in PostgreSQL, table
    cdc.snapshot_progress), and what was enqueued is drained. --restart starts over instead; so
    does a snapshot of the other kind (--export-only or not). Use --restart after emptying the
    target by hand: what the interrupted snapshot applied is not applied again.

    With --export-only nothing is applied: the batches go to the archive in `cdc export`'s mode,
    for `mongoimport` (see `cdc archive mongoimport-commands` and `cdc archive mark-loaded`). Pick it
    only where `cdc export` drains the outbox, not next to a `cdc run` worker (it refuses one that
    is running). No indexes are created.
    """
    names = [name.strip() for name in collection_list.split(",")] if collection_list else None
    mode = "export" if export_only else "apply"
    stop = snapshot.StopRequest().install()
    dsn = settings.pg_dsn()
    chosen: list[snapshot.Target] = []
    try:
        applier = None if export_only else _applier(settings)
        with pg.connect(dsn) as conn:
            _require_capture(conn)
            if export_only and snapshot.worker_running(conn):
                raise ConfigError(
                    "a `cdc run` worker is running: it drains this outbox into MongoDB, so run `cdc snapshot`"
                    " without --export-only"
                )
            chosen = snapshot.targets(conn, names)
            total, fast = _snapshot_enqueue(conn, applier, chosen, mode=mode, restart=restart, stop=stop)
        if applier is None:
            _snapshot_export(dsn, settings, chosen, batch_size, stop)
        else:
            _snapshot_apply(dsn, settings, applier, chosen, total=total, fast=fast, batch_size=batch_size, stop=stop)
    except (Interrupted, KeyboardInterrupt):
        _snapshot_interrupted(dsn, chosen, mode, collection_list)
        raise click.exceptions.Exit(stop.exit_code) from None


def _snapshot_enqueue(
    conn: Any,
    applier: Applier | None,
    chosen: list[snapshot.Target],
    *,
    mode: str,
    restart: bool,
    stop: snapshot.StopRequest,
) -> tuple[int, set[str]]:
    """Enqueue the snapshot's keys, continuing an interrupted snapshot of the same kind."""
    plan = None
    why_not = snapshot.can_record(conn)
    if why_not is not None:
        log.warning("this snapshot cannot resume if it is interrupted: %s", why_not)
    else:
        plan = snapshot.plan_resume(conn, chosen, mode, restart=restart)
        for line in plan.restarted:
            log.warning("%s", line)
        if plan.resuming:
            since = min(step.started_at for step in plan.resumed.values())
            finished = sum(1 for step in plan.resumed.values() if step.done)
            click.echo(
                f"continuing the snapshot interrupted since {since:%Y-%m-%d %H:%M:%S} ({finished} of "
                f"{len(plan.resumed)} tables already fully enqueued; --restart starts over)",
                err=True,
            )
    with track("enqueue", unit="keys", scale=True, logger=log) as progress:
        return snapshot.prepare_targets(
            conn, applier.database if applier else None, chosen, progress, plan=plan, stop=stop.event
        )


def _snapshot_stopped(stop: snapshot.StopRequest) -> None:
    if stop.event.is_set():
        raise Interrupted()


def _snapshot_export(
    dsn: str, settings: Settings, chosen: list[snapshot.Target], batch_size: int, stop: snapshot.StopRequest
) -> None:
    """--export-only: drain what was enqueued into archive batches (``export`` mode), no MongoDB."""
    with pg.connect(dsn) as conn:
        waiting = ledger.backlog(conn).outbox_changes
    with track("export", total=waiting, unit="keys", scale=True, logger=log) as progress:
        exported = snapshot.export_enqueued(
            dsn, settings.archive_dir, batch_size=batch_size, stop=stop.event, progress=progress
        )
    _snapshot_stopped(stop)
    with pg.connect(dsn) as conn:
        snapshot.forget(conn, chosen)
    span = f" ({describe_ids(exported.batches)})" if exported.batches else ""
    click.echo(
        f"snapshot: {exported.changes} changes of {len(chosen)} collections exported in "
        f"{len(exported.batches)} batches{span} to {settings.archive_dir} ({exported.rejected} rejected), not"
        " applied: load them with `cdc archive mongoimport-commands`"
    )


def _snapshot_apply(
    dsn: str,
    settings: Settings,
    applier: Applier,
    chosen: list[snapshot.Target],
    *,
    total: int,
    fast: set[str],
    batch_size: int,
    stop: snapshot.StopRequest,
) -> None:
    """Apply what was enqueued (and what an interrupted snapshot left) up to the outbox head now."""
    worker = Worker(dsn, applier, settings.archive_dir, batch_size=batch_size, stop=stop.event, fast_insert=fast)
    if not worker.acquire(wait=False):
        with pg.connect(dsn) as conn:
            snapshot.forget(conn, chosen)  # every key is enqueued: the running worker finishes it
        click.echo(f"enqueued {total} keys; a running worker holds the lock and will apply them")
        return
    try:
        with pg.connect(dsn) as conn:
            head = ledger.outbox_head(conn)
            waiting = ledger.backlog(conn).changes
        with track("apply", total=waiting, unit="keys", scale=True, logger=log) as progress:
            worker.progress = progress
            pending = ledger.pending_batches(worker.conn)
            worker.conn.commit()
            for batch_id in pending:  # what an interrupted snapshot left
                _snapshot_stopped(stop)
                worker.apply_batch(batch_id)
            worker.cycle(up_to=head)
    finally:
        worker.release()
    _snapshot_stopped(stop)
    with pg.connect(dsn) as conn:
        snapshot.forget(conn, chosen)
    click.echo(
        f"snapshot: {total} rows of {len(chosen)} collections enqueued, {worker.stats.batches} batches applied "
        f"({worker.stats.rejected} rejected)"
    )


def _snapshot_interrupted(dsn: str, chosen: list[snapshot.Target], mode: str, collection_list: str | None) -> None:
    """Two lines: what an interrupted snapshot leaves, and what to run."""
    try:
        with pg.connect(dsn, connect_timeout=10) as conn:
            left = snapshot.describe_left(conn, chosen, mode)
    except CdcError as exc:
        left = f"what is left could not be read ({exc})"
    again = ["cdc", "snapshot"]
    if collection_list:
        again += ["--collections", shlex.quote(collection_list)]
    if mode == "export":
        again.append("--export-only")
    finish = "`cdc export --once` archives" if mode == "export" else "`cdc run --once` applies"
    click.echo(f"cdc: snapshot interrupted: {left}", err=True)
    click.echo(
        f"cdc: run `{' '.join(again)}` to continue it (it skips what was enqueued), or {finish} what was enqueued",
        err=True,
    )
