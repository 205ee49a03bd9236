"""`cdc bench` figures of the document model, on throw-away tables (``cdc_bench_doc_*``).

- ``mapped_export_rows_per_s``: source rows read into mapped documents per second during a full
  rebuild (every root refreshed, exported to a throw-away archive, no MongoDB);
- ``mapped_incremental_vs_full``: one worker cycle after 1% of the playlist entries changed ÷ a
  full rebuild of the mapped collection into MongoDB;
- ``fanout_docs_per_s``: documents refreshed per second after renaming one artist whose songs sit
  in every playlist.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from cdc.capture import install as capture
from cdc.capture import mapping
from cdc.devtools.bench.timing import Quiet, acquire, timed
from cdc.export import batch as export
from cdc.export import snapshot
from cdc.infra import pg
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import Applier

TABLES = ("cdc_bench_doc_entries", "cdc_bench_doc_playlists", "cdc_bench_doc_songs", "cdc_bench_doc_artists")
DROP = "DROP TABLE IF EXISTS " + ", ".join(TABLES)
DDL = (
    DROP
    + """;
CREATE TABLE cdc_bench_doc_artists (artist_id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE cdc_bench_doc_songs (
    song_id int PRIMARY KEY, artist_id int NOT NULL REFERENCES cdc_bench_doc_artists, title text NOT NULL,
    duration_ms int NOT NULL);
CREATE TABLE cdc_bench_doc_playlists (playlist_id int PRIMARY KEY, name text NOT NULL, created_at timestamptz);
CREATE TABLE cdc_bench_doc_entries (
    playlist_id int NOT NULL REFERENCES cdc_bench_doc_playlists, position int NOT NULL,
    song_id int NOT NULL REFERENCES cdc_bench_doc_songs, added_at timestamptz NOT NULL,
    PRIMARY KEY (playlist_id, position));
CREATE INDEX ON cdc_bench_doc_entries (song_id);
CREATE INDEX ON cdc_bench_doc_songs (artist_id);
"""
)

MAPPING = """
[collections.cdc_bench_doc_playlists]
table = "cdc_bench_doc_playlists"

[collections.cdc_bench_doc_playlists.embed.songs]
table = "cdc_bench_doc_entries"
on = { playlist_id = "playlist_id" }
many = true
order_by = ["position"]
fields = ["position", "added_at"]

[collections.cdc_bench_doc_playlists.embed.songs.embed.song]
table = "cdc_bench_doc_songs"
on = { song_id = "song_id" }
many = false
fields = ["song_id", "title", "duration_ms"]

[collections.cdc_bench_doc_playlists.embed.songs.embed.song.embed.artist]
table = "cdc_bench_doc_artists"
on = { artist_id = "artist_id" }
many = false
"""
COLLECTION = "cdc_bench_doc_playlists"
PER_PLAYLIST = 10


def _load(conn: psycopg.Connection[Any], playlists: int) -> int:
    """The tables, filled: every playlist holds a song of artist 1 (the fan-out); returns source rows
    per full rebuild (playlists, entries, and each entry's song and artist)."""
    songs = max(200, playlists // 2)  # song 200 is by artist 1
    conn.execute(DDL)
    conn.execute("INSERT INTO cdc_bench_doc_artists SELECT g, 'artist ' || g FROM generate_series(1, 200) g")
    conn.execute(
        "INSERT INTO cdc_bench_doc_songs"
        " SELECT g, 1 + g %% 200, 'song ' || g, 120000 + g FROM generate_series(1, %s) g",
        [songs],
    )
    conn.execute(
        "INSERT INTO cdc_bench_doc_playlists SELECT g, 'playlist ' || g, now() FROM generate_series(1, %s) g",
        [playlists],
    )
    conn.execute(
        """INSERT INTO cdc_bench_doc_entries
           SELECT p, n, CASE WHEN n = 1 THEN 200 ELSE 1 + (p * 7 + n) %% %s END, now()
           FROM generate_series(1, %s) p, generate_series(1, %s) n""",
        [songs, playlists, PER_PLAYLIST],
    )
    conn.commit()
    capture.install(conn, None, mapping_file=("cdc-bench-documents.toml", MAPPING))
    ledger.discard_outbox(conn)
    conn.commit()
    return playlists + 3 * playlists * PER_PLAYLIST


def _enqueue_roots(conn: psycopg.Connection[Any]) -> None:
    [target] = snapshot.targets(conn, [COLLECTION])
    snapshot.enqueue_table(conn, target.table, Quiet(), target.op)


def measure(dsn: str, mongo_uri: str, playlists: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="cdc-bench-documents-"))
    client = mongo.client(mongo_uri)
    try:
        with pg.connect(dsn) as conn:
            rows = _load(conn, playlists)
            _enqueue_roots(conn)

        def export_all() -> None:
            with export.drain_connection(dsn) as conn:
                while export.export_batch(conn, folder / "export", batch_size=snapshot.BATCH_SIZE) is not None:
                    pass

        export_s = timed(export_all)
        database = client["cdc_bench_documents"]
        worker = Worker(dsn, Applier(database), folder / "run", batch_size=snapshot.BATCH_SIZE)
        acquire(worker)
        try:
            with pg.connect(dsn) as conn:
                _enqueue_roots(conn)
            full_s = timed(worker.cycle)
            with pg.connect(dsn) as conn:
                conn.execute(
                    "UPDATE cdc_bench_doc_entries SET added_at = added_at + interval '1 s' WHERE random() < 0.01"
                )
                conn.commit()
            incremental_s = timed(worker.cycle)
            with pg.connect(dsn) as conn:
                conn.execute("UPDATE cdc_bench_doc_artists SET name = name || ' (renamed)' WHERE artist_id = 1")
                conn.commit()
            applied_before = worker.stats.changes
            fanout_s = timed(worker.cycle)
            fanout_docs = worker.stats.changes - applied_before
        finally:
            worker.release()
    finally:
        with pg.connect(dsn) as conn:
            capture.install(conn, [], mapping_file=(mapping.NO_MAPPING, ""))
            conn.execute(DROP)
            capture.forget_tables(conn, TABLES)
            conn.commit()
        client.drop_database("cdc_bench_documents")
        client.close()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "mapped_export_rows_per_s": rows / export_s,
        "mapped_export_seconds": export_s,
        "mapped_source_rows": rows,
        "mapped_incremental_vs_full": incremental_s / full_s,
        "mapped_incremental_seconds": incremental_s,
        "mapped_full_seconds": full_s,
        "fanout_docs_per_s": fanout_docs / fanout_s,
        "fanout_docs": fanout_docs,
        "fanout_seconds": fanout_s,
    }
