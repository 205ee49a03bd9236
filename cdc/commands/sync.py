"""`cdc run`, `cdc snapshot`, `cdc replay`, `cdc verify` and `cdc status`: the applying half."""

from __future__ import annotations

import datetime as dt
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from cdc import archive, capture, hierarchy, ledger, mapping, mongo, pg, shutdown, snapshot
from cdc.commands.options import metrics_options, settings_options
from cdc.config import Settings
from cdc.errors import CdcError, CheckFailed, ConfigError, Interrupted, PostgresUnavailable, ServerDown, UsageError
from cdc.progress import track
from cdc.prune import ReplayGaps, check_replay, describe_ids
from cdc.redact import redact
from cdc.sink import APPLIED_COLLECTION, Applier
from cdc.worker import SUMMARY_EVERY_S, Worker

log = logging.getLogger(__name__)


def _applier(settings: Settings, *, on_retry: Callable[[], None] | None = None) -> Applier:
    return Applier(mongo.client(settings.mongo_uri())[settings.mongo_db], on_retry=on_retry)


def _require_capture(conn: Any) -> None:
    if not capture.is_installed(conn):
        raise ConfigError("capture is not installed: run `cdc install` first")


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
@click.option("--batch-size", type=click.IntRange(min=1), default=50_000, show_default=True, help="Keys per batch.")
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
    applied. A second worker waits for the first one's lock. SIGTERM/SIGINT stop it cleanly after
    the current write; nothing is lost if it is killed instead. With --once, a stop by a signal
    before the run drained the outbox exits 1 (a cron `timeout` does not look like success).

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
    metrics = None
    if metrics_port is not None or metrics_textfile is not None:
        from cdc.metrics import Metrics  # noqa: PLC0415 (prometheus_client only when asked for)

        metrics = Metrics(dsn)
    try:
        if metrics is not None and metrics_port is not None:
            metrics.serve(metrics_host, metrics_port)
        worker = Worker(
            dsn,
            _applier(settings, on_retry=metrics.retried if metrics is not None else None),
            settings.archive_dir,
            batch_size=batch_size,
            stop=stop,
            metrics=metrics,
            batch_log_level=logging.DEBUG,  # per-batch lines with -v; a summary every 10 s instead
            summary_every=SUMMARY_EVERY_S,
        )
        stats = worker.run(interval=interval, listen=listen, once=once)
        if metrics is not None and metrics_textfile is not None and not stop.is_set():
            # a run stopped early (SIGTERM, say while it waited for the lock) did not succeed:
            # the previous file stays, and its last-success time keeps ageing
            metrics.write_textfile(metrics_textfile)
    finally:
        if metrics is not None:
            metrics.close()
    click.echo(
        f"applied {stats.batches} batches, {stats.changes} changes ({stats.stale} stale, {stats.rejected} rejected)"
    )
    if once and stop.is_set():  # a cron `timeout` (SIGTERM) must not look like a finished run
        raise CdcError("stopped by a signal before the outbox was drained: the rest waits for the next run")


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
    applier = _applier(settings)
    done = applier.applied_batches()
    committed, unconsulted = _replay_ledger(settings, first, last)  # before the listing (see check_replay)
    paths = [
        path
        for path in archive.batch_paths(directory)
        if (first is None or int(path.name) >= first) and (last is None or int(path.name) <= last)
    ]
    gaps = check_replay(directory, [int(path.name) for path in paths], done, first, last, committed=committed)
    _warn_gaps(directory, gaps, unconsulted)
    batches = []
    with track("check", total=len(paths), unit="batches", logger=log) as progress:
        for path in paths:  # every checksum before the first write: a damaged batch stops it with nothing applied
            progress.note(path.name)
            batches.append(archive.read_batch(path))
            progress.update(1)
    applied = skipped = 0
    with track("replay", total=len(batches), unit="batches", logger=log) as progress:
        for batch in batches:
            progress.note(batch.path.name)
            if batch.batch_id in done and not force:
                skipped += 1
            else:
                applier.apply(batch)
                applier.mark_applied(batch.batch_id)
                applied += 1
            progress.update(1)
    click.echo(f"replayed {applied} batches, skipped {skipped} already applied")


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


