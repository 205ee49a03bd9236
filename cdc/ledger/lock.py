"""The worker lock: one worker applies at a time, fenced.

A session advisory lock on its own connection. A lock is no fence once its connection has dropped,
so every claim checks, inside its own transaction, that the backend that took the lock still holds
it (``fence``); and the worker checks before each batch (``check``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg

from cdc.infra import pg
from cdc.infra.errors import LockLost
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.worker")

_HOLDER = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
    " AND objsubid = 2 AND pid = %s AND granted)"
)


class WorkerLock:
    def __init__(self, dsn: str, stop: threading.Event, *, poll_s: float = 2.0) -> None:
        self.dsn = dsn
        self.stop = stop
        self.poll_s = poll_s
        self.connection: psycopg.Connection[Any] | None = None  # the session holding the lock
        self.backend_pid: int | None = None  # its backend: the claims' fence

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock; with ``wait``, until it is granted or ``stop`` is set."""
        self.connection = pg.connect(self.dsn, autocommit=True)
        while not self.stop.is_set():
            with pg.translated("taking the worker lock"):
                row = self.connection.execute("SELECT pg_try_advisory_lock(%s, %s)", ledger.WORKER_LOCK).fetchone()
            if row and row[0]:
                self.backend_pid = self.connection.info.backend_pid
                return True
            if not wait:
                return False
            log.info("another worker holds the lock; waiting", extra={"action": "worker_wait"})
            self.stop.wait(self.poll_s)
        return False

    def fence(self, conn: psycopg.Connection[Any]) -> None:
        """Inside a claim's transaction: raise ``LockLost`` unless our lock backend still holds the lock,
        so a worker whose lock connection died a moment ago claims nothing."""
        row = conn.execute(_HOLDER, [*ledger.WORKER_LOCK, self.backend_pid]).fetchone()
        if not row or not row[0]:
            raise LockLost()

    def check(self) -> None:
        """Raise ``LockLost`` unless the lock connection is up and still holds the lock."""
        if self.connection is None:
            raise LockLost()
        try:
            self.fence(self.connection)
        except psycopg.Error:
            raise LockLost() from None

    def release(self) -> None:
        if self.connection is not None and not self.connection.closed:
            self.connection.close()
        self.connection = None
