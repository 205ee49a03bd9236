"""`cdc bench`: every figure a ratio against a baseline measured in the same run.

The figures run on a throw-away songs-like table (``cdc_bench_songs``) and throw-away MongoDB
databases, so a bench never touches the Orininu data.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql
from pymongo import ReplaceOne

from cdc.archive import folders as archive
from cdc.capture import install as capture
from cdc.devtools.bench import capture_cost, documents
from cdc.devtools.bench.timing import Quiet, acquire, timed
from cdc.encode.extjson import parse_line
from cdc.export import batch as export
from cdc.export import snapshot
from cdc.export.table_lines import table_lines
from cdc.infra import pg
from cdc.infra.errors import CheckFailed
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import Applier
from cdc.usecases.sync import sync_once
from cdc.verify import run as verify

TABLE = capture_cost.TABLE


@dataclass(frozen=True)
class Scale:
    rows: int  # apply, snapshot and incremental
    export_rows: int
    capture_rows: int = 200_000  # the 200k-row statements
    capture_single: int = 5_000
    latency_seconds: float = 8.0
    rss_rows: tuple[int, int] = (10_000, 1_000_000)
    floor_rows: int = 5_000  # the server's own guarded vs unguarded ReplaceOne


SCALES = {"small": Scale(rows=20_000, export_rows=100_000), "medium": Scale(rows=200_000, export_rows=1_000_000)}
# for the test suite only: every figure, computed the same way, on a few hundred rows
SMOKE = Scale(
    rows=300, export_rows=2_000, capture_rows=2_000, capture_single=200, latency_seconds=2.0,
    rss_rows=(500, 2_000), floor_rows=200,
)  # fmt: skip
Report = dict[str, Any]
# context for the targets, printed beside them: what the server alone charges for the applier's guard
FLOORS = {"apply_guard_floor": "guarded ÷ unguarded ReplaceOne on this server: apply_vs_raw's floor"}
ROUNDS = 2  # the short figures take the best of alternating rounds, on both sides alike
# each figure: how it compares with its target
TARGETS = {
    "capture_overhead_single": ("<=", 1.2),
    "capture_overhead_bulk_insert": ("<=", 1.5),
    "capture_overhead_bulk_update": ("<=", 1.5),
    "export_changes_per_s": (">=", 100_000),
    "apply_vs_raw": ("<=", 1.1),
    "snapshot_vs_raw": ("<=", 1.1),
    "notify_latency_p50_ms": ("<=", 50),
    "notify_latency_p99_ms": ("<=", 250),
    "incremental_vs_full": ("<=", 0.05),
    "export_rss_ratio": ("<=", 1.5),
    # the document model: a full rebuild's source rows/s against export_changes_per_s
    "mapped_export_vs_export": (">=", 0.5),
    # verify of the same data against the snapshot that wrote it
    "verify_vs_snapshot": ("<=", 0.5),
    "mapped_incremental_vs_full": ("<=", 0.05),
}


def _fresh_table(conn: psycopg.Connection[Any], rows: int) -> None:
    if capture.is_installed(conn):  # forget the previous incarnation of the bench table
        capture.forget_tables(conn, [TABLE], "public")
    conn.execute(capture_cost.DDL.format(t=sql.Identifier(TABLE)))
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (song_id, album_id, title, duration_ms, price, popularity)"
            " SELECT g, g %% 5000, 'song ' || g, 120000 + g %% 90000, (g %% 300) / 100.0, random()"
            " FROM generate_series(1, %s) g"
        ).format(sql.Identifier(TABLE)),
        [rows],
    )
    conn.commit()
    capture.install(conn, [TABLE])
    ledger.discard_outbox(conn)
    conn.commit()


def _touch(conn: psycopg.Connection[Any], fraction: float) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET duration_ms = duration_ms + 1 WHERE random() < %s").format(sql.Identifier(TABLE)),
        [fraction],
    )
    conn.commit()


def _export_all(dsn: str, archive_dir: Path, batch_size: int = export.BATCH_SIZE) -> int:
    changes = 0
    with export.drain_connection(dsn) as conn:
        while (batch := export.export_batch(conn, archive_dir, batch_size=batch_size)) is not None:
            changes += batch.changes
    return changes


def export_speed(dsn: str, rows: int) -> Report:
    """Claim + typed read + Extended JSON + fsynced archive of ``rows`` changes, no MongoDB."""
    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-export-"))
    try:
        with pg.connect(dsn) as conn:
            _fresh_table(conn, rows)
            _touch(conn, 1.0)
        seconds = timed(lambda: _export_all(dsn, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"export_changes_per_s": rows / seconds, "export_seconds": seconds, "export_changes": rows}


def _final_documents(dsn: str) -> list[dict[str, Any]]:
    with export.drain_connection(dsn) as conn:
        table = snapshot.captured(conn, [TABLE])[0]
        documents = [parse_line(line) for line in table_lines(conn, table, 1)]
        conn.commit()
    return documents


def _snapshot(dsn: str, worker: Worker) -> None:
    """What `cdc snapshot` does for the bench table: enqueue every key, then one pass of the worker,
    into an empty collection (the insert path)."""
    with pg.connect(dsn) as conn:
        snapshot.enqueue_table(conn, snapshot.captured(conn, [TABLE])[0], Quiet())
    if not sync_once(worker, fast_insert={TABLE}):
        raise CheckFailed("bench: stopped while waiting for the worker lock")


def apply_and_snapshot(dsn: str, mongo_uri: str, rows: int) -> Report:
    client = mongo.client(mongo_uri)
    names = ["cdc_bench_apply", "cdc_bench_raw", "cdc_bench_snapshot", "cdc_bench_raw_insert"]
    for name in names:
        client.drop_database(name)
    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-apply-"))
    try:
        with pg.connect(dsn) as conn:
            _fresh_table(conn, rows)
        documents = _final_documents(dsn)

        # snapshot through the pipeline vs raw insert_many of the same documents, best of ROUNDS
        # alternating rounds (SecantusDB's pace drifts by ±10% over a minute)
        snapshot_times, raw_insert_times = [], []
        for round_ in range(ROUNDS):
            client.drop_database("cdc_bench_snapshot")
            client.drop_database("cdc_bench_raw_insert")
            snap_worker = Worker(
                dsn,
                Applier(client["cdc_bench_snapshot"]),
                folder / f"snap{round_}",
                batch_size=snapshot.BATCH_SIZE,
            )
            snapshot_times.append(timed(functools.partial(_snapshot, dsn, snap_worker)))
            raw_insert = Applier(client["cdc_bench_raw_insert"]).collection(TABLE)
            raw_insert_times.append(timed(functools.partial(raw_insert.insert_many, documents, ordered=False)))
        snapshot_s, raw_insert_s = min(snapshot_times), min(raw_insert_times)

        # `cdc verify` of the same data, against the snapshot's collection
        def verify_snapshot() -> None:
            with export.drain_connection(dsn) as conn:
                [diff] = verify.verify(conn, client["cdc_bench_snapshot"], snapshot.captured(conn, [TABLE]))
            if not diff.clean:
                raise CheckFailed(f"bench: verify of the snapshot found differences: {diff.summary()}")

        verify_s = min(timed(verify_snapshot) for _ in range(ROUNDS))

        # applying N changes from the archive vs raw unguarded bulk_write of the final documents
        with pg.connect(dsn) as conn:
            _touch(conn, 1.0)
        _export_all(dsn, folder / "apply")
        applier = Applier(client["cdc_bench_apply"])
        batches = [archive.read_batch(path) for path in archive.batch_paths(folder / "apply")]
        apply_s = timed(lambda: [applier.apply(batch) for batch in batches])
        final = _final_documents(dsn)
        raw = Applier(client["cdc_bench_raw"]).collection(TABLE)
        requests: list[Any] = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in final]
        raw_s = timed(lambda: raw.bulk_write(requests, ordered=False))
    finally:
        for name in names:
            client.drop_database(name)
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "apply_vs_raw": apply_s / raw_s,
        "apply_seconds": apply_s,
        "raw_bulk_write_seconds": raw_s,
        "snapshot_vs_raw": snapshot_s / raw_insert_s,
        "verify_vs_snapshot": verify_s / snapshot_s,
        "verify_seconds": verify_s,
        "snapshot_seconds": snapshot_s,
        "raw_insert_many_seconds": raw_insert_s,
        "apply_changes": rows,
    }


def guard_floor(mongo_uri: str, rows: int) -> Report:
    """What the server alone charges for the applier's guard: one raw ``bulk_write`` of guarded
    ``ReplaceOne({_id, "_cdc.pos": {$lt: pos}})`` ÷ one of unguarded ``ReplaceOne({_id})``, the same
    documents over existing ones, requests built beforehand. ``apply_vs_raw`` cannot go below it."""
    client = mongo.client(mongo_uri)
    client.drop_database("cdc_bench_guard")
    try:
        target = Applier(client["cdc_bench_guard"]).collection(TABLE)
        documents = [{"_id": n, "n": n, "title": f"song {n}", "_cdc": {"pos": n}} for n in range(rows)]
        target.insert_many(documents, ordered=False)
        timings: dict[str, list[float]] = {"guarded": [], "unguarded": []}
        pos = rows
        for _ in range(2):  # alternate, so drift hits both sides alike
            for label in ("unguarded", "guarded"):
                pos += rows
                requests: list[Any] = [
                    ReplaceOne(
                        {"_id": d["_id"], "_cdc.pos": {"$lt": pos}} if label == "guarded" else {"_id": d["_id"]},
                        {**d, "_cdc": {"pos": pos}},
                        upsert=True,
                    )
                    for d in documents
                ]
                started = time.perf_counter()
                target.bulk_write(requests, ordered=False)
                timings[label].append(time.perf_counter() - started)
    finally:
        client.drop_database("cdc_bench_guard")
        client.close()
    guarded, unguarded = min(timings["guarded"]), min(timings["unguarded"])
    return {
        "apply_guard_floor": guarded / unguarded,
        "guarded_replace_seconds": guarded,
        "unguarded_replace_seconds": unguarded,
        "guard_floor_rows": rows,
    }


def incremental_vs_full(dsn: str, mongo_uri: str, rows: int) -> Report:
    """One `run --once` cycle after 1% of rows changed ÷ the seed's CSV → JSON → drop + insert_many."""
    client = mongo.client(mongo_uri)
    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-incr-"))
    try:
        with pg.connect(dsn) as conn:
            _fresh_table(conn, rows)
        database = client["cdc_bench_incremental"]
        worker = Worker(dsn, Applier(database), folder)
        with pg.connect(dsn) as conn:
            snapshot.enqueue_table(conn, snapshot.captured(conn, [TABLE])[0], Quiet())
        acquire(worker)
        try:
            worker.cycle(fast_insert={TABLE})  # then the collection is full: changes are guarded upserts
            incremental_times = []
            for _ in range(ROUNDS + 1):  # a cycle is short: one round more
                with pg.connect(dsn) as conn:
                    _touch(conn, 0.01)
                incremental_times.append(timed(worker.cycle))
        finally:
            worker.release()
        incremental_s = min(incremental_times)

        def seed_method() -> None:
            buffer = io.StringIO()
            statement = sql.SQL("COPY {} TO STDOUT (FORMAT csv, HEADER)").format(sql.Identifier(TABLE))
            with pg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
                for chunk in copy:
                    buffer.write(bytes(chunk).decode())
            buffer.seek(0)
            lines = [orjson.dumps(row) for row in csv.DictReader(buffer)]
            target = client["cdc_bench_full"][TABLE]
            target.drop()
            target.insert_many([orjson.loads(line) for line in lines], ordered=False)

        full_s = min(timed(seed_method) for _ in range(ROUNDS))
    finally:
        client.drop_database("cdc_bench_incremental")
        client.drop_database("cdc_bench_full")
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {"incremental_vs_full": incremental_s / full_s, "incremental_seconds": incremental_s, "full_seconds": full_s}


