"""Capture + export under concurrency: nothing lost, nothing stale, row by row."""

import os
import random
import threading
import time

import psycopg
import pytest

from cdc.capture import install as capture
from cdc.capture import tables
from cdc.export import batch as drain
from cdc.export.table_lines import table_lines
from cdc.infra import pg
from cdc.infra.errors import PostgresUnavailable
from tests.archive_model import ModelStore, documents_without_positions

STRESS_SECONDS = float(os.environ.get("CDC_TEST_STRESS_SECONDS", "6"))
KEYS = 60

STRESS_DDL = """
CREATE TABLE stress (id int PRIMARY KEY, v int NOT NULL, note text, amount numeric(12, 3));
CREATE TABLE "Pairs; DROP TABLE users" ("A" int, "b.key" text, n double precision, PRIMARY KEY ("A", "b.key"));
"""


def writer(dsn: str, seed: int, stop: threading.Event, errors: list) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn) as conn:
        while not stop.is_set():
            try:
                with conn.transaction():
                    for _ in range(rng.randint(1, 4)):
                        key = rng.randrange(KEYS)
                        roll = rng.random()
                        if roll < 0.35:
                            conn.execute(
                                "INSERT INTO stress VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
                                " SET v = excluded.v, note = excluded.note",
                                [key, rng.randrange(1000), rng.choice(["a", "é😀", None]), rng.randrange(10**6) / 1000],
                            )
                        elif roll < 0.55:
                            conn.execute("UPDATE stress SET v = v + 1 WHERE id = %s", [key])
                        elif roll < 0.7:
                            conn.execute("DELETE FROM stress WHERE id = %s", [key])
                        elif roll < 0.75:  # a key change: the old key must become a delete
                            conn.execute("UPDATE stress SET id = %s WHERE id = %s", [KEYS + rng.randrange(KEYS), key])
                        elif roll < 0.78:  # bulk
                            conn.execute("UPDATE stress SET v = v * 2 WHERE id %% 7 = %s", [rng.randrange(7)])
                        else:
                            conn.execute(
                                'INSERT INTO "Pairs; DROP TABLE users" VALUES (%s, %s, %s)'
                                ' ON CONFLICT ("A", "b.key") DO UPDATE SET n = excluded.n',
                                [key % 10, rng.choice(["x", "y/..", "Z"]), rng.random()],
                            )
                        if rng.random() < 0.1:  # hold the transaction open while others commit
                            time.sleep(rng.uniform(0.2, 1.0))
            except (psycopg.errors.DeadlockDetected, psycopg.errors.UniqueViolation):
                continue  # a deadlock, or a key change onto a key an earlier change already took
            except psycopg.Error as exc:
                errors.append(exc)
                return


def exporter(dsn: str, archive_dir, stop: threading.Event, errors: list, batches: list) -> None:
    conn = drain.drain_connection(dsn)
    idle_after_stop = 0
    try:
        while idle_after_stop < 2:
            try:
                batch = drain.export_batch(conn, archive_dir, batch_size=25)
            except PostgresUnavailable:  # e.g. a serialization failure: retried, as the worker does
                continue
            if batch is None:
                if stop.is_set():
                    idle_after_stop += 1
                time.sleep(0.05)
            else:
                batches.append(batch.batch_id)
    except Exception as exc:
        errors.append(exc)
    finally:
        conn.close()


@pytest.mark.parametrize(("exporters", "chunked_rows"), [(1, True), (2, True), (1, False)])
def test_concurrent_writers_and_exporters_lose_nothing(pg_dsn, tmp_path, monkeypatch, exporters, chunked_rows):
    if not chunked_rows:  # the path for libpq before 17: a server-side cursor
        monkeypatch.setattr(drain, "LIBPQ_CHUNKED_ROWS", 10**9)
    with pg.connect(pg_dsn) as conn:
        conn.execute(STRESS_DDL)
        conn.commit()
        capture.install(conn, ["stress", "Pairs; DROP TABLE users"])
    archive_dir = tmp_path / "archive"
    stop_writers, stop_exporters = threading.Event(), threading.Event()
    errors: list = []
    batches: list = []
    writers = [threading.Thread(target=writer, args=(pg_dsn, seed, stop_writers, errors)) for seed in range(4)]
    drains = [
        threading.Thread(target=exporter, args=(pg_dsn, archive_dir, stop_exporters, errors, batches))
        for _ in range(exporters)
    ]
    for thread in writers + drains:
        thread.start()
    time.sleep(STRESS_SECONDS)
    stop_writers.set()
    for thread in writers:
        thread.join()
    stop_exporters.set()
    for thread in drains:
        thread.join()
    assert errors == []
    assert len(batches) == len(set(batches)) > 3

    model = ModelStore()
    assert model.apply_archive(archive_dir) == len(batches)
    with drain.drain_connection(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc.outbox").fetchone() == (0,)
        for name, collection in (("stress", "stress"), ("Pairs; DROP TABLE users", "Pairs; DROP TABLE users")):
            table = tables.describe(conn, tables.resolve(conn, "public", name))
            expected = documents_without_positions(table_lines(conn, table, 0))
            assert expected, f"{name} ended empty: the test proves nothing"
            assert model.without_positions(collection) == expected
