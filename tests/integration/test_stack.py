"""The embedded stack itself: up twice, status, connect with stack.env, down, up again."""

import socket
import stat

import psycopg
import pymongo
import pytest


def read_env(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def pids(status_output):
    return sorted(word for word in status_output.split() if word.startswith("pid="))


@pytest.fixture
def data_dir(tmp_path, cdc):
    folder = tmp_path / "stack data"  # a space in the path, on purpose
    yield folder
    cdc("stack", "down", "--data-dir", str(folder))


def test_stack_lifecycle(data_dir, cdc):
    first = cdc("stack", "up", "--data-dir", str(data_dir), "--fast")
    assert first.returncode == 0, first.stderr
    env_file = data_dir / "stack.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = read_env(env_file)
    assert set(env) == {"CDC_PG_DSN", "CDC_MONGO_URI"}
    # printed, with the password masked
    password = psycopg.conninfo.conninfo_to_dict(env["CDC_PG_DSN"])["password"]
    assert password and password not in first.stdout
    assert "CDC_PG_DSN=postgresql://postgres:***@" in first.stdout

    status = cdc("stack", "status", "--data-dir", str(data_dir))
    assert status.returncode == 0, status.stderr
    running_pids = pids(status.stdout)

    second = cdc("stack", "up", "--data-dir", str(data_dir))
    assert second.returncode == 0, second.stderr
    assert read_env(env_file) == env
    assert pids(cdc("stack", "status", "--data-dir", str(data_dir)).stdout) == running_pids

    with psycopg.connect(env["CDC_PG_DSN"], autocommit=True) as conn:
        assert conn.info.server_version >= 180000
        conn.execute("CREATE TABLE kept (x int)")
    client = pymongo.MongoClient(env["CDC_MONGO_URI"], serverSelectionTimeoutMS=10_000)
    client.probe.things.insert_one({"_id": 1})
    client.close()

    # a command with no --pg finds the running stack by itself
    check = cdc("schema", "apply", "--data-dir", str(data_dir))
    assert check.returncode == 0, check.stderr

    down = cdc("stack", "down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stderr
    stopped = cdc("stack", "status", "--data-dir", str(data_dir))
    assert stopped.returncode == 1
    assert "stopped" in stopped.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(env["CDC_PG_DSN"], connect_timeout=3)

    again = cdc("stack", "up", "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stderr
    env_again = read_env(env_file)
    with psycopg.connect(env_again["CDC_PG_DSN"]) as conn:
        assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)
    client = pymongo.MongoClient(env_again["CDC_MONGO_URI"], serverSelectionTimeoutMS=10_000)
    assert client.probe.things.find_one({"_id": 1}) == {"_id": 1}
    client.close()


def test_taken_port_is_a_clear_error(data_dir, cdc):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cdc("stack", "up", "--data-dir", str(data_dir), "--pg-port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"cdc: error: postgresql: port {port} on 127.0.0.1 is already taken; pick another or pass 0"
    ]