def notify_latency(dsn: str, mongo_uri: str, seconds: float = 8.0) -> Report:
    """Commit → readable in MongoDB under `run --listen`, with 200 single-row transactions/s around it."""
    from cdc.demo.latency import LatencyProbe  # noqa: PLC0415

    client = mongo.client(mongo_uri)
    database = client["cdc_bench_latency"]
    client.drop_database("cdc_bench_latency")
    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-latency-"))
    stop = threading.Event()
    try:
        with pg.connect(dsn) as conn:
            _fresh_table(conn, 10_000)
        with pg.connect(dsn) as conn:  # the starting documents, so probes find their document
            snapshot.enqueue_table(conn, snapshot.captured(conn, [TABLE])[0], Quiet())
        worker = Worker(dsn, Applier(database), folder, stop=stop)
        if not sync_once(worker, fast_insert={TABLE}):  # the starting documents, before any probe is timed
            raise CheckFailed("bench: stopped while waiting for the worker lock")
        thread = threading.Thread(target=worker.run, kwargs={"interval": 5, "listen": True, "once": False}, daemon=True)
        thread.start()
        time.sleep(1)

        def writer() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                statement = sql.SQL("UPDATE {} SET popularity = random() WHERE song_id = %s").format(
                    sql.Identifier(TABLE)
                )
                index = 0
                while not stop.is_set():
                    index += 1
                    conn.execute(statement, [1 + index % 10_000])
                    time.sleep(1 / 200)

        background = threading.Thread(target=writer, daemon=True)
        background.start()
        probe = LatencyProbe(dsn, database, table=TABLE, key_column="song_id", value_column="duration_ms", every=0.05)
        probe.start()
        time.sleep(seconds)
        probe.close()
        stop.set()
        thread.join(timeout=60)
        background.join(timeout=10)
    finally:
        client.drop_database("cdc_bench_latency")
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    samples = sorted(probe.samples)
    if not samples:
        return {"notify_latency_p50_ms": None, "notify_latency_p99_ms": None, "latency_samples": 0}
    p99 = samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))]
    return {
        "notify_latency_p50_ms": statistics.median(samples) * 1000,
        "notify_latency_p99_ms": p99 * 1000,
        "latency_samples": len(samples),
    }


