"""`cdc replay`: apply archive batches to MongoDB, in batch order."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cdc.archive.prune import ReplayGaps, describe_ids
from cdc.capture import install as capture
from cdc.commands.connect import applier as _applier
from cdc.commands.options import settings_options
from cdc.infra import pg
from cdc.infra.config import Settings
from cdc.infra.errors import CdcError, ConfigError
from cdc.ledger import queries as ledger
from cdc.usecases import replay as usecase

log = logging.getLogger(__name__)


def _replay_ledger(settings: Settings, first: int | None, last: int | None) -> tuple[set[int] | None, str]:
    """The ledger's committed batch ids of the range, or None and why the ledger could not be consulted."""
    try:
        dsn = settings.pg_dsn()
    except ConfigError as exc:
        return None, str(exc).partition(":")[0]  # "no PostgreSQL configured", or the stack's server is down
    try:
        with pg.connect(dsn, connect_timeout=10) as conn:
            if not capture.is_installed(conn):
                return None, "capture is not installed in its PostgreSQL database"
            return ledger.committed_batches(conn, first, last), ""
    except CdcError as exc:
        return None, str(exc)


def _warn_gaps(directory: Path, gaps: ReplayGaps, unconsulted: str) -> None:
    if gaps.burned:
        click.echo(
            f"cdc: warning: batch ids {describe_ids(gaps.burned)} are missing from {directory}: the ledger never "
            "committed them (burned by an interrupted export), so nothing is lost",
            err=True,
        )
    if gaps.unpublished:
        click.echo(
            f"cdc: warning: batches {describe_ids(gaps.unpublished)} are still being published in {directory} "
            "(a `.partial-` folder): the next replay applies them",
            err=True,
        )
    if gaps.held:
        click.echo(
            f"cdc: warning: batches {describe_ids(gaps.held)} are missing from {directory}; the target already "
            "records them as applied, but this archive can no longer rebuild another target",
            err=True,
        )
    if gaps.unknown:
        click.echo(
            f"cdc: warning: batch ids {describe_ids(gaps.unknown)} are missing from {directory} and the ledger "
            f"could not be consulted ({unconsulted}): harmless if an interrupted export burned them, but if a "
            "folder was lost the target misses its changes; give --pg to check",
            err=True,
        )


@click.command()
@settings_options
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--from", "first", type=int, help="First batch id to apply.")
@click.option("--to", "last", type=int, help="Last batch id to apply.")
@click.option("--force", is_flag=True, help="Apply batches the target already records as applied.")
def replay(settings: Settings, directory: Path, first: int | None, last: int | None, force: bool) -> None:
    """Apply archive batches from DIRECTORY to MongoDB, in batch order.

    Into an empty database it rebuilds the state exactly. Batches the target records as applied
    (collection _cdc_batches) are skipped unless --force; a forced replay that runs through to the
    latest batch converges to the same state. Stopping early with --to can bring back rows that a
    later batch deletes. Every batch of the range is checked before any is applied (its manifest,
    every file's sha256 and line count): an incomplete or damaged batch stops the replay with
    nothing applied. Batches removed by `cdc archive prune` that the target has not applied stop
    it before anything is applied too (rebuild with `cdc snapshot` instead). So does a missing
    batch folder that the ledger (PostgreSQL, when configured) records as exported and the target
    has not applied. Ids burned by an interrupted export, and gaps that cannot be checked without
    the ledger, are warnings.
    """
    sink = _applier(settings)
    committed, unconsulted = _replay_ledger(settings, first, last)  # before the listing (see check_replay)
    replayed = usecase.replay(
        sink,
        directory,
        first=first,
        last=last,
        force=force,
        committed=committed,
        on_gaps=lambda gaps: _warn_gaps(directory, gaps, unconsulted),
    )
    click.echo(f"replayed {replayed.applied} batches, skipped {replayed.skipped} already applied")
