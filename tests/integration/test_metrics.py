"""Metrics on real servers: `cdc run --listen --metrics-port` over HTTP, `cdc run --once --metrics-textfile`."""

import socket
import time
import urllib.request

import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc.capture import install as capture
from cdc.runtime.metrics import Metrics
from tests.fix_cli import start_cdc

ROWS = 6  # SecantusDB is slow: a handful of rows says as much as thousands


@pytest.fixture
def metered(dbs, tmp_path):
    """A small captured table (no rows yet); returns the env for `cdc`."""
    with psycopg.connect(dbs.pg_dsn) as conn:
        conn.execute("CREATE TABLE metered (id int PRIMARY KEY, note text)")
        capture.install(conn, ["metered"])
        conn.commit()
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}


def insert_rows(dsn, first, count):
    with psycopg.connect(dsn) as conn:
        for key in range(first, first + count):  # one statement per row: one outbox entry each
            conn.execute("INSERT INTO metered VALUES (%s, %s)", [key, f"row {key}"])


def parse(text):
    """{(name, labels): value} of every sample."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def table(name):
    return (name, (("table", "metered"),))


def test_listen_worker_serves_its_counts_over_http(metered, dbs):
    insert_rows(dbs.pg_dsn, 0, ROWS // 2)  # waiting before the worker starts
    port = free_port()
    worker = start_cdc("run", "--listen", "--interval", "2", "--metrics-port", str(port), env=metered)
    try:
        started = time.time()
        body, found = "", {}
        deadline = time.monotonic() + 60
        inserted_live = False
        while time.monotonic() < deadline:
            try:
                body = scrape(port)
            except OSError:  # not listening yet
                time.sleep(0.2)
                continue
            found = parse(body)
            if not inserted_live:
                insert_rows(dbs.pg_dsn, ROWS // 2, ROWS - ROWS // 2)  # made while the worker runs
                inserted_live = True
            elif (
                found.get(table("cdc_changes_applied_total")) == ROWS
                and found.get(("cdc_outbox_backlog_changes", ())) == 0
            ):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the worker did not report {ROWS} applied changes: {body[-3000:]}")
    finally:
        worker.terminate()
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-3000:]
    assert found[table("cdc_changes_exported_total")] == ROWS
    assert found[table("cdc_changes_applied_total")] == ROWS
    assert found.get(table("cdc_changes_stale_total"), 0) == 0
    assert found.get(table("cdc_changes_rejected_total"), 0) == 0
    assert found[("cdc_outbox_backlog_changes", ())] == 0
    assert found[("cdc_outbox_oldest_change_age_seconds", ())] == 0
    assert found[("cdc_outbox_up", ())] == 1
    assert found[("cdc_batch_duration_seconds_count", (("phase", "apply"),))] >= 1
    assert found[("cdc_batch_duration_seconds_count", (("phase", "export"),))] >= 1
    assert started - 1 <= found[("cdc_last_batch_timestamp_seconds", ())] <= time.time()
    assert started - 1 <= found[("cdc_last_success_timestamp_seconds", ())] <= time.time()
    assert found[("cdc_mongo_retries_total", ())] == 0
    for secret in (dbs.pg_dsn, dbs.mongo_uri, "postgresql://", "mongodb://", "password"):
        assert secret not in body


def test_run_once_writes_a_textfile_and_the_backlog_is_read_live(metered, dbs, cdc, tmp_path):
    insert_rows(dbs.pg_dsn, 0, ROWS)
    before = Metrics(dbs.pg_dsn)  # the backlog gauges, read from PostgreSQL before any worker ran
    try:
        waiting = parse(generate_latest(before.registry).decode())
    finally:
        before.close()
    assert waiting[("cdc_outbox_backlog_changes", ())] == ROWS
    assert waiting[("cdc_outbox_oldest_change_age_seconds", ())] >= 0
    assert waiting[("cdc_outbox_up", ())] == 1

    textfile = tmp_path / "textfile" / "cdc.prom"
    textfile.parent.mkdir()
    result = cdc("run", "--once", "--metrics-textfile", str(textfile), env=metered)
    assert result.returncode == 0, result.stderr
    found = parse(textfile.read_text())
    assert found[table("cdc_changes_applied_total")] == ROWS
    assert found[table("cdc_changes_exported_total")] == ROWS
    assert found[("cdc_outbox_backlog_changes", ())] == 0
    assert found[("cdc_last_success_timestamp_seconds", ())] > time.time() - 300
    assert [path.name for path in textfile.parent.iterdir()] == ["cdc.prom"]  # the temporary file was renamed