def export_rss(dsn: str, small: int, large: int) -> Report:
    """Peak RSS of a `cdc export --once` child draining a backlog of ``small`` vs ``large`` changes."""
    results = {}
    for label, rows in (("small", small), ("large", large)):
        folder = Path(tempfile.mkdtemp(prefix="cdc-bench-rss-"))
        try:
            with pg.connect(dsn) as conn:
                _fresh_table(conn, rows)
                _touch(conn, 1.0)  # one statement holding every key
            child = subprocess.run(
                [sys.executable, "-c", _RSS_CHILD, str(folder)],
                env={**os.environ, "CDC_PG_DSN": dsn},
                capture_output=True,
                text=True,
                check=True,
            )
            results[label] = float(child.stdout.strip())
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "export_rss_mb_10k": results["small"],
        "export_rss_mb_1m": results["large"],
        "export_rss_ratio": results["large"] / results["small"],
        "export_rss_rows": [small, large],
    }


_RSS_CHILD = """
import os, resource, sys
from pathlib import Path
from cdc.export import batch as export
with export.drain_connection(os.environ["CDC_PG_DSN"]) as conn:
    while export.export_batch(conn, Path(sys.argv[1]), batch_size=export.BATCH_SIZE) is not None:
        pass
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across exec)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(peak_kb / 1024)
"""


