"""MongoDB stopped mid-run: the worker retries, then catches up, and verify is clean."""

import subprocess
import time

import pytest

from tests.fix_cli import start_cdc

OUTAGE_SECONDS = 20


def test_worker_survives_a_mongodb_outage(own_stack, cdc):
    stack, stack_env, folder = own_stack
    # a short server selection timeout, so the outage surfaces as errors and retries
    uri = stack_env["CDC_MONGO_URI"] + "&serverSelectionTimeoutMS=1500"
    env = {**stack_env, "CDC_MONGO_URI": uri, "CDC_MONGO_DB": "outage", "CDC_ARCHIVE_DIR": str(folder / "archive")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr
    worker = start_cdc("run", "--listen", "--interval", "1", "--batch-size", "50", env=env)
    try:
        live = cdc("workload", "--rate", "100", "--duration", "3", "--no-long-transactions", env=env)
        assert live.returncode == 0, live.stderr
        stack.stop_mongo()
        during = cdc("workload", "--rate", "50", "--duration", str(OUTAGE_SECONDS), "--no-long-transactions", env=env)
        assert during.returncode == 0, during.stderr
        stack.start_mongo()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = cdc("status", "--json", "--max-backlog", "0", env=env)
            if status.returncode == 0 and '"unapplied_batches":0' in status.stdout:
                break
            time.sleep(1)
    finally:
        worker.terminate()
        try:
            _, stderr = worker.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, stderr = worker.communicate()
            pytest.fail("worker did not stop on SIGTERM: " + stderr[-3000:])
    assert worker.returncode == 0, stderr[-3000:]
    assert "retry" in stderr  # it did meet the outage
    result = cdc("verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
