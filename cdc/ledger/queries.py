"""The ledger: the one owner of the SQL on ``cdc.outbox``, ``cdc.batches``, ``cdc.batch_changes``,
``cdc.snapshot_progress`` and ``cdc.worker_state`` (named blocks in ``schema/ledger.sql``), of batch
states and of the advisory lock keys.

Readers never commit: their callers end the transaction (a REPEATABLE READ connection must, before
its next claim reads a fresh snapshot). Writers run in the caller's transaction, except
``mark_applied``, which is a transaction of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
import psycopg
from psycopg import sql

from cdc.infra import pg, sqlfiles
from cdc.infra.errors import CdcError
from cdc.infra.redact import redact

# Advisory locks (pg_advisory_lock): the worker's (two-int form, so objsubid = 2 in pg_locks), the
# exporters' turn, and install/reconcile.
# The channel a capture trigger notifies after writing the outbox, and the worker LISTENs on.
NOTIFY_CHANNEL = "cdc_outbox"
WORKER_LOCK = (0x0CDC, 3)
EXPORT_LOCK_KEY = 0x0CDC_0002
INSTALL_LOCK_KEY = 0x0CDC_0001


class Mode(StrEnum):
    """Who claimed a batch: ``cdc export`` (final once archived) or ``cdc run`` (applied later)."""

    EXPORT = "export"
    RUN = "run"
    SNAPSHOT = "snapshot"  # allowed by the schema; snapshots claim as ``run``


class State(StrEnum):
    CLAIMED = "claimed"
    EXPORTED = "exported"
    APPLIED = "applied"


@dataclass(frozen=True)
class BatchInfo:
    batch_id: int
    mode: Mode
    state: State
    pos_min: int | None
    pos_max: int | None
    version: int  # what its mapped documents carry (pos_max for a batch claimed before versions)


@dataclass(frozen=True)
class Claim:
    batch_id: int
    positions: list[int]
    keys: int
    # every outbox change visible in the claim's snapshot was claimed (the batch size and the head
    # position did not cut it): applied after the batches before it, the target is PostgreSQL at
    # ``snapshot_at`` (the snapshot's time on PostgreSQL's clock; ``snapshot``: its pg_snapshot)
    complete: bool
    snapshot_at: dt.datetime
    snapshot: str


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
    return sqlfiles.run(conn, "ledger.sql", name, params)


def draw_position(conn: psycopg.Connection[Any]) -> int:
    """A position drawn now, in the caller's transaction (a sequence value is never given back)."""
    row = _run(conn, "draw_position").fetchone()
    assert row is not None
    return int(row[0])


def request_sweep(conn: psycopg.Connection[Any], collection: str, below: int, after: int) -> None:
    """In the caller's transaction: once every change up to ``after`` is applied, the running worker
    removes the documents of ``collection`` below ``below`` (a snapshot it was left to apply)."""
    _run(conn, "request_sweep", {"collection": collection, "below": below, "after": after})