def run(dsn: str, mongo_uri: str, scale: str, progress: Callable[[str], None], sizes: Scale | None = None) -> Report:
    sizes = sizes or SCALES[scale]
    report: Report = {"scale": scale, "python": sys.version.split()[0], "maxrss_parent_mb": 0.0}
    progress("capture overhead")
    cost = capture_cost.measure(dsn, rows=sizes.capture_rows, single=sizes.capture_single, rounds=3)
    report.update(
        capture_overhead_single=cost.single_ratio,
        capture_overhead_bulk_insert=cost.bulk_insert_ratio,
        capture_overhead_bulk_update=cost.bulk_update_ratio,
        capture_raw_seconds=cost.__dict__,
    )
    progress("export speed")
    report.update(export_speed(dsn, sizes.export_rows))
    progress("apply and snapshot vs raw pymongo")
    report.update(apply_and_snapshot(dsn, mongo_uri, sizes.rows))
    progress("the server's cost of the guard")
    report.update(guard_floor(mongo_uri, sizes.floor_rows))
    progress("incremental vs the seed's full reload")
    report.update(incremental_vs_full(dsn, mongo_uri, sizes.rows))
    progress("NOTIFY latency")
    report.update(notify_latency(dsn, mongo_uri, sizes.latency_seconds))
    progress("export RSS")
    report.update(export_rss(dsn, *sizes.rss_rows))
    progress("document model")
    report.update(documents.measure(dsn, mongo_uri, playlists=max(20, sizes.rows // 10)))
    report["mapped_export_vs_export"] = report["mapped_export_rows_per_s"] / report["export_changes_per_s"]
    with pg.connect(dsn) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(TABLE)))
        capture.forget_tables(conn, [TABLE])
        conn.commit()
    report["maxrss_parent_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report
