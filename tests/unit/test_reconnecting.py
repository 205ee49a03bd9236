"""``pg.Reconnecting``: one connection, opened lazily, opened (and configured) again once it broke.
The driver is replaced by fakes: no servers."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from cdc.infra import pg
from cdc.infra.errors import PostgresUnavailable


class FakePgConn:
    def __init__(self) -> None:
        self.transaction_status = TransactionStatus.IDLE


class FakeConn:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.broken = False
        self.pgconn = FakePgConn()

    def close(self) -> None:
        self.closed = True


class FakeServer:
    """Stands in for ``pg.connect``: hands out numbered connections, or fails while ``down``."""

    def __init__(self) -> None:
        self.opened: list[FakeConn] = []
        self.calls: list[dict[str, Any]] = []
        self.down = False

    def connect(self, dsn: str, **kwargs: Any) -> FakeConn:
        self.calls.append({"dsn": dsn, **kwargs})
        if self.down:
            raise PostgresUnavailable("cannot connect to PostgreSQL: connection refused")
        conn = FakeConn(len(self.opened) + 1)
        self.opened.append(conn)
        return conn


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(pg, "connect", fake.connect)
    return fake


def test_it_connects_on_first_use_and_keeps_a_live_connection(server: FakeServer) -> None:
    session = pg.Reconnecting("dbname=app", autocommit=True, connect_timeout=5)
    assert server.calls == [] and not session.live
    first = session.get()
    assert session.get() is first and session.live
    assert server.calls == [{"dsn": "dbname=app", "autocommit": True, "connect_timeout": 5}]


@pytest.mark.parametrize("how", ["broken", "closed"])
def test_a_broken_or_closed_connection_is_replaced_and_configured_again(server: FakeServer, how: str) -> None:
    configured: list[int] = []
    session = pg.Reconnecting("dbname=app", configure=lambda conn: configured.append(conn.number))
    first = session.get()
    setattr(first, how, True)
    assert not session.live
    second = session.get()
    assert second is not first and first.closed  # (a broken one is closed: its socket)
    assert configured == [1, 2]
    assert server.calls[-1]["autocommit"] is False


def test_a_failed_reconnect_raises_and_the_next_get_tries_again(server: FakeServer) -> None:
    session = pg.Reconnecting("dbname=app")
    session.get().broken = True
    server.down = True
    with pytest.raises(PostgresUnavailable):
        session.get()
    assert not session.live
    server.down = False
    assert session.get().number == 2


def test_a_configure_that_fails_closes_the_new_connection(server: FakeServer) -> None:
    def configure(conn: Any) -> None:
        raise psycopg.OperationalError("statement_timeout refused")

    session = pg.Reconnecting("dbname=app", configure=configure)
    with pytest.raises(psycopg.OperationalError):
        session.get()
    assert server.opened[0].closed and not session.live


def test_a_configure_that_leaves_a_transaction_open_is_refused(server: FakeServer) -> None:
    def configure(conn: Any) -> None:
        conn.pgconn.transaction_status = TransactionStatus.INTRANS

    session = pg.Reconnecting("dbname=app", configure=configure)
    with pytest.raises(psycopg.ProgrammingError, match="INTRANS"):
        session.get()
    assert server.opened[0].closed


def test_close_closes_and_the_next_get_reconnects(server: FakeServer) -> None:
    session = pg.Reconnecting("dbname=app")
    session.close()  # nothing open yet: nothing to do
    first = session.get()
    session.close()
    assert first.closed and not session.live
    assert session.get().number == 2


def test_a_drain_session_reads_in_repeatable_read(server: FakeServer) -> None:
    from cdc.export.batch import DrainSession

    session = DrainSession("dbname=app")
    conn: Any = session.get()
    assert conn.isolation_level == psycopg.IsolationLevel.REPEATABLE_READ
    conn.broken = True
    assert session.get().isolation_level == psycopg.IsolationLevel.REPEATABLE_READ
