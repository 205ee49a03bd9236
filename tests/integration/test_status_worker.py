"""`cdc status` tells the truth about the worker (issue 19, point 6).

`cdc run` records each cycle's outcome in the ledger (``cdc.worker_state``): ok, or the error and
since when. `cdc status` exits 1 while the last cycle failed, and while a running worker completes no
cycle for more than three intervals; and 0 again once the worker recovers. The faults are real: an
archive path that lies under a regular file (every cycle checks that the archive can be written),
and a worker process frozen with SIGSTOP while it holds the lock.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from tests.fix_cli import start_cdc

WAIT_S = 90  # generous: the machine is shared


def run_sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def status(cdc, env) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = cdc("status", "--json", env=env)
    assert result.stdout, result.stderr
    return result, orjson.loads(result.stdout)


def wait_for_status(
    cdc,
    env,
    worker: subprocess.Popen[str],
    condition: Callable[[subprocess.CompletedProcess[str], dict[str, Any]], bool],
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result, report = status(cdc, env)
        if condition(result, report):
            return result, report
        assert worker.poll() is None, f"the worker ended: {worker.communicate()[1][-3000:]}"
        time.sleep(0.3)
    pytest.fail(f"status never reached the state; last: {result.returncode} {result.stderr} {report}")


@pytest.fixture
def env(dbs, cdc, tmp_path) -> dict[str, str]:
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "volume" / "archive")}
    result = cdc("install", "--tables", "users", env=env)
    assert result.returncode == 0, result.stderr
    return env


@pytest.fixture
def worker(env) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `cdc run` in the background; stopped (thawed first) at the end of the test."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = start_cdc("run", *args, env=env, stdout=subprocess.DEVNULL)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=60)  # (also closes its stderr pipe)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def add_users(dsn: str, first: int, count: int) -> None:
    run_sql(
        dsn,
        "INSERT INTO users (username, email, full_name)"
        f" SELECT 'w' || n, 'w' || n || '@example.org', 'W ' || n FROM generate_series({first}, {first + count - 1}) n",
    )


def test_status_exits_1_while_the_worker_fails_naming_the_error_and_0_once_it_recovers(env, cdc, worker):
    volume = Path(env["CDC_ARCHIVE_DIR"]).parent
    volume.write_text("not a folder\n")  # the archive path lies under a file: every cycle fails
    add_users(env["CDC_PG_DSN"], 1, 3)
    process = worker("--interval", "0.5")

    failing, report = wait_for_status(cdc, env, process, lambda result, _: result.returncode == 1)
    lines = failing.stderr.strip().splitlines()
    assert len(lines) == 1, failing.stderr
    assert "the worker has been failing since " in lines[0]
    assert f"cannot write to {volume / 'archive'}: Not a directory" in lines[0]
    assert report["worker_running"] is True
    assert report["worker_last_cycle"] == "failing"
    assert "Not a directory" in report["worker_error"]
    assert report["worker_interval_s"] == 0.5
    assert report["worker_last_ok_at"] is None  # no cycle of it ever succeeded
    since = report["worker_failing_since"]
    assert since is not None and since in lines[0]
    # the streak keeps its start while the cycles go on failing
    _, later = wait_for_status(
        cdc, env, process, lambda _, found: found["worker_last_cycle_at"] != report["worker_last_cycle_at"]
    )
    assert later["worker_last_cycle"] == "failing" and later["worker_failing_since"] == since
    assert later["backlog_changes"] == 3  # nothing got through

    volume.unlink()  # the fault clears: the worker recovers by itself
    recovered, report = wait_for_status(cdc, env, process, lambda result, _: result.returncode == 0)
    assert recovered.stderr == ""
    assert report["worker_last_cycle"] == "ok"
    assert report["worker_failing_since"] is None and report["worker_error"] is None
    assert report["worker_last_ok_at"] is not None
    _, report = wait_for_status(cdc, env, process, lambda result, found: found["backlog_changes"] == 0)
    assert report["last_applied_batch"] is not None


def test_status_exits_1_while_a_running_worker_completes_no_cycle(env, cdc, worker):
    process = worker("--interval", "0.5")
    _, report = wait_for_status(
        cdc, env, process, lambda result, found: result.returncode == 0 and found["worker_last_cycle"] == "ok"
    )
    assert report["worker_progress_age_s"] is not None

    process.send_signal(signal.SIGSTOP)  # frozen, its lock still held: no cycle ends any more
    stalled, report = wait_for_status(cdc, env, process, lambda result, _: result.returncode == 1)
    assert report["worker_running"] is True and report["worker_last_cycle"] == "ok"
    assert report["worker_progress_age_s"] > 1.5
    assert "no cycle completed for " in stalled.stderr and " s (interval 0.5 s)" in stalled.stderr

    process.send_signal(signal.SIGCONT)
    wait_for_status(cdc, env, process, lambda result, _: result.returncode == 0)

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    result, report = status(cdc, env)  # a worker stopped after a good cycle: nothing wrong
    assert result.returncode == 0, result.stderr
    assert report["worker_running"] is False and report["worker_progress_age_s"] is None


def test_an_install_without_the_worker_record_still_reports_and_runs(env, cdc):
    run_sql(env["CDC_PG_DSN"], "DROP TABLE cdc.worker_state")  # as installed before it existed
    add_users(env["CDC_PG_DSN"], 1, 2)
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    result, report = status(cdc, env)
    assert result.returncode == 0, result.stderr
    assert report["worker_last_cycle"] is None and report["backlog_changes"] == 0

    assert cdc("install", "--tables", "users", env=env).returncode == 0  # adds it
    assert cdc("run", "--once", env=env).returncode == 0
    _, report = status(cdc, env)
    assert report["worker_last_cycle"] == "ok" and report["worker_interval_s"] is None  # --once
