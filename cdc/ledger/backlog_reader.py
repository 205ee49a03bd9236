"""The backlog read live, for the metrics' scrapes and `cdc run`'s summary line."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from cdc.infra import pg
from cdc.infra.errors import CdcError
from cdc.ledger.queries import Backlog, backlog


class BacklogReader:
    """Reads ``backlog`` live, on an autocommit connection of its own opened on first use and again
    after an error (the metrics' scrapes and ``cdc run``'s summary line). ``on_error`` is told each
    failure, in one line with no password; the reading is then None."""

    def __init__(
        self,
        dsn: str,
        *,
        statement_timeout: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.statement_timeout = statement_timeout
        self.on_error = on_error
        self._session = pg.Reconnecting(dsn, autocommit=True, connect_timeout=5, configure=self._configure)
        self._lock = threading.Lock()  # concurrent scrapes share the connection

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        if self.statement_timeout is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [self.statement_timeout])

    def __call__(self) -> Backlog | None:
        with self._lock:
            try:
                return backlog(self._session.get())
            except (CdcError, psycopg.Error) as exc:  # CdcError messages are redacted: no password
                if self.on_error is not None:
                    self.on_error(pg.describe(exc) if isinstance(exc, psycopg.Error) else str(exc))
                self._session.close()
                return None

    def close(self) -> None:
        with self._lock:
            self._session.close()
