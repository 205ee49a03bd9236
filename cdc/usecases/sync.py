"""Syncing: one pass (take the worker lock, apply everything up to the outbox position seen now,
release), and the long-running worker of `cdc run`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from cdc.infra.progress import Progress
from cdc.runtime.run_summary import SUMMARY_EVERY_S, RunStats
from cdc.runtime.worker import Worker
from cdc.sinks.base import Sink
from cdc.sinks.epoch import AligningLock


def sync_once(
    worker: Worker, *, wait: bool = True, fast_insert: Collection[str] = (), progress: Progress | None = None
) -> bool:
    """Apply everything up to the outbox position seen now (``progress`` told each batch's changes;
    ``fast_insert``: collections known empty). False when the lock was not taken (another worker
    holds it and ``wait`` is False, or a stop was requested)."""
    if not worker.acquire(wait=wait):
        return False
    try:
        worker.cycle_to_head(fast_insert=fast_insert, progress=progress)
    finally:
        worker.release()
    return True


def run_worker(
    dsn: str,
    make_sink: Callable[[Callable[[], None] | None], Sink],
    archive_dir: Path,
    *,
    interval: float,
    listen: bool,
    once: bool,
    batch_size: int,
    stop: threading.Event,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    metrics_textfile: Path | None = None,
) -> RunStats:
    """`cdc run`: the worker loop until ``stop`` (or, ``once``, until the outbox position seen at start).

    ``make_sink(on_retry)`` builds the target, its retries counted when metrics are asked for. Each
    time the worker takes its lock, positions move past what the target holds (``AligningLock``).
    Per-batch lines are debug lines; a summary line every ``SUMMARY_EVERY_S`` instead. With
    ``metrics_textfile`` (``once``), the metrics are written there when the run succeeds, not when it
    is stopped: the previous file stays, and its last-success time keeps ageing."""
    metrics = None
    if metrics_port is not None or metrics_textfile is not None:
        from cdc.runtime.metrics import Metrics  # noqa: PLC0415 (prometheus_client only when asked for)

        metrics = Metrics(dsn)
    try:
        if metrics is not None and metrics_port is not None:
            metrics.serve(metrics_host, metrics_port)
        sink = make_sink(metrics.retried if metrics is not None else None)
        worker = Worker(
            dsn,
            sink,
            archive_dir,
            batch_size=batch_size,
            stop=stop,
            metrics=metrics,
            batch_log_level=logging.DEBUG,
            summary_every=SUMMARY_EVERY_S,
            lock=AligningLock(dsn, stop, sink, archive_dir),
        )
        stats = worker.run(interval=interval, listen=listen, once=once)
        if metrics is not None and metrics_textfile is not None and not stop.is_set():
            metrics.write_textfile(metrics_textfile)
    finally:
        if metrics is not None:
            metrics.close()
    return stats
