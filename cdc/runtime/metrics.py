"""Prometheus metrics of the sync worker, on a registry of their own (never the process-global one).

One ``Metrics`` per worker run, so tests and several workers in one process do not clash. The
worker counts what it exported and applied; the backlog (changes not yet in MongoDB: in the
outbox, or in batches claimed and not yet applied) and the oldest waiting change's age are read
from PostgreSQL when the metrics are collected (a scrape, or the textfile write), so they keep
growing while a worker is stuck, a long batch is applied included. The gauges keep their
``cdc_outbox_`` names (dashboards and alerts use them). Labels hold table names only, never a DSN or URI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cdc.infra.errors import ConfigError
from cdc.ledger.backlog_reader import BacklogReader

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import Metric

    from cdc.export.batch import ExportedBatch
    from cdc.sinks.base import ApplyStats

log = logging.getLogger("cdc.metrics")  # the name users filter on, kept across the move to packages

# Batches take milliseconds on a quiet table and minutes in a snapshot of 50,000-key batches.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKLOG_TIMEOUT = "5s"  # statement_timeout of the backlog query: a scrape never hangs on PostgreSQL


def changes_by_table(counts: Mapping[str, Mapping[str, int]], *ops: str) -> dict[str, int]:
    """Per table, the sum of the given ops (``upsert``, ``delete``, ``stale``…), tables with 0 left out."""
    totals = {table: sum(counter.get(op, 0) for op in ops) for table, counter in counts.items()}
    return {table: total for table, total in totals.items() if total}


def applied_by_table(by_collection: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Changes written per table: the upsert and delete lines sent, less the stale ones skipped."""
    sent = changes_by_table(by_collection, "upsert", "delete")
    stale = changes_by_table(by_collection, "stale")
    applied = {table: max(0, total - stale.get(table, 0)) for table, total in sent.items()}
    return {table: total for table, total in applied.items() if total}


class OutboxCollector(Collector):
    """The backlog gauges (``ledger.backlog``), read from PostgreSQL at collection time on a connection of their own."""

    def __init__(self, dsn: str) -> None:
        self._read = BacklogReader(dsn, statement_timeout=BACKLOG_TIMEOUT, on_error=_backlog_error)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "cdc_outbox_backlog_changes",
                "Changes (keys) not yet in MongoDB: in the outbox, or in batches claimed and not yet applied.",
            ),
            GaugeMetricFamily(
                "cdc_outbox_oldest_change_age_seconds",
                "Age of the oldest change not yet in MongoDB (0 when none; for a claimed batch, from its claim).",
            ),
            GaugeMetricFamily("cdc_outbox_up", "1 when the backlog could be read from PostgreSQL, else 0."),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        backlog, age, up = self._families()
        waiting = self._read()
        if waiting is not None:
            backlog.add_metric([], waiting.changes)
            age.add_metric([], waiting.oldest_age_s)
            yield backlog
            yield age
        up.add_metric([], 1 if waiting is not None else 0)
        yield up

    def close(self) -> None:
        self._read.close()


def _backlog_error(reason: str) -> None:
    log.warning("metrics: cannot read the outbox backlog: %s", reason, extra={"action": "metrics_backlog"})


class Metrics:
    """The worker's metrics on their own ``CollectorRegistry``; ``dsn`` adds the backlog gauges."""

    def __init__(self, dsn: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.exported = Counter(
            "cdc_changes_exported", "Changes written to archive batches.", ["table"], registry=self.registry
        )
        self.applied = Counter("cdc_changes_applied", "Changes written to MongoDB.", ["table"], registry=self.registry)
        self.stale = Counter(
            "cdc_changes_stale",
            "Changes skipped: MongoDB already held a newer position.",
            ["table"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "cdc_changes_rejected",
            "Rows that could not be carried, quarantined in rejected.jsonl.",
            ["table"],
            registry=self.registry,
        )
        self.retries = Counter(
            "cdc_mongo_retries",
            "MongoDB writes (bulk writes, truncates, applied marks) retried after a transient error.",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "cdc_batch_duration_seconds",
            "Seconds per batch and phase (export: claim and archive; apply: write to MongoDB).",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.last_batch = Gauge(
            "cdc_last_batch_timestamp_seconds", "Unix time the last batch was applied.", registry=self.registry
        )
        self.last_success = Gauge(
            "cdc_last_success_timestamp_seconds",
            "Unix time the worker last drained the outbox without an error.",
            registry=self.registry,
        )
        self.outbox: OutboxCollector | None = None
        if dsn is not None:
            self.outbox = OutboxCollector(dsn)
            self.registry.register(self.outbox)
        self._server: WSGIServer | None = None

    # ---- what the worker reports ---------------------------------------------------------------
    def batch_exported(self, exported: ExportedBatch) -> None:
        for table, total in changes_by_table(exported.counts, "upsert", "delete").items():
            self.exported.labels(table).inc(total)
        for table, total in changes_by_table(exported.counts, "rejected").items():
            self.rejected.labels(table).inc(total)
        self.batch_seconds.labels("export").observe(exported.seconds)

    def batch_applied(self, stats: ApplyStats, seconds: float) -> None:
        for table, total in applied_by_table(stats.by_collection).items():
            self.applied.labels(table).inc(total)
        for table, total in changes_by_table(stats.by_collection, "stale").items():
            self.stale.labels(table).inc(total)
        self.batch_seconds.labels("apply").observe(seconds)
        self.last_batch.set(time.time())

    def drained(self) -> None:
        self.last_success.set(time.time())

    def retried(self) -> None:
        self.retries.inc()

    # ---- exposition ---------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP from a daemon thread; returns the port (``0`` picks a free one)."""
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        bound = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound, extra={"action": "metrics_serve"})
        return bound

    def write_textfile(self, path: Path) -> None:
        """Write the metrics for node-exporter's textfile collector (a temporary file, then a rename)."""
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot write the metrics to {path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.outbox is not None:
            self.outbox.close()
