"""`cdc snapshot`: full migration of the captured tables (or some collections), resumable."""

from __future__ import annotations

import shlex

import click

from cdc.archive.prune import describe_ids
from cdc.commands.connect import applier as _applier
from cdc.commands.options import settings_options
from cdc.export import snapshot
from cdc.infra import shutdown
from cdc.infra.config import Settings
from cdc.infra.errors import Interrupted
from cdc.usecases.snapshot import Snapshot


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

    Before it takes a position, it moves positions past the versions MongoDB holds (after a re-install
    of capture, or a restored PostgreSQL). A snapshot whose writes were mostly refused as stale (MongoDB
    holding newer versions of the documents) says so and exits 1.

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
    # the first SIGINT/SIGTERM stops after the current page or batch, a second at once (nothing is lost either way)
    stop = shutdown.install_handlers(
        notice="cdc: stopping the snapshot after the current page or batch (again to stop at once)",
        again_stops_at_once=True,
    )
    run = Snapshot(
        settings.pg_dsn(),
        settings.archive_dir,
        None if export_only else _applier(settings),
        batch_size=batch_size,
        stop=stop,
        notice=lambda line: click.echo(line, err=True),
    )
    try:
        outcome = run.run(names, restart=restart)
    except (Interrupted, KeyboardInterrupt):
        _interrupted(run, collection_list)
        raise click.exceptions.Exit(shutdown.exit_code()) from None
    if outcome.exported is not None:
        exported = outcome.exported
        span = f" ({describe_ids(exported.batches)})" if exported.batches else ""
        click.echo(
            f"snapshot: {exported.changes} changes of {outcome.collections} collections exported in "
            f"{len(exported.batches)} batches{span} to {settings.archive_dir} ({exported.rejected} rejected), not"
            " applied: load them with `cdc archive mongoimport-commands`"
        )
    elif outcome.handed_over:
        click.echo(f"enqueued {outcome.keys} keys; a running worker holds the lock and will apply them")
    else:
        click.echo(
            f"snapshot: {outcome.keys} rows of {outcome.collections} collections enqueued, {outcome.applied} batches"
            f" applied ({outcome.stale} stale, {outcome.rejected} rejected); {outcome.swept} documents of rows"
            " gone removed"
        )


def _interrupted(run: Snapshot, collection_list: str | None) -> None:
    """Two lines: what an interrupted snapshot leaves, and what to run."""
    again = ["cdc", "snapshot"]
    if collection_list:
        again += ["--collections", shlex.quote(collection_list)]
    if run.mode == "export":
        again.append("--export-only")
    finish = "`cdc export --once` archives" if run.mode == "export" else "`cdc run --once` applies"
    click.echo(f"cdc: snapshot interrupted: {run.left()}", err=True)
    click.echo(
        f"cdc: run `{' '.join(again)}` to continue it (it skips what was enqueued), or {finish} what was enqueued",
        err=True,
    )
