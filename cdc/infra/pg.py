"""The PostgreSQL boundary: connections, session settings and error translation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from cdc.infra.errors import LockBusy, PostgresError, PostgresUnavailable, ShapeChanged
from cdc.infra.redact import redact, register_secret, secrets_in

# Read rows exactly as the type mapping expects (product.md, "Type mapping").
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
}

# SQLSTATE classes that mean "try again": connection exception, transaction rollback,
# insufficient resources, operator intervention.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
# What a statement built from the catalog meets when a migration commits between the reading of the
# catalog and the statement: a column or table gone, a type changed, a key that no longer parses, a
# cached plan whose result type changed. Retried: the worker follows the migration first.
LOCK_NOT_AVAILABLE = "55P03"
SHAPE_SQLSTATES = frozenset({"42703", "42P01", "42804", "42883", "22P02", "0A000"})


def describe(exc: psycopg.Error) -> str:
    """One line for a psycopg error: SQLSTATE and primary message, password-free."""
    diag = getattr(exc, "diag", None)
    primary = (diag.message_primary if diag is not None else None) or str(exc).strip().splitlines()[0]
    sqlstate = getattr(exc, "sqlstate", None)
    text = f"{primary} (SQLSTATE {sqlstate})" if sqlstate else primary
    return redact(" ".join(text.split()))


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (see ``TRANSIENT_SQLSTATE_CLASSES``)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = exc.sqlstate
    return sqlstate is None or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection with our session settings; failures become ``PostgresUnavailable``."""
    for secret in secrets_in(dsn):
        register_secret(secret)
    options = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
    try:
        return psycopg.connect(dsn, autocommit=autocommit, options=options, application_name="orininu-cdc", **kwargs)
    except psycopg.Error as exc:
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate[:2] in ("28", "3D"):  # bad credentials or no such database: retrying will not help
            raise PostgresError(f"cannot connect to PostgreSQL: {describe(exc)}") from None
        raise PostgresUnavailable(f"cannot connect to PostgreSQL: {describe(exc)}") from None


class Reconnecting:
    """One connection, opened by ``connect`` on first use and opened again once the last one was closed
    or broke (psycopg_pool's connect path, for a single connection held by one user).

    ``configure`` runs on each new connection before it is handed out (the session's isolation level,
    a ``statement_timeout``, …); it must leave the connection idle. When it raises, the new connection
    is closed and the error propagates, as do ``connect``'s (``PostgresUnavailable``, ``PostgresError``):
    the next ``get`` tries again."""

    def __init__(
        self,
        dsn: str,
        *,
        configure: Callable[[psycopg.Connection[Any]], None] | None = None,
        autocommit: bool = False,
        **kwargs: Any,
    ) -> None:
        """``autocommit`` and ``kwargs`` (``connect_timeout``, …) go to ``connect``."""
        self.dsn = dsn
        self.configure = configure
        self.autocommit = autocommit
        self.kwargs = kwargs
        self._conn: psycopg.Connection[Any] | None = None

    @property
    def live(self) -> bool:
        """Whether ``get`` hands out the connection it holds (False: it opens a new one)."""
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def get(self) -> psycopg.Connection[Any]:
        """The connection, opened (and configured) again when there is none or it was closed or broke."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()  # (a broken one: its socket)
        conn = connect(self.dsn, autocommit=self.autocommit, **self.kwargs)
        if self.configure is not None:
            try:
                self._configure(conn, self.configure)
            except BaseException:
                conn.close()
                raise
        self._conn = conn
        return conn

    @staticmethod
    def _configure(conn: psycopg.Connection[Any], configure: Callable[[psycopg.Connection[Any]], None]) -> None:
        configure(conn)
        status = conn.pgconn.transaction_status
        if status != TransactionStatus.IDLE:
            raise psycopg.ProgrammingError(
                f"connection left in status {TransactionStatus(status).name} by its configure function"
            )

    def close(self) -> None:
        """Close the connection; the next ``get`` opens a new one."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None


@contextlib.contextmanager
def translated(action: str, *, reads_captured_rows: bool = False) -> Iterator[None]:
    """Turn psycopg errors raised inside the block into ``PostgresError`` naming ``action``.

    ``reads_captured_rows``: the block runs statements built from the catalog over captured tables
    (a batch's export), so an error a migration explains (``SHAPE_SQLSTATES``) is ``ShapeChanged``,
    which the worker retries after following the migration. A lock not granted within the block's
    ``lock_timeout`` is ``LockBusy``, retried too."""
    try:
        yield
    except psycopg.OperationalError as exc:
        if is_transient(exc):
            raise PostgresUnavailable(f"{action}: {describe(exc)}") from exc
        if getattr(exc, "sqlstate", None) == LOCK_NOT_AVAILABLE:
            raise LockBusy(f"{action}: {describe(exc)}") from exc
        raise PostgresError(f"{action}: {describe(exc)}") from exc
    except psycopg.Error as exc:
        if reads_captured_rows and getattr(exc, "sqlstate", None) in SHAPE_SQLSTATES:
            raise ShapeChanged(f"{action}: {describe(exc)}") from exc
        raise PostgresError(f"{action}: {describe(exc)}") from exc
