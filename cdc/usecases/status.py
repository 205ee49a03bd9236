"""`cdc status`'s use case: what PostgreSQL and MongoDB say of the pipeline, and what is wrong.

``read`` needs PostgreSQL only: a server that is down is part of the report, with why."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cdc.capture import hierarchy
from cdc.capture import install as capture
from cdc.infra import pg
from cdc.infra.config import Settings
from cdc.infra.errors import CdcError, ConfigError, PostgresUnavailable, ServerDown, UsageError
from cdc.ledger import queries as ledger
from cdc.runtime import rebuild
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import APPLIED_COLLECTION

STALLED_INTERVALS = 3  # a running worker that has completed no cycle for more intervals than this is stuck


@dataclass
class Report:
    """``fields``: what `cdc status` prints, in order; ``down``: why a configured server is down."""

    fields: dict[str, Any]
    down: list[str] = field(default_factory=list)

    def problems(self, *, max_backlog: int | None = None, max_lag: float | None = None) -> list[str]:
        """What makes `cdc status` exit 1: a server down, lost triggers, partitions out of step, a
        worker whose last cycle failed or that has completed none for more than three intervals, or a
        backlog or lag past its threshold."""
        report = self.fields
        problems = list(self.down)
        if report.get("tables_missing_triggers"):
            problems.append("captured tables lost their triggers: " + ", ".join(report["tables_missing_triggers"]))
        problems.extend(report.get("hierarchy_problems", []))
        problems.extend(report.get("migration_problems", []))
        problems.extend(_worker_problems(report))
        if max_backlog is not None and report.get("backlog_changes", 0) > max_backlog:
            problems.append(f"backlog {report['backlog_changes']} > {max_backlog}")
        if max_lag is not None and report.get("oldest_change_age_s", 0) > max_lag:
            at_least = "at least " if report["oldest_change_age_is_lower_bound"] else ""
            problems.append(f"lag {at_least}{report['oldest_change_age_s']:.1f}s > {max_lag}s")
        return problems


def _worker_problems(report: dict[str, Any]) -> list[str]:
    """The worker's last cycle failed; or a `cdc run` holds the lock and completed no cycle (and
    applied no batch) for more than three intervals."""
    if report.get("worker_last_cycle") == "failing":
        since = report.get("worker_failing_since") or "?"
        return [f"the worker has been failing since {since}: {report.get('worker_error') or 'an unknown error'}"]
    interval, age = report.get("worker_interval_s"), report.get("worker_progress_age_s")
    if report.get("worker_running") and interval and age is not None and age > STALLED_INTERVALS * interval:
        shown = f"{age:.0f}" if age >= 10 else f"{age:.1f}"
        return [f"no cycle completed for {shown} s (interval {interval:g} s)"]
    return []


def read(settings: Settings) -> Report:
    """Both servers' state and what they know, with the time of the check."""
    fields, pg_down = _source_status(settings)
    target, target_down = _target_status(settings)
    fields.update(target)
    fields["checked_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    return Report(fields, [down for down in (pg_down, target_down) if down])


def _iso(value: object) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


def _seconds(value: Any) -> float | None:
    """An age in seconds (PostgreSQL's ``extract(epoch …)`` is a numeric), to the millisecond."""
    return round(float(value), 3) if value is not None else None


def _ledger_status(conn: Any) -> dict[str, Any]:
    """What PostgreSQL knows: the backlog, the ledger's last batches, the worker, the captured tables."""
    waiting = ledger.backlog(conn)
    row = ledger.last_batches(conn)
    tables_state = capture.captured_tables(conn)
    return {
        "backlog_changes": waiting.changes,
        "outbox_statements": waiting.outbox_statements,
        "outbox_changes": waiting.outbox_changes,
        "unapplied_batches": waiting.batches,
        "unapplied_batch_changes": waiting.batch_changes,
        "oldest_change_age_s": round(waiting.oldest_age_s, 3),
        "oldest_change_age_is_lower_bound": waiting.age_is_lower_bound,
        "last_exported_batch": row[0],
        "last_exported_mode": row[1],
        "last_exported_at": _iso(row[2]),
        "last_exported_age_s": _seconds(row[3]),
        "last_applied_batch": row[4],
        "last_applied_at": _iso(row[5]),
        "last_applied_age_s": _seconds(row[6]),
        "worker_running": bool(row[7]),
        **_worker_fields(ledger.worker_state(conn)),
        "tables": len(tables_state),
        "tables_missing_triggers": [f"{t.schema}.{t.name}" for t in tables_state if not t.healthy],
        # partitions or children out of step with capture, dropped members: each with what to run
        "hierarchy_problems": hierarchy.problems(conn),
        # migrations: what the worker cannot follow by itself (a table without a primary key, a mapping
        # a migration broke, a dropped table), and the rebuilds under way
        "migration_problems": rebuild.problems(conn) + ledger.follow_problems(conn),
        "rebuilding": [progress.line() for progress in rebuild.progress(conn)],
    }


def _worker_fields(state: ledger.WorkerState | None) -> dict[str, Any]:
    """What `cdc run` recorded of its cycles (all None before any, or on an install older than the
    record). ``worker_progress_age_s``: seconds since the running `cdc run` started, ended a cycle or
    applied a batch; None unless the worker that holds the lock is the one that recorded."""
    if state is None:
        state = ledger.WorkerState(None, None, None, None, None, None, None, False, None)
    return {
        "worker_last_cycle": state.last_cycle,
        "worker_last_cycle_at": _iso(state.last_cycle_at),
        "worker_last_ok_at": _iso(state.last_ok_at),
        "worker_failing_since": _iso(state.failing_since),
        "worker_error": state.error,
        "worker_interval_s": state.interval_s,
        "worker_started_at": _iso(state.started_at),
        "worker_progress_age_s": state.progress_age_s if state.holds_lock else None,
    }


def _source_status(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """PostgreSQL's state and what it knows; the second item says why it is down or not configured."""
    try:
        dsn = settings.pg_dsn()
    except ServerDown as exc:
        return {"postgresql": "down"}, str(exc)
    except UsageError:
        raise
    except ConfigError as exc:
        return {"postgresql": "not configured"}, str(exc)
    try:
        with pg.connect(dsn, connect_timeout=10) as conn:
            capture.require_installed(conn)
            return {"postgresql": "up", **_ledger_status(conn)}, None
    except PostgresUnavailable as exc:
        return {"postgresql": "down"}, str(exc)


def _target_status(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """MongoDB's state and its own record of applied batches (`cdc replay` writes only there); the
    second item says why a configured MongoDB is down."""
    try:
        uri = settings.mongo_uri()
    except ServerDown as exc:
        return {"mongodb": "down"}, str(exc)
    except ConfigError:
        return {"mongodb": "not configured"}, None
    try:
        client = mongo.client(uri, timeout_ms=3_000)
    except CdcError as exc:
        return {"mongodb": "down"}, str(exc)
    try:
        with mongo.translated("reading the target's record of applied batches"):
            last = client[settings.mongo_db][APPLIED_COLLECTION].find_one({}, sort=[("_id", -1)])
    except CdcError as exc:
        return {"mongodb": "down"}, str(exc)
    finally:
        client.close()
    applied_at = last.get("applied_at") if last else None
    return {
        "mongodb": "up",
        "target_last_applied_batch": int(last["_id"]) if last else None,
        "target_last_applied_at": _iso(applied_at),
        "target_last_applied_age_s": (
            _seconds((dt.datetime.now(dt.UTC) - applied_at).total_seconds())
            if isinstance(applied_at, dt.datetime)
            else None
        ),
    }, None
