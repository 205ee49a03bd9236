"""A batch is complete when its claim took every outbox change visible in its snapshot: recorded in the
ledger and in the manifest, with the snapshot's time and identity. Cut by the batch size or by a head
position, it is not."""

import datetime as dt

import orjson

from cdc.archive import folders as archive
from cdc.capture import install as capture
from cdc.export import batch as drain
from cdc.infra import pg


def _setup(pg_dsn: str) -> None:
    with pg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.commit()
        capture.install(conn, ["accounts"])
    with pg.connect(pg_dsn, autocommit=True) as conn:
        for key in (1, 2, 3):  # three statements: three outbox rows of one key each
            conn.execute("INSERT INTO accounts VALUES (%s, 100)", [key])


def _manifest(archive_dir, batch_id: int) -> dict:
    return orjson.loads((archive_dir / archive.batch_folder_name(batch_id) / archive.MANIFEST).read_bytes())


def test_batches_cut_at_the_batch_size_are_not_complete_and_the_last_one_is(pg_dsn, tmp_path):
    _setup(pg_dsn)
    archive_dir = tmp_path / "archive"
    before = dt.datetime.now(dt.UTC)
    with drain.drain_connection(pg_dsn) as conn:
        exported = [drain.export_batch(conn, archive_dir, batch_size=1) for _ in range(3)]
        assert drain.export_batch(conn, archive_dir, batch_size=1) is None
        ledger_rows = conn.execute(
            "SELECT batch_id, complete, snapshot_at, snapshot FROM cdc.batches ORDER BY batch_id"
        ).fetchall()
        conn.commit()
    ids = [batch.batch_id for batch in exported if batch is not None]
    assert len(ids) == 3
    manifests = [_manifest(archive_dir, batch_id) for batch_id in ids]
    assert [m["complete"] for m in manifests] == [False, False, True]
    assert [(row[0], row[1]) for row in ledger_rows] == list(zip(ids, [False, False, True], strict=True))
    times = [row[2] for row in ledger_rows]
    assert before - dt.timedelta(seconds=5) <= times[0] <= times[1] <= times[2]  # PostgreSQL's clock, in order
    for manifest, row in zip(manifests, ledger_rows, strict=True):
        assert dt.datetime.fromisoformat(manifest["snapshot_at"]) == row[2]
        assert manifest["snapshot"] == row[3] and row[3].count(":") == 2  # a pg_snapshot: xmin:xmax:xip


def test_a_batch_cut_at_a_head_position_is_not_complete(pg_dsn, tmp_path):
    _setup(pg_dsn)
    archive_dir = tmp_path / "archive"
    with drain.drain_connection(pg_dsn) as conn:
        first = conn.execute("SELECT min(pos) FROM cdc.outbox").fetchone()[0]
        conn.commit()
        cut = drain.export_batch(conn, archive_dir, batch_size=1000, up_to=first)
        rest = drain.export_batch(conn, archive_dir, batch_size=1000)
    assert cut is not None and rest is not None
    assert _manifest(archive_dir, cut.batch_id)["complete"] is False
    assert _manifest(archive_dir, rest.batch_id)["complete"] is True
