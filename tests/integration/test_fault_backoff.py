"""Persistent faults do not spin (issue 12, point 8).

An archive folder that cannot be written, or PostgreSQL down: the worker and `cdc export` back off
(1 s doubling to 30 s), log the fault once and its recovery once, and take no batch id while a
batch cannot be written; when the fault clears, every change is exported and nothing is lost.
No test asserts a duration: they count log lines and batch ids.
"""

from __future__ import annotations

import errno
import logging
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from cdc.archive import folders as archive
from cdc.archive.folders import BatchWriter
from cdc.capture import install as capture
from cdc.export import batch as drain
from cdc.infra import pg
from cdc.infra.errors import ArchiveWriteError
from cdc.runtime.backoff import Backoff
from tests.fix_cli import start_cdc

FAULT_SECONDS = 5  # how long a fault lasts once the first failure was logged


class Child:
    """A `cdc` child process whose stderr is collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = start_cdc(*args, env=env)
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        assert self.process.stderr is not None and self.process.stdout is not None
        self._threads = [
            threading.Thread(target=self.stderr.extend, args=(self.process.stderr,), daemon=True),
            threading.Thread(target=self.stdout.extend, args=(self.process.stdout,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def wait_for(self, text: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if any(text in line for line in list(self.stderr)):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"never saw {text!r}: " + "".join(self.stderr)[-3000:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail("did not stop on SIGTERM: " + "".join(self.stderr)[-3000:])
        for thread in self._threads:
            thread.join(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code

    def warnings(self) -> list[str]:
        return [line for line in self.stderr if " WARNING " in line]


def _sequence(dsn: str) -> tuple[int, bool]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT last_value, is_called FROM cdc.batch_seq").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def _scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def _break(volume: Path) -> Path:
    """Make the archive under ``volume`` unwritable even for root (who ignores modes): move the
    volume aside and put a regular file in its place, so the archive path lies under a file."""
    aside = volume.with_name(volume.name + ".aside")
    volume.rename(aside)
    volume.write_text("not a folder\n")
    return aside


def _mend(volume: Path, aside: Path) -> None:
    volume.unlink()
    aside.rename(volume)


def _recovered_attempts(lines: list[str]) -> int:
    found = [re.search(r"recovered after (\d+) failed attempts", line) for line in lines]
    counts = [int(match.group(1)) for match in found if match]
    assert counts, "".join(lines)[-3000:]
    return counts[-1]


def _wait_until(condition, child: Child, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    pytest.fail("timed out; the child said: " + "".join(child.stderr)[-12000:])


def _synced(cdc, env) -> bool:
    status = cdc("status", "--json", "--max-backlog", "0", env=env)
    return status.returncode == 0 and '"unapplied_batches":0' in status.stdout


def _contiguous_batches(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        ids = [int(row[0]) for row in conn.execute("SELECT batch_id FROM cdc.batches ORDER BY batch_id")]
    assert ids == list(range(1, len(ids) + 1)), ids  # no id burned
    return ids


@pytest.fixture
def env(dbs, tmp_path):
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "volume" / "archive")}


def _prepare(cdc, env, *, snapshot: bool) -> None:
    steps = [("generate", "--scale", "tiny"), ("install",)] + ([("snapshot",)] if snapshot else [])
    for args in steps:
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr
    live = cdc("workload", "--rate", "100", "--duration", "2", "--no-long-transactions", env=env)
    assert live.returncode == 0, live.stderr


# ---- the pause and its log lines ----------------------------------------------------------------
def test_backoff_doubles_to_a_cap_and_logs_a_fault_once(caplog):
    now = [0.0]
    logger = logging.getLogger("test.backoff")
    backoff = Backoff(threading.Event(), "cycle", logger=logger, clock=lambda: now[0], jitter=0)
    caplog.set_level(logging.DEBUG, logger="test.backoff")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    delays = []
    for attempt in range(8):
        delays.append(backoff.failed(ArchiveWriteError(f"batch {60 + attempt}: cannot write to /a: Not a directory")))
        now[0] += backoff.delay
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert len(warnings()) == 1  # a changing batch id is not a new error
    assert warnings()[0].startswith("cycle interrupted: batch 60: cannot write to /a")
    assert "retrying in 1s" in warnings()[0]

    backoff.failed(ArchiveWriteError("cannot write to /a: No space left on device"))
    assert len(warnings()) == 2
    assert "still failing (9 attempts), now: cannot write to /a: No space left on device" in warnings()[1]

    now[0] += 301  # the same error for 5 minutes: one reminder
    backoff.failed(ArchiveWriteError("cannot write to /a: No space left on device"))
    assert len(warnings()) == 3
    assert re.search(r"still failing \(10 attempts in \d+s\)", warnings()[2])
    backoff.failed(ArchiveWriteError("cannot write to /a: No space left on device"))
    assert len(warnings()) == 3

    backoff.succeeded()
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos and infos[-1].startswith("cycle recovered after 11 failed attempts")
    assert not backoff.failing
    assert backoff.failed(ArchiveWriteError("cannot write to /a: Not a directory")) == 1  # reset
    assert len(warnings()) == 4 and warnings()[3].startswith("cycle interrupted:")


def test_backoff_wait_ends_at_once_on_stop():
    stop = threading.Event()
    backoff = Backoff(stop, "cycle", first=3600, jitter=0)
    backoff.failed(ArchiveWriteError("x"))
    stop.set()
    backoff.wait()  # returns at once: a stop request is not held up by a long pause


# ---- no batch id for a batch that cannot be written ---------------------------------------------
def test_a_claim_whose_batch_cannot_be_written_gives_its_id_back(dbs, tmp_path, monkeypatch):
    with pg.connect(dbs.pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.commit()
        capture.install(conn, ["t"])
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 10) g")
    folder = tmp_path / "archive"

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with drain.drain_connection(dbs.pg_dsn) as conn:
        with monkeypatch.context() as patched:
            # the folder takes the probe's one byte, the batch does not fit: the claim is made, then fails
            patched.setattr(BatchWriter, "finish", disk_full)
            for _ in range(3):
                with pytest.raises(ArchiveWriteError, match="No space left on device"):
                    drain.export_batch(conn, folder, batch_size=100)
        exported = drain.export_batch(conn, folder, batch_size=100)
    assert exported is not None
    assert exported.batch_id == 1  # the three failed claims burned no id
    assert exported.changes == 10
    assert _scalar(dbs.pg_dsn, "SELECT count(*) FROM cdc.outbox") == 0
    assert [path.name for path in folder.iterdir()] == ["000000000001"]


def test_an_unwritable_archive_is_refused_before_the_claim(dbs, tmp_path):
    with pg.connect(dbs.pg_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.commit()
        capture.install(conn, ["t"])
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with drain.drain_connection(dbs.pg_dsn) as conn:
        for folder in (blocker, blocker / "archive"):  # a file, and a path under a file
            with pytest.raises(
                ArchiveWriteError, match=f"cannot write to {re.escape(str(folder))}: [Nn]ot a directory"
            ):
                drain.export_batch(conn, folder, batch_size=100)
    assert _sequence(dbs.pg_dsn) == (1, False)  # nextval was never called
    assert _scalar(dbs.pg_dsn, "SELECT count(*) FROM cdc.outbox") == 1
    archive.check_writable(tmp_path / "fine")
    assert list((tmp_path / "fine").iterdir()) == []  # the probe leaves nothing behind


# ---- the worker and `cdc export`, end to end ----------------------------------------------------
def test_the_worker_backs_off_on_an_unwritable_archive_and_catches_up(cdc, env, tmp_path):
    _prepare(cdc, env, snapshot=True)
    dsn = env["CDC_PG_DSN"]
    before = _sequence(dsn)
    folder = Path(env["CDC_ARCHIVE_DIR"])
    aside = _break(folder.parent)
    worker = Child(["run", "--listen", "--interval", "1", "--batch-size", "50"], env)
    try:
        worker.wait_for("cycle interrupted: cannot write to")
        time.sleep(FAULT_SECONDS)
        assert _sequence(dsn) == before  # no batch id taken while the archive cannot be written
        assert _scalar(dsn, "SELECT count(*) FROM cdc.outbox") > 0  # the changes wait in the outbox
        _mend(folder.parent, aside)
        _wait_until(lambda: _synced(cdc, env), worker)
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.stderr)[-3000:]
    assert _recovered_attempts(worker.stderr) >= 3  # it retried...
    assert len(worker.warnings()) <= 2, "".join(worker.warnings())  # ...without a line per attempt
    _contiguous_batches(dsn)
    result = cdc("verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_export_fails_once_or_backs_off_on_an_unwritable_archive(cdc, env, tmp_path):
    _prepare(cdc, env, snapshot=False)
    dsn = env["CDC_PG_DSN"]
    waiting = _scalar(dsn, "SELECT count(*) FROM cdc.outbox")
    assert waiting > 0
    folder = Path(env["CDC_ARCHIVE_DIR"])
    folder.mkdir(parents=True)
    aside = _break(folder.parent)

    once = cdc("export", "--once", env=env)
    assert once.returncode == 1
    assert once.stderr.strip().splitlines() == [f"cdc: error: cannot write to {folder}: Not a directory"]
    assert _sequence(dsn) == (1, False)

    exporter = Child(["export", "--interval", "1", "--batch-size", "100"], env)
    try:
        exporter.wait_for("export interrupted: cannot write to")
        time.sleep(FAULT_SECONDS)
        assert _sequence(dsn) == (1, False)
        assert _scalar(dsn, "SELECT count(*) FROM cdc.outbox") == waiting
        _mend(folder.parent, aside)
        _wait_until(lambda: _scalar(dsn, "SELECT count(*) FROM cdc.outbox") == 0, exporter)
    finally:
        code = exporter.stop()
    assert code == 0, "".join(exporter.stderr)[-3000:]
    assert _recovered_attempts(exporter.stderr) >= 3
    assert len(exporter.warnings()) <= 2, "".join(exporter.warnings())
    ids = _contiguous_batches(dsn)
    assert ids
    assert [path.name for path in archive.batch_paths(folder)] == [archive.batch_folder_name(i) for i in ids]
    for path in archive.batch_paths(folder):
        archive.read_batch(path)  # complete, checksums match
    assert _scalar(dsn, "SELECT count(*) FROM cdc.batches WHERE state <> 'exported'") == 0
    assert _scalar(dsn, "SELECT coalesce(sum(key_count), 0) FROM cdc.batches") >= waiting


def test_the_worker_backs_off_while_postgres_is_down(own_stack, cdc):
    stack, stack_env, folder = own_stack
    env = {**stack_env, "CDC_MONGO_DB": "pgdown", "CDC_ARCHIVE_DIR": str(folder / "archive")}
    _prepare(cdc, env, snapshot=True)
    worker = Child(["run", "--listen", "--interval", "1", "--batch-size", "50"], env)
    try:
        _wait_until(lambda: _synced(cdc, env), worker)
        stack.stop_postgres()
        worker.wait_for("cycle interrupted:")
        time.sleep(FAULT_SECONDS)
        stack.start_postgres()
        live = cdc("workload", "--rate", "100", "--duration", "2", "--no-long-transactions", env=env)
        assert live.returncode == 0, live.stderr
        _wait_until(lambda: _synced(cdc, env), worker)
    finally:
        code = worker.stop()
    assert code == 0, "".join(worker.stderr)[-3000:]
    assert _recovered_attempts(worker.stderr) >= 3
    # the first failure, a changed error (cannot connect), a dropped LISTEN connection: not two a second
    assert len(worker.warnings()) <= 4, "".join(worker.warnings())
    result = cdc("verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