def sweeps_readable(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``cdc.sweeps`` exists and this role may read and delete its rows. A reader."""
    row = _run(conn, "sweeps_readable").fetchone()
    return bool(row and row[0])


def due_sweeps(conn: psycopg.Connection[Any]) -> list[tuple[str, int, bool]]:
    """(collection, below, rows of it rejected meanwhile) of the sweeps whose pages are all applied."""
    return [(str(row[0]), int(row[1]), bool(row[2])) for row in _run(conn, "due_sweeps").fetchall()]


def forget_sweep(conn: psycopg.Connection[Any], collection: str, below: int) -> None:
    _run(conn, "forget_sweep", {"collection": collection, "below": below})


def writers_in_progress(conn: psycopg.Connection[Any]) -> list[str]:
    """The ids of the transactions in progress now (writers), for ``writers_still_open``. A reader."""
    row = _run(conn, "writers_in_progress").fetchone()
    return [str(xid) for xid in row[0]] if row and row[0] else []


def writers_still_open(conn: psycopg.Connection[Any], xids: Sequence[str]) -> int:
    """How many of the transactions ``xids`` are still open. A reader."""
    if not xids:
        return 0
    row = _run(conn, "writers_still_open", {"xids": list(xids)}).fetchone()
    return int(row[0]) if row else 0


def outbox_head(conn: psycopg.Connection[Any]) -> int:
    """The highest position in the outbox now (0 when empty). A reader: the caller ends the transaction."""
    with pg.translated("reading the outbox"):
        row = _run(conn, "outbox_head").fetchone()
    return int(row[0]) if row else 0


def claim(conn: psycopg.Connection[Any], batch_size: int, up_to: int, mode: Mode | str) -> Claim | None:
    """In the caller's transaction: lock the oldest outbox rows up to ``up_to`` until they hold
    ``batch_size`` keys (at least one row: one statement may hold a million keys), and move them
    into a new batch. None when there is nothing to claim."""
    candidates = _run(conn, "claim_candidates", {"up_to": up_to, "limit": batch_size}).fetchall()
    if not candidates:
        return None
    chosen, keys = [], 0
    for pos, count in candidates:  # bounded by keys, not rows
        chosen.append(int(pos))
        keys += int(count)
        if keys >= batch_size:
            break
    row = _run(conn, "next_batch_id").fetchone()
    assert row is not None
    batch_id = int(row[0])
    _run(
        conn,
        "insert_batch",
        {"batch": batch_id, "mode": str(mode), "pos_min": chosen[0], "pos_max": chosen[-1], "keys": keys},
    )
    _run(conn, "move_claimed", {"positions": chosen, "batch": batch_id})
    row = _run(conn, "claim_completeness", {"batch": batch_id}).fetchone()
    assert row is not None
    return Claim(batch_id, chosen, keys, bool(row[0]), row[1], str(row[2]))


def give_back_batch_id(conn: psycopg.Connection[Any], batch_id: int) -> None:
    """After a claim rolled back: the next claim may take ``batch_id`` again (only claims draw ids, in
    turns, so while the sequence's last value is still ``batch_id`` nobody drew one since)."""
    _run(conn, "give_back_batch_id", {"batch": batch_id})


def mark_exported(conn: psycopg.Connection[Any], batch_id: int, counts: dict[str, dict[str, int]]) -> None:
    """In the claim's transaction: the batch is archived (its manifest written and fsynced)."""
    _run(conn, "mark_exported", {"batch": batch_id, "counts": orjson.dumps(counts).decode()})


def batch_info(conn: psycopg.Connection[Any], batch_id: int) -> BatchInfo | None:
    with pg.translated("reading the ledger"):
        row = _run(conn, "batch_info", {"batch": batch_id}).fetchone()
    if row is None:
        return None
    return BatchInfo(int(row[0]), Mode(row[1]), State(row[2]), row[3], row[4], int(row[5] or 0))


def batch_relations(conn: psycopg.Connection[Any], batch_id: int) -> list[tuple[int, list[int]]]:
    """Each relation in the batch with its truncate positions."""
    rows = _run(conn, "batch_relations", {"batch": batch_id}).fetchall()
    return [(int(relid), list(truncates)) for relid, truncates in rows]


def batch_table_keys(conn: psycopg.Connection[Any], batch_id: int, relid: int) -> list[tuple[int, str]]:
    """(position, key text) of every change of ``relid`` in the batch."""
    return [(int(pos), str(key)) for pos, key in _run(conn, "batch_table_keys", {"batch": batch_id, "relid": relid})]


def changed_keys(relid: int, ops: str = "k", *, shown_only: bool = False) -> sql.Composable:
    """A query of the distinct keys (text) of ``relid`` in batch ``%(batch)s``, for composing into the
    export's statements: ops ``k`` (changes), ``r`` (snapshot root refreshes), ``t`` never; with
    ``shown_only``, leaving out UPDATEs that changed nothing an embedding document shows."""
    return sql.SQL(
        "SELECT DISTINCT k.key FROM cdc.batch_changes c CROSS JOIN LATERAL unnest(c.keys) AS k(key)"
        " WHERE c.batch_id = %(batch)s AND c.relid = {} AND c.op = ANY({}){}"
    ).format(
        sql.Literal(relid),
        sql.Literal(list(ops)),
        sql.SQL(" AND c.shown IS NOT FALSE") if shown_only else sql.SQL(""),
    )


def changed_keys_with_positions(relid: int) -> sql.Composable:
    """(key, last position) of every changed key of ``relid`` in batch ``%(batch)s``."""
    return sql.SQL(
        "SELECT k.key, max(c.pos) AS pos FROM cdc.batch_changes c CROSS JOIN LATERAL unnest(c.keys) AS k(key)"
        " WHERE c.batch_id = %(batch)s AND c.relid = {} AND c.op = 'k' GROUP BY k.key"
    ).format(sql.Literal(relid))


def old_join_values(relid: int, casts: sql.Composable) -> sql.Composable:
    """The recorded old join values of ``relid``'s changes in batch ``%(batch)s``, one row each,
    selected by ``casts`` over ``j.old`` (a jsonb text)."""
    return sql.SQL(
        "SELECT {} FROM cdc.batch_changes c CROSS JOIN LATERAL unnest(c.joins) AS j(old)"
        " WHERE c.batch_id = %(batch)s AND c.relid = {} AND c.op = 'k' AND c.shown IS NOT FALSE"
    ).format(casts, sql.Literal(relid))


def batch_ops(conn: psycopg.Connection[Any], batch_id: int) -> list[tuple[int, str]]:
    """(relid, op) pairs present in the batch."""
    rows = _run(conn, "batch_ops", {"batch": batch_id}).fetchall()
    return [(int(relid), str(op)) for relid, op in rows]


def pending_batches(conn: psycopg.Connection[Any]) -> list[int]:
    """Batches claimed for applying (run or snapshot) and not yet applied, in ledger order. A reader:
    the caller ends the transaction."""
    with pg.translated("reading the ledger"):
        rows = _run(conn, "pending_batches").fetchall()
    return [int(row[0]) for row in rows]


def committed_batches(conn: psycopg.Connection[Any], first: int | None = None, last: int | None = None) -> set[int]:
    """Batch ids the ledger committed (exported, or applied) between ``first`` and ``last``.

    A claim is committed with its export, so an id absent from here was burned by an interrupted
    claim and never held a change. A reader: the caller ends the transaction.
    """
    with pg.translated("reading the ledger"):
        rows = _run(conn, "committed_batches", {"first": first, "last": last}).fetchall()
    return {int(row[0]) for row in rows}


def mark_applied(conn: psycopg.Connection[Any], batch_id: int) -> None:
    """Applied: MongoDB acknowledged every write with w:majority. The claimed keys are released; commits."""
    with pg.translated(f"marking batch {batch_id} applied"):
        _run(conn, "mark_applied", {"batch": batch_id})
        _run(conn, "release_changes", {"batches": [batch_id]})
        conn.commit()


def release_changes(conn: psycopg.Connection[Any], batch_ids: list[int]) -> None:
    """Drop the claimed keys the ledger holds for these batches (pruned ones); in the caller's transaction."""
    _run(conn, "release_changes", {"batches": batch_ids})


def enqueue_keys(conn: psycopg.Connection[Any], relid: int, keys: list[str], op: str = "k") -> None:
    """Put keys (outbox text form) back as changes of ``relid``, read again at drain time; in the
    caller's transaction. ``op`` ``r``: a refresh of a mapped collection's roots only."""
    _run(conn, "enqueue_keys", {"relid": relid, "op": op, "keys": keys})


def enqueue_keys_at(conn: psycopg.Connection[Any], relid: int, keys: list[str], op: str = "k") -> int:
    """``enqueue_keys``, returning the position the keys were given."""
    row = _run(conn, "enqueue_keys_at", {"relid": relid, "op": op, "keys": keys}).fetchone()
    assert row is not None
    return int(row[0])


def drop_waiting_changes(conn: psycopg.Connection[Any], relid: int) -> int:
    """In the caller's transaction: drop ``relid``'s changes waiting in the outbox and in batches not yet
    applied (a re-keyed table, whose old keys no longer parse); returns how many rows went."""
    row = _run(conn, "drop_waiting_changes", {"relid": relid}).fetchone()
    return int(row[0]) if row else 0


def enqueue_truncate(conn: psycopg.Connection[Any], relid: int) -> int:
    """In the caller's transaction: a truncate marker for ``relid``; returns its position."""
    row = _run(conn, "enqueue_truncate", {"relid": relid}).fetchone()
    assert row is not None
    return int(row[0])


def waiting_up_to(conn: psycopg.Connection[Any], pos: int, *, applying: bool) -> bool:
    """Whether changes up to ``pos`` still wait (outbox, or batches not applied / not archived)."""
    with pg.translated("reading the ledger"):
        row = _run(conn, "waiting_up_to", {"pos": pos, "applying": applying}).fetchone()
    return bool(row and row[0])


def unfinished(conn: psycopg.Connection[Any]) -> int:
    """Outbox rows plus batches not applied (0: everything captured is in MongoDB)."""
    row = _run(conn, "unfinished").fetchone()
    return int(row[0]) if row else 0


def export_batches_not_loaded(conn: psycopg.Connection[Any], before: int | None = None) -> list[int]:
    """Batches of ``cdc export`` not marked loaded (or applied), optionally only those below ``before``."""
    with pg.translated("reading the ledger"):
        rows = _run(conn, "export_batches_not_loaded", {"before": before}).fetchall()
    return [int(row[0]) for row in rows]


def batches_between(conn: psycopg.Connection[Any], first: int, last: int) -> list[tuple[int, str, str]]:
    with pg.translated("reading the ledger"):
        rows = _run(conn, "batches_between", {"first": first, "last": last}).fetchall()
    return [(int(batch_id), str(mode), str(state)) for batch_id, mode, state in rows]


def mark_loaded(conn: psycopg.Connection[Any], batch_ids: list[int]) -> None:
    """Export batches loaded outside the pipeline count as applied; in the caller's transaction."""
    with pg.translated("marking batches loaded"):
        _run(conn, "mark_loaded", {"batches": batch_ids})


def prune_candidates(conn: psycopg.Connection[Any], folders: list[int]) -> list[tuple[Any, ...]]:
    """The ledger's rows of the archive's folders, and of export batches whose keys it still holds."""
    with pg.translated("reading the ledger"):
        return [tuple(row) for row in _run(conn, "prune_candidates", {"folders": folders}).fetchall()]


def last_batches(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    """(last exported id, its mode, exported_at, age s, last applied id, applied_at, age s, worker running)."""
    with pg.translated("reading the ledger"):
        row = _run(conn, "last_batches", {"lock_class": WORKER_LOCK[0], "lock_object": WORKER_LOCK[1]}).fetchone()
    assert row is not None
    return tuple(row)


@dataclass(frozen=True)
class Backlog:
    """What is captured and not yet in MongoDB.

    That is the outbox, plus the changes of batches claimed for applying (``cdc run``,
    ``cdc snapshot``) and not yet applied: a batch that takes minutes to apply is backlog until
    MongoDB acknowledged it. For ``cdc export`` an archived batch is done, so only what is not yet
    archived counts.
    """

    statements: int  # captured statements waiting: outbox rows and the unapplied batches' rows
    changes: int  # changes (keys) not yet in MongoDB
    oldest_age_s: float  # age of the oldest of them (0 when there is none)
    outbox_statements: int = 0  # of ``statements``, those still in the outbox
    outbox_changes: int = 0  # of ``changes``, those still in the outbox
    batch_changes: int = 0  # of ``changes``, those in claimed batches not yet applied
    batches: int = 0  # those batches
    age_is_lower_bound: bool = False
    """The oldest waiting change is in a claimed batch, and the ledger keeps when a batch was
    claimed, not when its changes were made: the true age is at least ``oldest_age_s``."""


def backlog(conn: psycopg.Connection[Any]) -> Backlog:
    """The backlog (``cdc status``, the demo's live line and the metrics read it).

    The age is measured from ``now()``, the transaction's start: use an autocommit connection
    (or a fresh transaction) for a live reading.
    """
    with pg.translated("reading the backlog"):
        row = _run(conn, "backlog").fetchone()
    assert row is not None
    outbox_statements, outbox_changes, outbox_age, held_statements, held_changes, batches, claim_age = row
    outbox_age_s = float(outbox_age) if outbox_age is not None else 0.0
    claim_age_s = float(claim_age) if claim_age is not None else 0.0
    return Backlog(
        statements=int(outbox_statements) + int(held_statements),
        changes=int(outbox_changes) + int(held_changes),
        oldest_age_s=max(outbox_age_s, claim_age_s, 0.0),
        outbox_statements=int(outbox_statements),
        outbox_changes=int(outbox_changes),
        batch_changes=int(held_changes),
        batches=int(batches),
        age_is_lower_bound=claim_age is not None and claim_age_s > outbox_age_s,
    )


def worker_running(conn: psycopg.Connection[Any]) -> bool:
    """Whether a worker (`cdc run`, an applying snapshot, a repair) holds the worker lock."""
    with pg.translated("looking for a running worker"):
        row = _run(conn, "worker_running", {"lock_class": WORKER_LOCK[0], "lock_object": WORKER_LOCK[1]}).fetchone()
    return bool(row and row[0])


# ---- a snapshot's progress (cdc.snapshot_progress), so that an interrupted one resumes ----------


@dataclass(frozen=True)
class SnapshotStep:
    """What is recorded for one table (and op) of a snapshot."""

    relid: int
    op: str
    mode: str  # "apply" (to MongoDB) or "export" (--export-only, into the archive)
    last_key: str | None  # the last key enqueued, as the outbox holds it
    last_pos: int | None  # the position of the last page enqueued
    keys: int
    done: bool  # every key enqueued
    started_at: Any  # a datetime


def snapshot_progress_access(conn: psycopg.Connection[Any]) -> tuple[bool, bool]:
    """(the progress table exists, this role may read and write it)."""
    with pg.translated("checking the snapshot progress table"):
        row = _run(conn, "snapshot_progress_access").fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def record_snapshot_page(  # noqa: PLR0917 (one page's facts)
    conn: psycopg.Connection[Any], relid: int, op: str, mode: str, last_key: str, pos: int, keys: int
) -> None:
    """In the page's transaction: how far the table's snapshot got."""
    _run(
        conn,
        "snapshot_page",
        {"relid": relid, "op": op, "mode": mode, "last_key": last_key, "pos": pos, "keys": keys},
    )


def record_snapshot_done(conn: psycopg.Connection[Any], relid: int, op: str, mode: str) -> None:
    """In the last (empty) page's transaction: every key of the table is enqueued."""
    _run(conn, "snapshot_table_done", {"relid": relid, "op": op, "mode": mode})


def snapshot_steps(
    conn: psycopg.Connection[Any], steps: Sequence[tuple[int, str]]
) -> dict[tuple[int, str], SnapshotStep]:
    """The recorded progress of these (relid, op) pairs. A reader: the caller ends the transaction."""
    if not steps:
        return {}
    with pg.translated("reading the snapshot progress"):
        rows = _run(
            conn, "snapshot_steps", {"relids": [relid for relid, _ in steps], "ops": [op for _, op in steps]}
        ).fetchall()
    return {
        (int(r[0]), str(r[1])): SnapshotStep(int(r[0]), str(r[1]), r[2], r[3], r[4], int(r[5]), r[6], r[7])
        for r in rows
    }


def forget_snapshot_steps(conn: psycopg.Connection[Any], steps: Sequence[tuple[int, str]]) -> None:
    """In the caller's transaction: drop the records of these (relid, op) pairs."""
    with pg.translated("clearing the snapshot progress"):
        _run(conn, "forget_snapshot_steps", {"relids": [relid for relid, _ in steps], "ops": [op for _, op in steps]})


def installed(conn: psycopg.Connection[Any]) -> bool:
    """Whether the ledger exists (capture is installed). A reader."""
    row = _run(conn, "installed").fetchone()
    return bool(row and row[0])


def discard_outbox(conn: psycopg.Connection[Any]) -> None:
    """Drop every waiting change, in the caller's transaction: for the bench's throw-away table only."""
    _run(conn, "discard_outbox")


# ---- the worker's last cycle (cdc.worker_state), which `cdc status` reports ---------------------

_log = logging.getLogger("cdc.worker")
WORKER_OK_EVERY_S = 5.0  # at most this often, an ``ok`` after an ``ok`` (a worker woken by every commit)
WORKER_ERROR_CHARS = 300


@dataclass(frozen=True)
class WorkerState:
    """What the last `cdc run` recorded of its cycles."""

    last_cycle: str | None  # "ok" or "failing"; None: no cycle ended yet
    last_cycle_at: dt.datetime | None
    last_ok_at: dt.datetime | None
    failing_since: dt.datetime | None  # the first failure of the current failing streak
    error: str | None  # the last failure's error line
    interval_s: float | None  # its --interval; None: --once
    started_at: dt.datetime | None
    holds_lock: bool  # the backend that holds the worker lock is that worker's
    progress_age_s: float | None  # seconds since its start, a cycle's end or a batch applied


def record_follow_problems(conn: psycopg.Connection[Any], problems: Sequence[str]) -> None:
    """In the caller's transaction: what the worker could not follow by itself (``cdc status`` shows it)."""
    _run(conn, "record_follow_problems", {"problems": list(problems)})


def follow_problems(conn: psycopg.Connection[Any]) -> list[str]:
    """What the worker recorded it could not follow; empty on an older install or without the right."""
    with pg.translated("reading the worker's state"):
        readable = _run(conn, "worker_state_readable").fetchone()
        if not readable or not readable[0]:
            return []
        row = _run(conn, "follow_problems").fetchone()
    return [str(line) for line in row[0]] if row and isinstance(row[0], list) else []


def worker_state(conn: psycopg.Connection[Any]) -> WorkerState | None:
    """The worker's record; None when there is none, or when the table is missing (an install made
    before it: `cdc install` adds it) or this role may not read it. A reader."""
    with pg.translated("reading the worker's state"):
        readable = _run(conn, "worker_state_readable").fetchone()
        if not readable or not readable[0]:
            return None
        row = _run(conn, "worker_state", {"lock_class": WORKER_LOCK[0], "lock_object": WORKER_LOCK[1]}).fetchone()
    if row is None:
        return None
    last_cycle, last_cycle_at, last_ok_at, failing_since, error, interval_s, started_at, holds, age = row
    return WorkerState(
        last_cycle,
        last_cycle_at,
        last_ok_at,
        failing_since,
        error,
        float(interval_s) if interval_s is not None else None,
        started_at,
        bool(holds),
        round(float(age), 3) if age is not None else None,
    )


def error_line(exc: BaseException) -> str:
    """A failure as one short, password-free line (the error classes already redact)."""
    if isinstance(exc, psycopg.Error):
        text = pg.describe(exc)
    elif isinstance(exc, CdcError):
        text = str(exc) or type(exc).__name__
    else:
        text = f"{type(exc).__name__}: {exc}"
    line = redact(" ".join(text.split()))
    return line if len(line) <= WORKER_ERROR_CHARS else line[: WORKER_ERROR_CHARS - 1] + "…"


def _worker_state_session(conn: psycopg.Connection[Any]) -> None:
    _run(conn, "worker_state_session")


class CycleLog:
    """`cdc run`'s record of its cycles in ``cdc.worker_state``, which `cdc status` reports.

    It writes on a small autocommit connection of its own, never on the worker's REPEATABLE READ one
    (whose transactions belong to the claims), opened when first needed and again after it broke.
    It never raises: a record that cannot be written (PostgreSQL down, an install older than the
    table, a role without the grant) is skipped, and the next one writes. After an ``ok``, the next
    ``ok`` is written only once ``min(interval / 2, 5 s)`` has passed. Once ``stop`` is set, nothing
    is recorded: a cycle cut short by a stop neither succeeded nor failed.
    """

    def __init__(
        self, dsn: str, interval_s: float | None, lock_pid: Callable[[], int | None], stop: threading.Event
    ) -> None:
        """``interval_s``: the worker's --interval (None: --once); ``lock_pid``: the backend that holds
        its lock now (it changes when the lock is taken again)."""
        self.dsn = dsn
        self.interval_s = interval_s
        self.lock_pid = lock_pid
        self.stop = stop
        self._ok_every = min(interval_s / 2, WORKER_OK_EVERY_S) if interval_s else 0.0
        # a small autocommit connection of its own, opened when first needed and again after it broke
        self._session = pg.Reconnecting(dsn, autocommit=True, connect_timeout=5, configure=_worker_state_session)
        self._failing_since: dt.datetime | None = None
        self._ok_written_at: float | None = None  # monotonic

    def started(self) -> None:
        """The worker took the lock."""
        self._write("worker_started", {})

    def watch(self, cycle: Callable[[], object]) -> None:
        """Run ``cycle`` and record how it ended; its exception is recorded, then raised again."""
        try:
            cycle()
        except Exception as exc:
            self.failed(exc)
            raise
        self.ok()

    def ok(self) -> None:
        """A cycle succeeded."""
        if self.stop.is_set():
            return
        self._failing_since = None
        now = time.monotonic()
        if self._ok_written_at is not None and now - self._ok_written_at < self._ok_every:
            return
        if self._write("worker_cycle_ok", {}):
            self._ok_written_at = now

    def failed(self, exc: BaseException) -> None:
        """A cycle failed with ``exc``."""
        if self.stop.is_set():
            return
        if self._failing_since is None:
            self._failing_since = dt.datetime.now(dt.UTC)
        self._ok_written_at = None
        self._write("worker_cycle_failed", {"since": self._failing_since, "error": error_line(exc)})

    def close(self) -> None:
        self._session.close()

    def _write(self, name: str, params: dict[str, Any]) -> bool:
        try:
            _run(self._session.get(), name, {"pid": self.lock_pid(), "interval": self.interval_s, **params})
        except (CdcError, psycopg.Error) as exc:
            _log.debug("the worker's last cycle was not recorded: %s", error_line(exc))
            return False
        return True


# ---- positions and batch ids moved past what the target holds (cdc.sinks.epoch) ------------------------


@dataclass(frozen=True)
class SequenceHeads:
    position: int  # the last position drawn (0: none yet)
    batch: int  # the last batch id drawn
    may_move: bool  # this role may setval both sequences


@dataclass(frozen=True)
class Moved:
    """What ``move_past`` did: each sequence's last value before and after, and how many waiting
    changes (outbox rows, changes of batches not applied) were given new positions."""

    position: tuple[int, int]
    batch: tuple[int, int]
    renumbered: int


def sequence_heads(conn: psycopg.Connection[Any]) -> SequenceHeads:
    """A reader: the caller ends the transaction."""
    with pg.translated("reading cdc.position_seq and cdc.batch_seq"):
        row = _run(conn, "sequence_heads").fetchone()
    assert row is not None
    return SequenceHeads(int(row[0]), int(row[1]), bool(row[2]))


def move_past(conn: psycopg.Connection[Any], version: int, batch: int) -> Moved | None:
    """Make every position drawn from now on larger than ``version`` and every batch id larger than
    ``batch``; a transaction of its own, which commits. None when both sequences were past already.

    Changes taken below ``version`` and not yet applied (the outbox, batches claimed for applying)
    are moved up by one amount, in order, past ``version``, under a lock that holds capture and
    claims until the commit; a batch so moved no longer matches its archive folder, and is exported
    again from its keys."""
    with pg.translated("moving positions past what the target holds"):
        _run(conn, "short_lock_wait")
        _run(conn, "lock_outbox")
        if sweeps_readable(conn):
            _run(conn, "forget_sweeps")
        heads = sequence_heads(conn)
        if heads.position >= version and heads.batch >= batch:
            conn.rollback()
            return None
        position, renumbered = heads.position, 0
        if heads.position < version:
            low, high = _run(conn, "unapplied_positions").fetchone() or (None, None)
            shift = 0
            if low is not None and high is not None and int(low) <= version:
                shift = max(version, int(high)) + 1 - int(low)
                renumbered = _run(conn, "renumber_outbox", {"shift": shift}).rowcount
                renumbered += _run(conn, "renumber_unapplied_changes", {"shift": shift}).rowcount
                _run(conn, "renumber_unapplied_batches", {"shift": shift})
                # where a snapshot or a rebuild got to: compared with the positions still waiting
                if snapshot_progress_access(conn) == (True, True):
                    _run(conn, "renumber_snapshot_progress", {"shift": shift, "low": int(low)})
                if (writable := _run(conn, "rebuilds_writable").fetchone()) and writable[0]:
                    _run(conn, "renumber_rebuilds", {"shift": shift, "low": int(low)})
            position = max(version, heads.position + shift)
            _run(conn, "move_position_seq", {"value": position})
        if heads.batch < batch:
            _run(conn, "move_batch_seq", {"value": batch})
        conn.commit()
    return Moved((heads.position, position), (heads.batch, max(heads.batch, batch)), renumbered)


def install_identity(conn: psycopg.Connection[Any]) -> int | None:
    """Which install of capture this is: the oid of ``cdc.position_seq`` (None: not installed). A reader."""
    with pg.translated("reading which install of capture this is"):
        row = _run(conn, "install_identity").fetchone()
    return int(row[0]) if row and row[0] is not None else None
