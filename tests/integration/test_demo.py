"""`cdc demo` end to end, short: CI exercises the main job on every landing, and scrapes its
metrics endpoint while it runs (as an operator would with curl). The shell also points the
generic settings (CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB, CDC_ARCHIVE_DIR, PGDATABASE) at decoy
databases and a decoy archive: the demo uses only the servers named for it, and leaves those alone."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pymongo
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fix_cli import start_cdc


def _applied(body: str) -> float:
    for family in text_string_to_metric_families(body):
        if family.name == "cdc_changes_applied":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: str = response.read().decode()
    return body


@pytest.fixture
def decoys(new_pg_database, mongo_uri, mongo_db, tmp_path):
    """A user's own databases and archive, which the generic settings point at."""
    pg_dsn = new_pg_database()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (id int PRIMARY KEY)")
        conn.execute("INSERT INTO mine VALUES (1), (2)")
        dbname = conn.info.dbname
    decoy_db = mongo_db + "_decoy"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(mongo_uri)
    client[decoy_db]["mine"].insert_one({"_id": 1})
    batch = tmp_path / "decoy-archive" / "000000000001"
    batch.mkdir(parents=True)
    (batch / "keep.txt").write_text("mine\n")
    env = {
        "CDC_PG_DSN": pg_dsn,
        "PGDATABASE": dbname,
        "CDC_MONGO_URI": mongo_uri,
        "CDC_MONGO_DB": decoy_db,
        "CDC_ARCHIVE_DIR": str(tmp_path / "decoy-archive"),
    }
    yield env
    client.drop_database(decoy_db)
    client.close()


def assert_untouched(env: dict[str, str]) -> None:
    with psycopg.connect(env["CDC_PG_DSN"]) as conn:
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
        assert conn.execute("SELECT to_regnamespace('cdc')").fetchone() == (None,)
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        assert client[env["CDC_MONGO_DB"]].list_collection_names() == ["mine"]
    finally:
        client.close()
    archive = Path(env["CDC_ARCHIVE_DIR"])
    assert sorted(path.name for path in archive.rglob("*")) == ["000000000001", "keep.txt"]


def test_demo_runs_end_to_end_with_a_clean_verify_and_serves_metrics(dbs, decoys, tmp_path):
    env = {
        **decoys,
        "CDC_DEMO_PG_DSN": dbs.pg_dsn,
        "CDC_DEMO_MONGO_URI": dbs.mongo_uri,
        "CDC_DEMO_MONGO_DB": dbs.mongo_db,
        "CDC_DATA_DIR": str(tmp_path / "data"),
    }
    lines: list[str] = []
    scrapes: list[str] = []
    stderr: list[str] = []
    with start_cdc("demo", "--scale", "tiny", "--duration", "5", "--rate", "60", env=env, cwd=tmp_path) as child:
        assert child.stdout is not None and child.stderr is not None
        errors = child.stderr
        drain_stderr = threading.Thread(target=lambda: stderr.extend(errors), daemon=True)
        drain_stderr.start()
        for line in child.stdout:
            lines.append(line)
            if match := re.match(r"metrics on (http://\S+/metrics)", line):
                url = match.group(1)
            if line.startswith("[5/7]"):  # the snapshot is applied; the 5 s live sync begins
                scrapes.append(_scrape(url))
                time.sleep(3.5)  # well inside the live sync
                scrapes.append(_scrape(url))
        returncode = child.wait(timeout=300)
        drain_stderr.join(timeout=10)
    output = "".join(lines)
    assert returncode == 0, output[-3000:] + "".join(stderr)[-3000:]
    assert "[7/7] verify:" in output
    assert " 0 differences" in output
    assert "demo finished" in output
    assert len(scrapes) == 2
    snapshot_applied, live_applied = (_applied(body) for body in scrapes)
    rows = int(re.search(r"\[3/7\] generated ([\d,]+) rows", output).group(1).replace(",", ""))
    # every generated row went through the applier: one document per row, except playlist_songs
    # rows, which the demo's document model embeds in their playlists
    embedded = int(re.search(r"playlist_songs \| (\d+)", output).group(1))
    assert snapshot_applied >= rows - embedded
    assert live_applied > snapshot_applied  # and the live workload's changes after them
    assert "cdc_outbox_backlog_changes" in scrapes[1]
    # the targets were printed before the first step that replaces data, and the decoys were left alone
    assert output.index("demo targets (named for the demo)") < output.index("[2/7]")
    assert "note: the demo ignores CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB, CDC_ARCHIVE_DIR, PGDATABASE" in output
    assert (tmp_path / "data" / "demo-archive").is_dir()
    assert_untouched(decoys)
