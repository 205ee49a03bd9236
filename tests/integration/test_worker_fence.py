"""The worker lock as a fence: a worker whose lock connection died claims nothing, and batches
reach MongoDB in batch order even when another worker's claim is still pending."""

from __future__ import annotations

import psycopg
import pymongo
import pytest

from cdc.capture import install as capture
from cdc.export import batch as drain
from cdc.infra import pg
from cdc.infra.errors import LockLost
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks.mongo.applier import Applier

DDL = "CREATE TABLE fenced (id int PRIMARY KEY, v text NOT NULL)"


@pytest.fixture
def fenced(dbs):
    with pg.connect(dbs.pg_dsn) as conn:
        conn.execute(DDL)
        conn.commit()
        capture.install(conn, ["fenced"])
    return dbs


def _outbox_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM cdc.outbox").fetchone()
    assert row is not None
    return int(row[0])


def test_a_worker_whose_lock_connection_died_claims_nothing(fenced, tmp_path):
    dsn = fenced.pg_dsn
    client = pymongo.MongoClient(fenced.mongo_uri)
    worker = Worker(dsn, Applier(client[fenced.mongo_db]), tmp_path / "archive")
    assert worker.acquire(wait=False)
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("INSERT INTO fenced VALUES (1, 'a'), (2, 'b')")
            lock_pid = worker.lock.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", [lock_pid])
        # the claim itself is fenced, not only the check before it
        with drain.drain_connection(dsn) as conn, pytest.raises(LockLost):
            drain.export_batch(conn, tmp_path / "archive", batch_size=100, mode="run", fence=worker.assert_lock_holder)
        with pytest.raises(LockLost):
            worker.cycle()
        assert _outbox_rows(dsn) == 1  # the change is still waiting
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM cdc.batches").fetchone() == (0,)
        assert client[fenced.mongo_db]["fenced"].count_documents({}) == 0
    finally:
        worker.release()
        client.close()


def test_a_pending_batch_with_a_smaller_id_is_applied_first(fenced, tmp_path):
    dsn = fenced.pg_dsn
    archive_dir = tmp_path / "archive"
    client = pymongo.MongoClient(fenced.mongo_uri)
    worker = Worker(dsn, Applier(client[fenced.mongo_db]), archive_dir)
    assert worker.acquire(wait=False)
    try:
        with psycopg.connect(dsn, autocommit=True) as writer, drain.drain_connection(dsn) as conn:
            writer.execute("INSERT INTO fenced VALUES (1, 'alive')")
            first = drain.export_batch(conn, archive_dir, batch_size=100, mode="run")  # another worker's claim
            writer.execute("DELETE FROM fenced WHERE id = 1")
            second = drain.export_batch(conn, archive_dir, batch_size=100, mode="run")
        assert first is not None and second is not None and first.batch_id < second.batch_id
        assert worker.apply_in_order(second.batch_id) == 2
        assert ledger.pending_batches(worker.conn) == []
        # applied in order, the delete is the last word: nothing came back
        assert client[fenced.mongo_db]["fenced"].count_documents({}) == 0
    finally:
        worker.release()
        client.close()
