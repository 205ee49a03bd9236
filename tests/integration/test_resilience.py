"""Faults the worker must survive: a full disk, a PostgreSQL restart, several workers, random kills."""

import os
import random
import signal
import time

import pytest

from tests.fix_cli import start_cdc

SOAK_KILLS = int(os.environ.get("CDC_SOAK_KILLS", "5"))
SOAK_SEED = int(os.environ.get("CDC_SOAK_SEED", "7"))


def prepared(cdc, env):
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr


def start(args, env):
    return start_cdc(*args, env=env)


def stop(process, sig=signal.SIGTERM):
    process.send_signal(sig)
    return process.communicate(timeout=120)


def wait_until_synced(cdc, env, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = cdc("status", "--json", "--max-backlog", "0", env=env)
        if status.returncode == 0 and '"unapplied_batches":0' in status.stdout:
            return
        time.sleep(0.5)
    pytest.fail("the workers did not catch up: " + status.stdout + status.stderr)


def verify_clean(cdc, env):
    result = cdc("verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def env(dbs, tmp_path):
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}


def test_full_disk_fails_clearly_applies_nothing_and_recovers(cdc, env, tmp_path):
    prepared(cdc, env)
    assert cdc("workload", "--rate", "100", "--duration", "2", "--no-long-transactions", env=env).returncode == 0
    flag = tmp_path / "disk-full"
    flag.touch()
    full = cdc("run", "--once", env={**env, "CDC_FAULT_DISK_FULL": str(flag)})
    assert full.returncode == 1
    assert "No space left on device" in full.stderr
    assert len(full.stderr.strip().splitlines()) == 1
    status = cdc("status", "--json", env=env)
    assert '"last_applied_batch":1,' in status.stdout  # only the snapshot's batch
    assert '"backlog_changes":0' not in status.stdout  # the changes are still waiting
    flag.unlink()
    again = cdc("run", "--once", env={**env, "CDC_FAULT_DISK_FULL": str(flag)})
    assert again.returncode == 0, again.stderr
    verify_clean(cdc, env)


@pytest.mark.parametrize("workers", [2, 4])
def test_several_workers_on_one_outbox(cdc, env, workers):
    prepared(cdc, env)
    running = [start(["run", "--listen", "--interval", "1", "--batch-size", "40"], env) for _ in range(workers)]
    try:
        live = cdc("workload", "--rate", "150", "--duration", "5", env=env, timeout=120)
        assert live.returncode == 0, live.stderr
        wait_until_synced(cdc, env)
    finally:
        outputs = [stop(process) for process in running]
    assert all(process.returncode == 0 for process in running), [err[-2000:] for _, err in outputs]
    verify_clean(cdc, env)


def test_random_kills_lose_nothing(cdc, env):
    """A seeded soak: SIGKILL the worker at random moments under a live workload (CDC_SOAK_KILLS)."""
    prepared(cdc, env)
    rng = random.Random(SOAK_SEED)
    live = start(["workload", "--rate", "120", "--duration", "0", "--no-long-transactions"], env)
    kills = 0
    try:
        for _ in range(SOAK_KILLS):
            worker = start(["run", "--listen", "--interval", "1", "--batch-size", str(rng.randint(5, 60))], env)
            time.sleep(rng.uniform(0.3, 2.0))
            worker.kill()
            worker.communicate(timeout=60)
            kills += 1
    finally:
        stop(live)
    assert kills == SOAK_KILLS
    finish = cdc("run", "--once", env=env)
    assert finish.returncode == 0, finish.stderr
    verify_clean(cdc, env)


def test_worker_survives_a_postgres_restart(own_stack, cdc):
    stack, stack_env, folder = own_stack
    env = {**stack_env, "CDC_MONGO_DB": "pgrestart", "CDC_ARCHIVE_DIR": str(folder / "archive")}
    prepared(cdc, env)
    worker = start(["run", "--listen", "--interval", "1", "--batch-size", "50"], env)
    try:
        assert cdc("workload", "--rate", "100", "--duration", "2", "--no-long-transactions", env=env).returncode == 0
        stack.stop_postgres()
        time.sleep(3)
        stack.start_postgres()
        assert cdc("workload", "--rate", "100", "--duration", "2", "--no-long-transactions", env=env).returncode == 0
        synced = True
        try:
            wait_until_synced(cdc, env, seconds=60)
        except BaseException:
            synced = False
    finally:
        _, stderr = stop(worker)
    assert synced, stderr[-4000:]
    assert worker.returncode == 0, stderr[-3000:]
    assert "retrying" in stderr  # it met the restart
    verify_clean(cdc, env)