def _seconds(value: Any) -> float | None:
    """An age in seconds (PostgreSQL's ``extract(epoch …)`` is a numeric), to the millisecond."""
    return round(float(value), 3) if value is not None else None


def _ledger_status(conn: Any) -> dict[str, Any]:
    """What PostgreSQL knows: the backlog, the ledger's last batches, the worker, the captured tables."""
    waiting = ledger.backlog(conn)
    row = ledger.last_batches(conn)
    tables_state = capture.captured_tables(conn)
    return {
        "backlog_changes": waiting.changes,
        "outbox_statements": waiting.outbox_statements,
        "outbox_changes": waiting.outbox_changes,
        "unapplied_batches": waiting.batches,
        "unapplied_batch_changes": waiting.batch_changes,
        "oldest_change_age_s": round(waiting.oldest_age_s, 3),
        "oldest_change_age_is_lower_bound": waiting.age_is_lower_bound,
        "last_exported_batch": row[0],
        "last_exported_mode": row[1],
        "last_exported_at": _iso(row[2]),
        "last_exported_age_s": _seconds(row[3]),
        "last_applied_batch": row[4],
        "last_applied_at": _iso(row[5]),
        "last_applied_age_s": _seconds(row[6]),
        "worker_running": bool(row[7]),
        "tables": len(tables_state),
        "tables_missing_triggers": [f"{t.schema}.{t.name}" for t in tables_state if not t.healthy],
        # partitions or children out of step with capture, dropped members: each with what to run
        "hierarchy_problems": hierarchy.problems(conn),
    }


def _source_status(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """PostgreSQL's state and what it knows; the second item says why it is down or not configured."""
    try:
        dsn = settings.pg_dsn()
    except ServerDown as exc:
        return {"postgresql": "down"}, str(exc)
    except UsageError:
        raise
    except ConfigError as exc:
        return {"postgresql": "not configured"}, str(exc)
    try:
        with pg.connect(dsn, connect_timeout=10) as conn:
            _require_capture(conn)
            return {"postgresql": "up", **_ledger_status(conn)}, None
    except PostgresUnavailable as exc:
        return {"postgresql": "down"}, str(exc)


def _target_status(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """MongoDB's state and its own record of applied batches (`cdc replay` writes only there); the
    second item says why a configured MongoDB is down."""
    try:
        uri = settings.mongo_uri()
    except ServerDown as exc:
        return {"mongodb": "down"}, str(exc)
    except ConfigError:
        return {"mongodb": "not configured"}, None
    try:
        client = mongo.client(uri, timeout_ms=3_000)
    except CdcError as exc:
        return {"mongodb": "down"}, str(exc)
    try:
        with mongo.translated("reading the target's record of applied batches"):
            last = client[settings.mongo_db][APPLIED_COLLECTION].find_one({}, sort=[("_id", -1)])
    except CdcError as exc:
        return {"mongodb": "down"}, str(exc)
    finally:
        client.close()
    applied_at = last.get("applied_at") if last else None
    return {
        "mongodb": "up",
        "target_last_applied_batch": int(last["_id"]) if last else None,
        "target_last_applied_at": _iso(applied_at),
        "target_last_applied_age_s": (
            _seconds((dt.datetime.now(dt.UTC) - applied_at).total_seconds())
            if isinstance(applied_at, dt.datetime)
            else None
        ),
    }, None


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
    """
    report, pg_down = _source_status(settings)
    target, target_down = _target_status(settings)
    report.update(target)
    report["checked_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    if as_json:
        click.echo(orjson.dumps(report).decode())
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            click.echo(f"{key:<{width}} {_show(value)}")
    problems = [down for down in (pg_down, target_down) if down]
    if report.get("tables_missing_triggers"):
        problems.append("captured tables lost their triggers: " + ", ".join(report["tables_missing_triggers"]))
    problems.extend(report.get("hierarchy_problems", []))
    if max_backlog is not None and report.get("backlog_changes", 0) > max_backlog:
        problems.append(f"backlog {report['backlog_changes']} > {max_backlog}")
    if max_lag is not None and report.get("oldest_change_age_s", 0) > max_lag:
        at_least = "at least " if report["oldest_change_age_is_lower_bound"] else ""
        problems.append(f"lag {at_least}{report['oldest_change_age_s']:.1f}s > {max_lag}s")
    if problems:
        raise CheckFailed("; ".join(problems))
