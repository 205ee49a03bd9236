"""`cdc archive prune`, `mongoimport-commands` and `mark-loaded`: the archive folder, and loading it
with `mongoimport` (the mongoimport path)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import click

from cdc.archive import folders as archive
from cdc.archive import mongoimport, prune
from cdc.capture import install as capture
from cdc.commands.options import settings_options
from cdc.infra import pg
from cdc.infra.config import Settings
from cdc.infra.errors import CdcError, ConfigError, UsageError
from cdc.ledger import queries as ledger
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import APPLIED_COLLECTION

log = logging.getLogger(__name__)


@click.group(name="archive")
def archive_group() -> None:
    """Manage the archive folder (see docs/mongoimport.md, "The archive")."""


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

    Applied means: the ledger marks the batch applied (`cdc run`, `cdc snapshot`, or `cdc archive
    mark-loaded` for batches loaded with mongoimport), or, for batches of `cdc export`, the target's own
    record (collection _cdc_batches in --mongo-db, written by `cdc replay`) holds it. Age counts from
    that moment. Never removed: batches not applied, `.partial-*` folders, folders whose manifest does
    not match the ledger (another epoch). For a pruned `cdc export` batch the ledger's copy of its keys
    (cdc.batch_changes) goes too; its row in cdc.batches stays. Pruned ids are recorded in
    `<archive>/pruned.json`. A pruned batch cannot be replayed: rebuild a target with `cdc snapshot`, not
    `cdc replay` from the first batch.
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


def _unloaded(settings: Settings) -> set[int]:
    """Batches of `cdc export` (and `cdc snapshot --export-only`) the ledger has not marked loaded."""
    with pg.connect(settings.pg_dsn()) as conn:
        if not capture.is_installed(conn):
            raise ConfigError("capture is not installed: there is no ledger to ask which batches are loaded")
        return set(ledger.export_batches_not_loaded(conn))


@archive_group.command(name="mongoimport-commands")
@settings_options
@click.option("--from", "first", type=int, help="First batch id.")
@click.option("--to", "last", type=int, help="Last batch id.")
@click.option(
    "--unloaded",
    is_flag=True,
    help="Only batches of `cdc export` the ledger has not marked loaded (asks PostgreSQL).",
)
@click.option(
    "--uri-env",
    default="CDC_MONGO_URI",
    show_default=True,
    metavar="VAR",
    help="The environment variable holding the MongoDB URI, referenced by the lines, never expanded here.",
)
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="mongoimport reads the URI from this YAML file (`uri: …`, mode 0600; mongoimport 100.3 or later)"
    " instead of --uri, which `ps` shows while it runs. mongosh still reads the --uri-env variable.",
)
@click.option(
    "--shell",
    type=click.Choice(mongoimport.SHELLS),
    default="sh",
    show_default=True,
    help="Quote the lines for a POSIX shell or for PowerShell.",
)
@click.option(
    "--mark-loaded",
    "mark_loaded",
    metavar="CDC",
    help="After each batch, a line running `CDC archive mark-loaded BATCH` (CDC: the cdc executable).",
)
def mongoimport_commands(
    settings: Settings,
    *,
    first: int | None,
    last: int | None,
    unloaded: bool,
    uri_env: str,
    config: Path | None,
    shell: str,
    mark_loaded: str | None,
) -> None:
    """Print the commands that load archive batches with mongoimport, in batch order.

    Per batch: for each truncate marker a `mongosh` line that deletes the collection's documents
    older than the marker (mongoimport cannot delete by a filter); then `mongoimport
    --mode=upsert --upsertFields=_id` for each upsert file and `--mode=delete` for each delete file
    (a batch's two files never share a key). Run them in order and stop at the first failure, e.g.
    `sh -e`; then record the batches with `cdc archive mark-loaded`. No password is printed: the
    lines reference the URI's environment variable (--uri-env) or a --config file. mongoimport does
    not guard on `_cdc.pos` the way the applier does, so never load a batch twice out of order. Each
    batch's checksums are verified first; a damaged or incomplete batch stops it, and nothing is
    printed. With --uri, a database in the URI's path must be --mongo-db (or absent).
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", uri_env):
        raise UsageError(f"--uri-env {uri_env!r} is not an environment variable name")
    wanted = _unloaded(settings) if unloaded else None
    paths = [
        path
        for path in archive.batch_paths(settings.archive_dir)
        if (first is None or int(path.name) >= first)
        and (last is None or int(path.name) <= last)
        and (wanted is None or int(path.name) in wanted)
    ]
    if wanted is not None:
        missing = sorted(wanted - {int(path.name) for path in paths} - set(range(0, (first or 0))))
        missing = [b for b in missing if last is None or b <= last]
        if missing:
            log.warning(
                "batches %s are exported but not in %s (pruned, moved, or still being published)",
                prune.describe_ids(missing),
                settings.archive_dir,
            )
    batches = [archive.read_batch(path) for path in paths]  # all verified before anything is printed
    lines = [f"# {len(batches)} batches from {settings.archive_dir}, in order; stop at the first failure"]
    cdc_words = [mark_loaded] if mark_loaded else None
    for batch in batches:
        lines += mongoimport.batch_lines(
            batch, db=settings.mongo_db, uri_env=uri_env, config=config, shell=shell, mark_loaded=cdc_words
        )
    click.echo("\n".join(lines))


def _batch_range(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"\s*(\d+)\s*(?:(?:\.\.|-)\s*(\d+)\s*)?", text)
    if not found:
        raise UsageError(f"{text!r} is not a batch id or a range FIRST..LAST")
    lo = int(found.group(1))
    hi = int(found.group(2) or lo)
    if hi < lo:
        raise UsageError(f"{text!r}: the range ends before it starts")
    return lo, hi


@archive_group.command(name="mark-loaded")
@settings_options
@click.argument("batches", metavar="B[..B2]")
@click.option(
    "--no-target", is_flag=True, help="Do not write the target's record (_cdc_batches), even when MongoDB is set."
)
def mark_loaded_command(settings: Settings, batches: str, no_target: bool) -> None:
    """Record batches of `cdc export` as loaded outside the pipeline (with mongoimport).

    The ledger marks them applied (so `cdc archive prune` removes them after --keep-days) and, when
    MongoDB is configured, the target records them in its `_cdc_batches` collection (so `cdc replay`
    skips them, as it skips batches it applied). In a range, ids the ledger never committed
    (burned by an interrupted export) are skipped. Refused: a batch not yet exported, and a batch
    of `cdc run` or `cdc snapshot` that is not applied (the worker applies those). Marking a batch
    while an earlier one is not marked is allowed, with a warning: batches must be loaded in order.
    """
    lo, hi = _batch_range(batches)
    with pg.connect(settings.pg_dsn()) as conn:
        if not capture.is_installed(conn):
            raise ConfigError("capture is not installed: there is no ledger to record loaded batches in")
        rows = ledger.batches_between(conn, lo, hi)
        earlier = ledger.export_batches_not_loaded(conn, before=lo)
        conn.commit()
        if lo == hi and not rows:
            raise ConfigError(f"batch {lo} is not in the ledger")
        for batch_id, mode, state in rows:
            if state == "claimed":
                raise ConfigError(f"batch {batch_id} is not exported yet (its export is running, or was interrupted)")
            if mode != "export" and state != "applied":
                raise ConfigError(f"batch {batch_id} belongs to `cdc {mode}`, whose worker applies it; not marked")
        marked = [int(batch_id) for batch_id, mode, state in rows if mode == "export" and state == "exported"]
        ledger.mark_loaded(conn, marked)
        conn.commit()
    if earlier:
        log.warning(
            "batches %s come before and are not marked loaded: load batches in order",
            prune.describe_ids(earlier),
        )
    recorded = "" if no_target else _record_on_target(settings, [row[0] for row in rows])
    already = len(rows) - len(marked)
    click.echo(
        f"marked {len(marked)} batches loaded"
        + (f" ({prune.describe_ids(marked)})" if marked else "")
        + (f", {already} already applied" if already else "")
        + recorded
    )


def _record_on_target(settings: Settings, ids: Sequence[int]) -> str:
    """Write ``ids`` into the target's ``_cdc_batches``; what was done, for the summary line."""
    if not ids:
        return ""
    try:
        uri = settings.mongo_uri()
    except ConfigError:
        return "; no MongoDB configured, so the target's own record (_cdc_batches) was not written"
    try:
        client = mongo.client(uri, timeout_ms=10_000)
        try:
            with mongo.translated("recording loaded batches in the target's _cdc_batches"):
                now = dt.datetime.now(dt.UTC)
                records = client[settings.mongo_db][APPLIED_COLLECTION]
                for batch_id in ids:
                    records.update_one(
                        {"_id": batch_id},
                        {"$setOnInsert": {"applied_at": now, "loaded_by": "mongoimport"}},
                        upsert=True,
                    )
        finally:
            client.close()
    except CdcError as exc:
        log.warning("the target's record of applied batches was not written: %s", exc)
        return "; the target's own record (_cdc_batches) was not written (see the warning)"
    return f"; the target records them in {settings.mongo_db}._cdc_batches"
