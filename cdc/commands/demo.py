"""`cdc demo`: the main job on the embedded default."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import click
from pymongo.database import Database

from cdc import capture, drain, ledger, mongo, orininu, pg, snapshot
from cdc.cli import metrics_options, settings_options
from cdc.commands.schema import print_report
from cdc.commands.verify import verify_tables
from cdc.config import Settings
from cdc.errors import CheckFailed, ConfigError
from cdc.latency import LatencyProbe
from cdc.progress import track
from cdc.sink import Applier
from cdc.stack import Stack
from cdc.worker import Worker
from generator import load
from generator.sizes import NAMED_SCALES, Counts, counts_for, parse_scale
from generator.workload import Workload

if TYPE_CHECKING:
    from cdc.metrics import Metrics

log = logging.getLogger(__name__)
DEMO_METRICS_PORT = 9108  # as in ops/ (the Deployment, compose)


@click.command()
@settings_options
@click.option("--duration", type=click.FloatRange(min=1), default=30, show_default=True, help="Seconds of live sync.")
@click.option(
    "--scale",
    default="tiny",
    show_default=True,
    help=f"Size of the generated dataset ({', '.join(NAMED_SCALES)} or a multiplier).",
)
@click.option("--rate", type=click.FloatRange(min=1), default=100, show_default=True, help="Workload changes/s.")
@click.option("--keep", is_flag=True, help="Leave the embedded stack running afterwards.")
@metrics_options
def demo(
    settings: Settings,
    *,
    duration: float,
    scale: str,
    rate: float,
    keep: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run the main job on the embedded default, end to end.

    Stack up, schema, generate (replacing the Orininu tables' rows and the MongoDB database),
    install capture, snapshot, then a live workload with `run --listen` for --duration seconds
    (a live line of throughput, backlog and lag), verify, and a summary with the commit-to-MongoDB
    latency. Exits 0 only when verify is clean. Uses --pg/--mongo instead of the embedded stack
    when both are given; stops the embedded stack at the end unless --keep. Serves Prometheus
    metrics while it runs, on --metrics-port or else 9108 (a free port when 9108 is taken; the
    address is printed).
    """
    counts = counts_for(parse_scale(scale))
    embedded = not (settings.pg_dsn_given and settings.mongo_uri_given)
    stack = Stack(settings.data_dir)
    if embedded:
        stack.up()
        click.echo(f"[1/7] stack up under {settings.data_dir} ({stack.paths.env_file})")
    try:
        _demo(settings, counts, scale, duration, rate, serve=(metrics_host, metrics_port))
    finally:
        if embedded and not keep:
            stack.down()
            click.echo("stack stopped (pass --keep to leave it running)")


def _demo(
    settings: Settings, counts: Counts, scale: str, duration: float, rate: float, *, serve: tuple[str, int | None]
) -> None:
    from cdc.metrics import Metrics  # noqa: PLC0415

    dsn = settings.pg_dsn()
    client = mongo.client(settings.mongo_uri())
    client.drop_database(settings.mongo_db)
    database = client[settings.mongo_db]
    metrics = Metrics(dsn)
    try:
        host, port = serve
        try:  # the demo always serves its metrics: DEMO_METRICS_PORT, or any free port when that is taken
            bound = metrics.serve(host, port or DEMO_METRICS_PORT)
        except ConfigError:
            if port:
                raise
            bound = metrics.serve(host, 0)
        click.echo(f"metrics on http://{host}:{bound}/metrics (curl it while the demo runs)")
        rows = _prepare(dsn, counts, scale)
        _snapshot(dsn, database, settings, rows, metrics)
        probe = _live_sync(dsn, database, settings, duration, rate, metrics=metrics)
        _verify(dsn, database, probe)
    finally:
        client.close()
        metrics.close()


def _prepare(dsn: str, counts: Counts, scale: str) -> int:
    with pg.connect(dsn) as conn:
        orininu.apply(conn)
        capture.uninstall(conn)  # a fresh ledger for a fresh MongoDB database
        click.echo("[2/7] schema applied")
        loaded = load.load(conn, seed=1, counts=counts, replace=True)
        rows = sum(entry.rows for entry in loaded)
        click.echo(f"[3/7] generated {rows:,} rows ({scale})")
        capture.install(conn, list(orininu.TABLES))
        click.echo("[4/7] capture installed on " + ", ".join(orininu.TABLES))
    return rows


def _snapshot(dsn: str, database: Database[Any], settings: Settings, rows: int, metrics: Metrics | None) -> None:
    started = time.perf_counter()
    worker = Worker(dsn, Applier(database), settings.archive_dir, batch_size=snapshot.BATCH_SIZE, metrics=metrics)
    with pg.connect(dsn) as conn, track("enqueue", unit="keys", scale=True, logger=log) as progress:
        keys, worker.fast_insert = snapshot.prepare(conn, database, snapshot.captured(conn, None), progress)
    worker.acquire()
    try:
        with track("apply", total=keys, unit="keys", scale=True, logger=log) as progress:
            worker.progress = progress
            worker.cycle(up_to=drain.outbox_head(worker.conn))
    finally:
        worker.release()
    click.echo(f"[5/7] snapshot: {rows:,} rows in {time.perf_counter() - started:.1f}s")


def _live_sync(
    dsn: str, database: Database[Any], settings: Settings, duration: float, rate: float, *, metrics: Metrics | None
) -> LatencyProbe:
    stop = threading.Event()
    worker = Worker(dsn, Applier(database), settings.archive_dir, stop=stop, metrics=metrics)
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
            waiting = conn.execute(
                "SELECT (SELECT count(*) FROM cdc.outbox) + (SELECT count(*) FROM cdc.batches WHERE state <> 'applied')"
            ).fetchone()
            if waiting == (0,):
                break
            time.sleep(0.2)
    stop.set()
    worker_thread.join(timeout=60)
    click.echo(
        f"[6/7] live sync: {workload.stats.changes} changes at {workload.stats.rate:.0f}/s, "
        f"{worker.stats.batches} batches applied"
    )
    return probe


def _verify(dsn: str, database: Database[Any], probe: LatencyProbe) -> None:
    with drain.drain_connection(dsn) as conn:
        diffs = verify_tables(conn, database, snapshot.captured(conn, None))
        report = orininu.check(conn)
    print_report(report)
    compared = sum(diff.rows for diff in diffs)
    differences = sum(len(d.missing) + len(d.extra) + len(d.different) for d in diffs)
    p50, p99 = probe.percentile(0.5), probe.percentile(0.99)
    latency = (
        f"commit-to-MongoDB latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(probe.samples)} probes"
        if p50 is not None and p99 is not None
        else "no latency probe completed"
    )
    click.echo(f"[7/7] verify: {compared:,} rows compared, {differences} differences; {latency}")
    if differences or report.failed:
        raise CheckFailed("demo: verify found differences" if differences else "demo: the schema checks failed")
    click.echo("demo finished: MongoDB matches PostgreSQL row for row")
