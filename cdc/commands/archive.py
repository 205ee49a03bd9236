"""`cdc archive prune`: retention of the archive's batch folders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import click

from cdc import capture, mongo, pg, prune
from cdc.cli import settings_options
from cdc.config import Settings
from cdc.errors import ConfigError
from cdc.sink import APPLIED_COLLECTION


@click.group(name="archive")
def archive_group() -> None:
    """Manage the archive folder (see the README, "Archive")."""


def _target_applied(settings: Settings) -> prune.TargetApplied:
    """The target's record of applied batches; MongoDB is only asked when `cdc export` batches need it."""

    def lookup(ids: Sequence[int]) -> dict[int, dt.datetime]:
        wanted = set(ids)
        client = mongo.client(settings.mongo_uri())
        try:
            with mongo.translated("reading the target's record of applied batches"):
                records = client[settings.mongo_db][APPLIED_COLLECTION].find({}, {"applied_at": 1})
                return {
                    int(doc["_id"]): doc["applied_at"]
                    for doc in records
                    if isinstance(doc.get("_id"), int)
                    and int(doc["_id"]) in wanted
                    and isinstance(doc.get("applied_at"), dt.datetime)
                }
        finally:
            client.close()

    return lookup


@archive_group.command(name="prune")
@settings_options
@click.option(
    "--keep-days",
    type=click.FloatRange(min=0),
    required=True,
    help="Keep batches applied within this many days; remove older applied ones.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
def prune_command(settings: Settings, keep_days: float, dry_run: bool) -> None:
    """Remove batch folders applied to MongoDB more than --keep-days days ago.

    Applied means: the ledger marks the batch applied (`cdc run`, `cdc snapshot`), or, for batches
    of `cdc export`, the target's own record (collection _cdc_batches in --mongo-db, written by
    `cdc replay`) holds it. Age counts from that moment. Never removed: batches not applied,
    `.partial-*` folders, folders whose manifest does not match the ledger (another epoch). For a
    pruned `cdc export` batch the ledger's copy of its keys (cdc.batch_changes) goes too; its row
    in cdc.batches stays. Pruned ids are recorded in <archive>/pruned.json. A pruned batch cannot
    be replayed: rebuild a target with `cdc snapshot`, not `cdc replay` from the first batch.
    """
    with pg.connect(settings.pg_dsn()) as conn:
        if not capture.is_installed(conn):
            raise ConfigError("capture is not installed: there is no ledger to prune by")
        chosen = prune.plan(conn, settings.archive_dir, keep_days, _target_applied(settings))
        verb = "would remove" if dry_run else "removed"
        if not dry_run:
            prune.execute(conn, settings.archive_dir, chosen)
    for item in chosen.remove:
        where = str(item.path) if item.path is not None else "(folder already gone; ledger changes only)"
        applied = f"{item.applied_at:%Y-%m-%d %H:%M}"
        click.echo(f"{verb} batch {item.batch_id}: {item.size:,} bytes, applied {applied} {where}")
    kept = f"kept {len(chosen.kept_unapplied)} not applied, {len(chosen.kept_recent)} applied within {keep_days:g} days"
    if chosen.kept_unknown:
        kept += f", {len(chosen.kept_unknown)} not matching the ledger ({prune.describe_ids(chosen.kept_unknown)})"
    summary = f"{len(chosen.remove)} batches ({chosen.folders} folders, {chosen.bytes:,} bytes)"
    click.echo(f"{'dry run: would prune' if dry_run else 'pruned'} {summary}; {kept}")
