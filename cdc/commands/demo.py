"""`cdc demo`: the main job on the embedded default."""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pymongo.database import Database

from cdc.capture import install as capture
from cdc.capture import mapping
from cdc.capture.mapping import Collection
from cdc.commands.options import data_dir_option, metrics_options_defaulting_to
from cdc.demo import dql_mongo, orininu
from cdc.demo.latency import LatencyProbe
from cdc.devtools.stack import Stack
from cdc.export import batch as export
from cdc.infra import pg, sqlfiles
from cdc.infra.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_MONGO_DB,
    LIBPQ_VARIABLES,
    Settings,
    refuse_password_in_argument,
)
from cdc.infra.errors import CheckFailed, ConfigError, UsageError
from cdc.infra.redact import redact, register_secret, secrets_in
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import Applier
from cdc.usecases import repair
from cdc.usecases.snapshot import Snapshot
from generator import load
from generator.sizes import NAMED_SCALES, Counts, counts_for, parse_scale
from generator.workload import Workload

if TYPE_CHECKING:
    from cdc.runtime.metrics import Metrics

log = logging.getLogger(__name__)
DEMO_METRICS_PORT = 9108  # as in ops/ (the Deployment, compose)
DEMO_MAPPING = "orininu.mapping.toml"  # shipped in schema/ (package cdc.sql)


# The demo replaces data. It never takes its servers from the settings every other command reads:
# a shell set up for real work must not point the demo at real databases.
IGNORED_VARIABLES = ("CDC_PG_DSN", "CDC_MONGO_URI", "CDC_MONGO_DB", "CDC_ARCHIVE_DIR", *LIBPQ_VARIABLES)


@dataclass(frozen=True)
class Targets:
    """Where the demo writes: both servers embedded, or both named for the demo."""

    embedded: bool
    data_dir: Path
    pg_dsn: str | None  # None: the embedded stack's, known once it is up
    mongo_uri: str | None
    mongo_db: str
    archive_dir: Path

    def lines(self) -> list[str]:
        """The targets as printed before anything is replaced (passwords masked)."""
        where = f"embedded stack under {self.data_dir}" if self.embedded else "named for the demo"
        pg_text = redact(self.pg_dsn) if self.pg_dsn is not None else "(the embedded stack's; the demo starts it)"
        mongo_text = (
            redact(self.mongo_uri) if self.mongo_uri is not None else "(the embedded stack's; the demo starts it)"
        )
        return [
            f"demo targets ({where}); their data is replaced:",
            f"  PostgreSQL  {pg_text}  (the Orininu tables' rows, the cdc schema)",
            f"  MongoDB     {mongo_text}  (database {self.mongo_db!r} is dropped)",
            f"  archive     {self.archive_dir}",
        ]


def resolve_targets(
    data_dir: Path, pg_dsn: str | None, mongo_uri: str | None, mongo_db: str, archive_dir: Path | None
) -> Targets:
    """The demo's targets from its own options only; ``UsageError`` for a mixed setup."""
    if bool(pg_dsn) != bool(mongo_uri):
        pg_name, mongo_name = "PostgreSQL (--pg / CDC_DEMO_PG_DSN)", "MongoDB (--mongo / CDC_DEMO_MONGO_URI)"
        given, missing = (pg_name, mongo_name) if pg_dsn else (mongo_name, pg_name)
        raise UsageError(
            f"demo: an external {given} was given without an external {missing}: "
            "name both for the demo, or neither to use the embedded stack"
        )
    for value in (pg_dsn, mongo_uri):
        for secret in secrets_in(value or ""):
            register_secret(secret)
    if pg_dsn and mongo_uri:
        return Targets(False, data_dir, pg_dsn, mongo_uri, mongo_db, archive_dir or data_dir / "demo-archive")
    running = Stack(data_dir).running_env()
    return Targets(
        True,
        data_dir,
        running["CDC_PG_DSN"] if running else None,
        running["CDC_MONGO_URI"] if running else None,
        mongo_db,
        archive_dir or data_dir / "archive",
    )


