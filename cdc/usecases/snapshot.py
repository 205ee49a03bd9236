"""`cdc snapshot`'s use case, shared with the demo: enqueue every key of the chosen collections
(continuing an interrupted snapshot of the same kind), then apply them with a worker, or with
``export_only`` drain them into archive batches for ``mongoimport``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from cdc.capture import install as capture
from cdc.capture import row_security
from cdc.export import batch as export
from cdc.export import snapshot, snapshot_resume
from cdc.export.snapshot import Target
from cdc.infra import pg
from cdc.infra.errors import CdcError, ConfigError, Interrupted, PostgresError
from cdc.infra.progress import Progress, track
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks import epoch
from cdc.sinks.base import Sink

if TYPE_CHECKING:
    from cdc.runtime.metrics import Metrics

# its progress lines keep the command's logger name, what users filter on
log = logging.getLogger("cdc.commands.snapshot")


@dataclass
class Exported:
    batches: list[int] = field(default_factory=list)
    changes: int = 0
    rejected: int = 0


def export_enqueued(
    dsn: str, archive_dir: Path, *, batch_size: int, stop: threading.Event, progress: Progress | None = None
) -> Exported:
    """Drain the outbox, up to its head now, into archive batches in ``export`` mode (``cdc export``'s
    way: no MongoDB). Stops between batches when ``stop`` is set."""
    result = Exported()
    conn = export.drain_connection(dsn)
    try:
        export.recover_partials(conn, archive_dir)
        head = ledger.outbox_head(conn)
        conn.commit()
        while not stop.is_set():
            batch = export.export_batch(conn, archive_dir, batch_size=batch_size, up_to=head)
            if batch is None:
                break
            result.batches.append(batch.batch_id)
            result.changes += batch.changes
            result.rejected += batch.rejected
            if progress is not None:
                progress.update(batch.changes)
    finally:
        conn.close()
    return result


@dataclass
class Outcome:
    """What a snapshot did: keys enqueued into ``collections``; then either applied in ``applied``
    batches, handed to the running worker (``handed_over``), or exported (``exported``)."""

    collections: int
    keys: int
    applied: int = 0
    rejected: int = 0
    handed_over: bool = False
    exported: Exported | None = None
    stale: int = 0  # writes refused as stale (MongoDB held a version at least as new)
    swept: int = 0  # documents of rows gone removed at the end (a whole snapshot, applied here)
    own: tuple[int, int] = (0, 0)  # (writes, stale) of the batches this snapshot claimed


SWEEP_WAIT_S = 10  # how long a snapshot waits for the transactions open at its start before its pages


class Snapshot:
    """One snapshot run into ``sink`` (MongoDB); None: export only (archive batches, no target).
    ``notice`` gets the lines meant for the user while it runs (a continued snapshot); ``metrics`` and
    ``batch_log_level`` go to its worker. When another worker holds the lock, the keys are left to it,
    unless ``wait_for_lock``."""

    def __init__(
        self,
        dsn: str,
        archive_dir: Path,
        sink: Sink | None,
        *,
        batch_size: int = snapshot.BATCH_SIZE,
        stop: threading.Event | None = None,
        notice: Callable[[str], None] = lambda _line: None,
        metrics: Metrics | None = None,
        batch_log_level: int = logging.INFO,
        wait_for_lock: bool = False,
    ) -> None:
        self.dsn = dsn
        self.archive_dir = archive_dir
        self.sink = sink
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.notice = notice
        self.metrics = metrics
        self.batch_log_level = batch_log_level
        self.wait_for_lock = wait_for_lock
        self.mode = "export" if sink is None else "apply"
        self.chosen: list[Target] = []  # known once ``run`` has read the catalog
        # a position drawn before the first page of a snapshot that starts afresh: once every page is
        # applied, a document below it is one of a row that is gone (deleted while nothing captured it:
        # between an uninstall and an install, before the first install)
        self.sweep_below: int | None = None

    def run(self, names: Sequence[str] | None = None, *, restart: bool = False) -> Outcome:
        """Raises ``Interrupted`` when stopped between pages or batches (``left`` says what is left)."""
        with pg.connect(self.dsn) as conn:
            capture.require_installed(conn)
            # before this snapshot takes a position or a batch id (a re-install; export only: the archive's)
            epoch.align(self.dsn, self.sink, self.archive_dir)
            if self.sink is None and ledger.worker_running(conn):
                raise ConfigError(
                    "a `cdc run` worker is running: it drains this outbox into MongoDB, so run `cdc snapshot`"
                    " without --export-only"
                )
            conn.commit()
            self.chosen = snapshot.targets(conn, names)
            read = [t.table for t in self.chosen] + [n.table for t in self.chosen if t.mapped for n in t.mapped.nodes()]
            row_security.refuse(conn, read, "a snapshot would silently leave out the rows it cannot see")
            keys, fast = self._enqueue(conn, restart=restart)
        if self.sink is not None and self.sweep_below is not None:
            self._leave_sweeps(self.sweep_below, fast)
        outcome = Outcome(len(self.chosen), keys)
        if self.sink is None:
            outcome.exported = self._export()
        else:
            self._apply(self.sink, outcome, fast)
        if not outcome.handed_over:
            self._stopped()
        with pg.connect(self.dsn) as conn:
            snapshot_resume.forget(conn, self.chosen)  # done, or every key enqueued for the running worker
        if self.sink is not None:
            epoch.refuse_mostly_stale(*outcome.own, sink=self.sink)
        return outcome

    def left(self) -> str:
        """What an interrupted snapshot leaves (one line)."""
        try:
            with pg.connect(self.dsn, connect_timeout=10) as conn:
                return snapshot_resume.describe_left(conn, self.chosen, self.mode)
        except CdcError as exc:
            return f"what is left could not be read ({exc})"

    def _stopped(self) -> None:
        if self.stop.is_set():
            raise Interrupted()

    def _enqueue(self, conn: psycopg.Connection[Any], *, restart: bool) -> tuple[int, set[str]]:
        """Enqueue the snapshot's keys, continuing an interrupted snapshot of the same kind."""
        plan = None
        why_not = snapshot_resume.can_record(conn)
        if why_not is not None:
            log.warning("this snapshot cannot resume if it is interrupted: %s", why_not)
        else:
            plan = snapshot_resume.plan_resume(conn, self.chosen, self.mode, restart=restart)
            for line in plan.restarted:
                log.warning("%s", line)
            if plan.resuming:
                since = min(step.started_at for step in plan.resumed.values())
                finished = sum(1 for step in plan.resumed.values() if step.done)
                self.notice(
                    f"continuing the snapshot interrupted since {since:%Y-%m-%d %H:%M:%S} ({finished} of "
                    f"{len(plan.resumed)} tables already fully enqueued; --restart starts over)"
                )
        if (plan is None or not plan.resuming) and self._anything_to_sweep():
            self.sweep_below = self._sweep_position(conn)
        with track("enqueue", unit="keys", scale=True, logger=log) as progress:
            return snapshot.prepare_targets(conn, self.sink, self.chosen, progress, plan=plan, stop=self.stop)

    def _anything_to_sweep(self) -> bool:
        """Whether a collection of this snapshot holds documents already (none to sweep in an empty one,
        and none without MongoDB: --export-only)."""
        if self.sink is None:
            return False
        collections = [target.collection for target in self.chosen]
        return bool(set(collections) - self.sink.empty_collections(collections))

    def _sweep_position(self, conn: psycopg.Connection[Any]) -> int | None:
        """The position below which, once every page is applied, a document is one of a row that is gone;
        None when it cannot be known (then nothing is swept).

        A transaction open now may have changed a row under a position below this one and commit after
        the row's page was read (an insert the page did not see): the pages start only once every
        transaction open now has ended, so that change is read by a page. One that stays open longer
        than ``SWEEP_WAIT_S`` turns the sweep off for this snapshot (said in one line)."""
        with pg.translated("taking the snapshot's start position"):
            below = ledger.draw_position(conn)
            open_now = ledger.writers_in_progress(conn)
            conn.commit()
            deadline = time.monotonic() + SWEEP_WAIT_S
            while (still := ledger.writers_still_open(conn, open_now)) and time.monotonic() < deadline:
                conn.commit()
                if self.stop.wait(0.05):
                    raise Interrupted()
            conn.commit()
        if still:
            log.warning(
                "%d transactions open since before the snapshot started are still open after %d s: documents"
                " of rows deleted while nothing captured them are not removed by this snapshot"
                " (`cdc verify --repair` removes them)",
                still,
                SWEEP_WAIT_S,
            )
            return None
        return below

    def _leave_sweeps(self, below: int, fast: set[str]) -> None:
        """Once every page is applied, the worker that applies them (this snapshot's, or the running
        one) removes each collection's documents below ``below`` (``Worker._sweep``). Not for collections
        empty at the start (nothing older there). A ledger without ``cdc.sweeps``, or a role that may not
        write it: nothing is swept, said in one line."""
        try:
            with pg.connect(self.dsn) as conn, pg.translated("leaving the snapshot's sweeps to the worker"):
                head = ledger.outbox_head(conn)
                for target in self.chosen:
                    if target.collection not in fast:
                        ledger.request_sweep(conn, target.collection, below, head)
                conn.commit()
        except PostgresError as exc:
            if exc.transient:
                raise
            log.warning("documents of rows gone are not removed by this snapshot: %s", exc)

    def _export(self) -> Exported:
        """--export-only: drain what was enqueued into archive batches (``export`` mode), no MongoDB."""
        with pg.connect(self.dsn) as conn:
            waiting = ledger.backlog(conn).outbox_changes
        with track("export", total=waiting, unit="keys", scale=True, logger=log) as progress:
            return export_enqueued(
                self.dsn, self.archive_dir, batch_size=self.batch_size, stop=self.stop, progress=progress
            )

    def _apply(self, sink: Sink, outcome: Outcome, fast: set[str]) -> None:
        """Apply what was enqueued (and what an interrupted snapshot left) up to the outbox head now;
        when a running worker holds the lock, leave it to that worker."""
        worker = Worker(
            self.dsn,
            sink,
            self.archive_dir,
            batch_size=self.batch_size,
            stop=self.stop,
            metrics=self.metrics,
            batch_log_level=self.batch_log_level,
        )
        if not worker.acquire(wait=self.wait_for_lock):
            outcome.handed_over = not self.stop.is_set()
            return
        try:
            with pg.connect(self.dsn) as conn:
                waiting = ledger.backlog(conn).changes
            with track("apply", total=waiting, unit="keys", scale=True, logger=log) as progress:
                worker.cycle(up_to=0, progress=progress)  # first what earlier runs left pending
                before = worker.stats.changes, worker.stats.stale
                worker.cycle_to_head(fast_insert=fast, progress=progress)
        finally:
            worker.release()
        outcome.applied, outcome.rejected = worker.stats.batches, worker.stats.rejected
        outcome.swept = worker.stats.swept
        outcome.stale = worker.stats.stale
        outcome.own = worker.stats.changes - before[0], worker.stats.stale - before[1]
