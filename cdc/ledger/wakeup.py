"""The worker's wake-up: sleep until the next poll, or until a NOTIFY arrives.

NOTIFY is only a wake-up: notifications sent while nobody listens are lost, so the worker always
re-reads the outbox and keeps polling. A dropped LISTEN connection falls back to polling and is
opened again at the next wait.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from cdc.infra import pg
from cdc.infra.errors import PostgresUnavailable
from cdc.ledger.queries import NOTIFY_CHANNEL

log = logging.getLogger("cdc.worker")

DEBOUNCE_S = 0.005


class Wakeup:
    def __init__(self, dsn: str, stop: threading.Event) -> None:
        self.dsn = dsn
        self.stop = stop
        self._listener: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._listener is not None and not self._listener.closed:
            self._listener.close()
        self._listener = None

    def wait(self, interval: float, listen: bool) -> None:
        """Sleep until the next poll, or until a NOTIFY arrives (a dropped listener falls back to polling)."""
        if listen and self._listener is None:
            try:
                self._listener = pg.connect(self.dsn, autocommit=True)
                self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            except (PostgresUnavailable, psycopg.Error) as exc:
                log.warning("cannot listen (%s); polling", exc, extra={"action": "listen_failed"})
                self.close()
        if self._listener is None:
            self.stop.wait(interval if not listen else min(interval, 1.0))
            return
        deadline = time.monotonic() + interval
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                # short slices, so a stop request is seen quickly; any notification wakes the worker
                woke = False
                timeout = min(0.5, max(0.0, deadline - time.monotonic()))
                for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                    woke = True
                if woke:
                    # debounce: a burst of commits wakes one cycle, not one cycle per commit
                    for _ in self._listener.notifies(timeout=DEBOUNCE_S):
                        pass
                    return
        except psycopg.Error as exc:
            log.warning(
                "the LISTEN connection dropped (%s); reconnecting", pg.describe(exc), extra={"action": "listen_lost"}
            )
            self.close()