@click.command()
@data_dir_option("Folder of the embedded stack the demo starts, and of its archive.")
@click.option(
    "--pg",
    "pg_dsn",
    envvar="CDC_DEMO_PG_DSN",
    show_envvar=True,
    metavar="DSN",
    help="An external PostgreSQL for the demo instead of the embedded one (with --mongo; no password "
    "here: use CDC_DEMO_PG_DSN or PGPASSFILE). Its Orininu tables' rows and its cdc schema are replaced.",
)
@click.option(
    "--mongo",
    "mongo_uri",
    envvar="CDC_DEMO_MONGO_URI",
    show_envvar=True,
    metavar="URI",
    help="An external MongoDB for the demo (with --pg; no password here: use CDC_DEMO_MONGO_URI). "
    "Its --mongo-db database is dropped.",
)
@click.option(
    "--mongo-db",
    envvar="CDC_DEMO_MONGO_DB",
    show_envvar=True,
    default=DEFAULT_MONGO_DB,
    show_default=True,
    help="MongoDB database the demo drops and rebuilds.",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Archive folder [default: <data-dir>/archive, or <data-dir>/demo-archive with --pg/--mongo].",
)
@click.option("--duration", type=click.FloatRange(min=1), default=30, show_default=True, help="Seconds of live sync.")
@click.option(
    "--scale",
    default="small",
    show_default=True,
    help=f"Size of the generated dataset ({', '.join(NAMED_SCALES)} or a multiplier).",
)
@click.option("--rate", type=click.FloatRange(min=1), default=100, show_default=True, help="Workload changes/s.")
@click.option("--keep", is_flag=True, help="Leave the embedded stack running afterwards.")
@click.option(
    "--mapping",
    "mapping_path",
    default=DEMO_MAPPING,
    show_default=True,
    metavar="FILE|none",
    help='The document model to sync: the shipped Orininu model (see docs/document-model.md, "The Orininu document'
    " model\"), a mapping file of your own, or 'none' for one collection per table.",
)
@click.option("--dry-run", is_flag=True, help="Print the demo's targets and exit, touching nothing.")
@metrics_options_defaulting_to(f"{DEMO_METRICS_PORT}, or a free port when {DEMO_METRICS_PORT} is taken")
def demo(
    *,
    data_dir: Path,
    pg_dsn: str | None,
    mongo_uri: str | None,
    mongo_db: str,
    archive_dir: Path | None,
    duration: float,
    scale: str,
    rate: float,
    keep: bool,
    mapping_path: str,
    dry_run: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run the main job on the embedded default, end to end.

    Stack up, schema, generate (replacing the Orininu tables' rows and the MongoDB database),
    install capture, snapshot, then a live workload with `run --listen` for --duration seconds
    (a live line of throughput, backlog and lag), verify, and a summary with the commit-to-MongoDB
    latency. Exits 0 only when verify is clean. Stops the embedded stack at the end unless --keep,
    and ends with a few commands to try next. Always serves Prometheus metrics while it runs: on
    --metrics-port when given (an error if it is taken), else on 9108, or on a free port when 9108
    is taken; the address is printed once. Each batch's own log lines are debug lines (-v).

    The demo replaces data, so it only writes where it is told to for the demo: the embedded stack
    under --data-dir, or external servers named by both --pg and --mongo (or CDC_DEMO_PG_DSN and
    CDC_DEMO_MONGO_URI). It ignores the settings of the other commands: CDC_PG_DSN, CDC_MONGO_URI,
    CDC_MONGO_DB, CDC_ARCHIVE_DIR and libpq's PG* variables. One external server without the other
    is refused (exit 2). The targets are printed, passwords masked, before any data is replaced.
    """
    ctx = click.get_current_context()
    if ctx.get_parameter_source("pg_dsn") == click.core.ParameterSource.COMMANDLINE:
        refuse_password_in_argument("--pg", pg_dsn, "CDC_DEMO_PG_DSN")
    if ctx.get_parameter_source("mongo_uri") == click.core.ParameterSource.COMMANDLINE:
        refuse_password_in_argument("--mongo", mongo_uri, "CDC_DEMO_MONGO_URI")
    targets = resolve_targets(data_dir, pg_dsn or None, mongo_uri or None, mongo_db, archive_dir)
    ignored = [name for name in IGNORED_VARIABLES if os.environ.get(name)]
    if ignored:
        click.echo(f"note: the demo ignores {', '.join(ignored)} (it uses --pg/--mongo or the embedded stack)")
    if dry_run:
        click.echo("\n".join(targets.lines()))
        return
    counts = counts_for(parse_scale(scale))
    mapping_file = _mapping_file(mapping_path)
    stack = Stack(data_dir)
    if targets.embedded:
        env = stack.up()
        click.echo(f"[1/7] stack up under {data_dir} ({stack.paths.env_file})")
        targets = replace(targets, pg_dsn=env["CDC_PG_DSN"], mongo_uri=env["CDC_MONGO_URI"])
    else:
        click.echo("[1/7] external servers named for the demo (no embedded stack)")
    click.echo("\n".join(targets.lines()))
    assert targets.pg_dsn is not None and targets.mongo_uri is not None
    settings = Settings(
        data_dir=data_dir,
        pg_dsn_given=targets.pg_dsn,
        mongo_uri_given=targets.mongo_uri,
        mongo_db=mongo_db,
        archive_dir_given=targets.archive_dir,
    )
    try:
        _demo(settings, counts, scale, duration, rate, serve=(metrics_host, metrics_port), mapping_file=mapping_file)
    finally:
        if targets.embedded and not keep:
            stack.down()
            click.echo("stack stopped (pass --keep to leave it running)")
    click.echo("\n".join(next_steps(targets, keep=keep)))


def next_steps(targets: Targets, *, keep: bool) -> list[str]:
    """What to try after a demo that went well: a few commands, pointed at the demo's servers."""
    folder = ""
    if targets.embedded and targets.data_dir != DEFAULT_DATA_DIR:
        folder = f" --data-dir {shlex.quote(str(targets.data_dir))}"
    options = folder + (f" --mongo-db {shlex.quote(targets.mongo_db)}" if targets.mongo_db != DEFAULT_MONGO_DB else "")
    commands = []
    if targets.embedded and not keep:
        commands.append((f"cdc demo --keep{options}", "the same, leaving the stack running for these:"))
    commands += [
        (f"cdc status{options}", "backlog, lag, the last batches exported and applied"),
        (f"cdc workload --rate 50 --duration 60{folder} &", "a user's changes for a minute, in the background"),
        (f"cdc run --listen{options}", "sync them as they commit (a summary every 10 s; Ctrl-C stops it)"),
        (f"cdc verify{options}", "compare PostgreSQL and MongoDB row by row"),
    ]
    if targets.embedded:
        commands.append((f"cdc stack down{folder}", "stop the embedded stack"))
    lines = ["what to try next:"]
    if not targets.embedded:
        lines.append(
            "  (first export CDC_PG_DSN and CDC_MONGO_URI for the demo's servers, and "
            f"CDC_ARCHIVE_DIR={shlex.quote(str(targets.archive_dir))})"
        )
    width = max(len(command) for command, _ in commands)
    return lines + [f"  {command:<{width}}  {what}" for command, what in commands]


def _mapping_file(path: str) -> tuple[str, str]:
    """(name, text) of the demo's document model: the shipped one, a file, or none."""
    if path == mapping.NO_MAPPING:
        return mapping.NO_MAPPING, ""
    if path == DEMO_MAPPING:
        return DEMO_MAPPING, sqlfiles.script(DEMO_MAPPING)
    return mapping.read_file(path)


def _demo(
    settings: Settings,
    counts: Counts,
    scale: str,
    duration: float,
    rate: float,
    *,
    serve: tuple[str, int | None],
    mapping_file: tuple[str, str],
) -> None:
    from cdc.runtime.metrics import Metrics  # noqa: PLC0415

    dsn = settings.pg_dsn()
    client = mongo.client(settings.mongo_uri())
    client.drop_database(settings.mongo_db)
    database = client[settings.mongo_db]
    metrics = Metrics(dsn)
    try:
        host, port = serve
        metrics_log = logging.getLogger("cdc.metrics")
        level = metrics_log.level
        metrics_log.setLevel(logging.WARNING)  # its "metrics on" log line: the address is printed once, here
        try:  # the demo always serves its metrics: DEMO_METRICS_PORT, or any free port when that is taken
            bound = metrics.serve(host, port or DEMO_METRICS_PORT)
        except ConfigError:
            if port:
                raise
            bound = metrics.serve(host, 0)
        finally:
            metrics_log.setLevel(level)
        click.echo(f"metrics on http://{host}:{bound}/metrics (curl it while the demo runs)")
        rows = _prepare(dsn, counts, scale, mapping_file)
        _snapshot(dsn, database, settings, rows, metrics)
        probe = _live_sync(dsn, database, settings, duration, rate, metrics=metrics)
        _verify(dsn, database, probe)
    finally:
        client.close()
        metrics.close()


def _prepare(dsn: str, counts: Counts, scale: str, mapping_file: tuple[str, str]) -> int:
    with pg.connect(dsn) as conn:
        orininu.apply(conn)
        capture.uninstall(conn)  # a fresh ledger for a fresh MongoDB database
        click.echo("[2/7] schema applied")
        loaded = load.load(conn, seed=1, counts=counts, replace=True)
        rows = sum(entry.rows for entry in loaded)
        click.echo(f"[3/7] generated {rows:,} rows ({scale})")
        capture.install(conn, list(orininu.TABLES), mapping_file=mapping_file)
        model = (
            "one collection per table" if mapping_file[0] == mapping.NO_MAPPING else f"documents of {mapping_file[0]}"
        )
        click.echo("[4/7] capture installed on " + ", ".join(orininu.TABLES) + f" ({model})")
    return rows


def _snapshot(dsn: str, database: Database[Any], settings: Settings, rows: int, metrics: Metrics | None) -> None:
    started = time.perf_counter()
    Snapshot(
        dsn,
        settings.archive_dir,
        Applier(database, on_retry=metrics.retried if metrics is not None else None),
        metrics=metrics,
        batch_log_level=logging.DEBUG,  # a progress line instead (each batch with -v)
        wait_for_lock=True,
    ).run()
    click.echo(f"[5/7] snapshot: {rows:,} rows in {time.perf_counter() - started:.1f}s")


def _live_sync(
    dsn: str, database: Database[Any], settings: Settings, duration: float, rate: float, *, metrics: Metrics | None
) -> LatencyProbe:
    stop = threading.Event()
    worker = Worker(
        dsn,
        Applier(database, on_retry=metrics.retried if metrics is not None else None),
        settings.archive_dir,
        stop=stop,
        metrics=metrics,
        batch_log_level=logging.DEBUG,  # the live line instead (each batch with -v)
    )
    worker_thread = threading.Thread(
        target=worker.run, kwargs={"interval": 5, "listen": True, "once": False}, daemon=True
    )
    workload = Workload(dsn, rate=rate, duration=duration, seed=1)
    workload_thread = threading.Thread(target=workload.run, daemon=True)
    probe = LatencyProbe(dsn, database)
    worker_thread.start()
    workload_thread.start()
    probe.start()
    with pg.connect(dsn, autocommit=True) as conn:
        while workload_thread.is_alive():
            workload_thread.join(timeout=2)
            backlog = ledger.backlog(conn)
            click.echo(
                f"  live: {workload.stats.changes:>6} changes made, {worker.stats.changes:>6} applied in "
                f"{worker.stats.batches} batches, backlog {backlog.changes}, lag {backlog.oldest_age_s:.1f}s"
            )
        probe.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let the worker catch up
            if ledger.unfinished(conn) == 0:
                break
            time.sleep(0.2)
    stop.set()
    worker_thread.join(timeout=60)
    click.echo(
        f"[6/7] live sync: {workload.stats.changes} changes made at {workload.stats.rate:.0f}/s; "
        f"{worker.stats.changes} applied ({worker.stats.stale} stale) in {worker.stats.batches} batches"
    )
    click.echo("\n".join(APPLIED_VS_MADE))
    return probe


# why the live lines' "applied" differs from "made" (more often above it than below, with a document model)
APPLIED_VS_MADE = (
    "      made: rows the workload changed; applied: MongoDB documents written, stale ones included",
    "      (a write skipped because MongoDB already held a newer version of that document). With a",
    "      document model one row change refreshes every document that shows the row (a song's title",
    "      is in its song, its album and every playlist holding it), and the latency probe's updates",
    "      (artist 1, twice a second) are applied but not made; several changes to one key within",
    "      one batch are applied once, which pulls the other way.",
)


def _verify(dsn: str, database: Database[Any], probe: LatencyProbe) -> None:
    with export.drain_connection(dsn) as conn:
        chosen = repair.chosen(conn, None)
        diffs = repair.verify_tables(conn, database, chosen)
        report = orininu.check(conn)
        questions = (
            dql_mongo.document_questions(conn, database) if any(isinstance(item, Collection) for item in chosen) else []
        )
    for line in report.lines():
        click.echo(line)
    for question in questions:
        click.echo(f"on the documents: {question.name:<28} {'same answer as SQL' if question.equal else 'DIFFERS'}")
        if not question.equal:
            click.echo(f"    postgresql: {question.postgres}\n    mongodb:    {question.mongodb}")
    compared = sum(diff.rows for diff in diffs)
    differences = sum(len(d.missing) + len(d.extra) + len(d.different) for d in diffs)
    p50, p99 = probe.percentile(0.5), probe.percentile(0.99)
    latency = (
        f"commit-to-MongoDB latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(probe.samples)} probes"
        if p50 is not None and p99 is not None
        else "no latency probe completed"
    )
    click.echo(f"[7/7] verify: {compared:,} rows compared, {differences} differences; {latency}")
    if any(not question.equal for question in questions):
        raise CheckFailed("demo: a question answered on the documents differs from SQL")
    if differences or report.failed:
        raise CheckFailed("demo: verify found differences" if differences else "demo: the schema checks failed")
    click.echo("demo finished: MongoDB matches PostgreSQL row for row")
