"""Commit-to-MongoDB latency, measured by probes: a committed update, then polling until it is readable."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg
from psycopg import sql
from pymongo.database import Database


class LatencyProbe:
    """Every ``every`` seconds, set a new value in one row and time until MongoDB shows it."""

    def __init__(
        self,
        dsn: str,
        database: Database[Any],
        *,
        table: str = "artists",
        key_column: str = "artist_id",
        value_column: str = "monthly_listeners",
        key: int = 1,
        every: float = 0.5,
    ) -> None:
        self.dsn = dsn
        self.collection = database[table]
        self.statement = sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(
            sql.Identifier(table), sql.Identifier(value_column), sql.Identifier(key_column)
        )
        self.value_column = value_column
        self.key = key
        self.every = every
        self.samples: list[float] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            value = int(time.time() * 1000) % 1_000_000_000
            while not self.stop.wait(self.every):
                value += 1
                conn.execute(self.statement, [value, self.key])
                committed = time.perf_counter()
                deadline = committed + 60
                while time.perf_counter() < deadline and not self.stop.is_set():
                    found = self.collection.find_one({"_id": self.key}, {self.value_column: 1})
                    if found and found.get(self.value_column) == value:
                        self.samples.append(time.perf_counter() - committed)
                        break
                    time.sleep(0.005)

    def percentile(self, fraction: float) -> float | None:
        if not self.samples:
            return None
        if len(self.samples) == 1:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=100, method="inclusive")[round(fraction * 100) - 1]
