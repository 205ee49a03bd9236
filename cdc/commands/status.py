"""`cdc status`: backlog, lag, last batches, worker, servers and captured tables."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import click
import orjson

from cdc import capture, hierarchy, ledger, mongo, pg
from cdc.apply import APPLIED_COLLECTION
from cdc.commands.connect import require_capture as _require_capture
from cdc.commands.options import settings_options
from cdc.config import Settings
from cdc.errors import CdcError, CheckFailed, ConfigError, PostgresUnavailable, ServerDown, UsageError

log = logging.getLogger(__name__)


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
        "tables": len(tables_state),
        "tables_missing_triggers": [f"{t.schema}.{t.name}" for t in tables_state if not t.healthy],
        # partitions or children out of step with capture, dropped members: each with what to run
        "hierarchy_problems": hierarchy.problems(conn),
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
            _require_capture(conn)
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


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


@click.command(name="status")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.option(
    "--max-backlog", type=int, help="Exit 1 when more changes than this are not yet in MongoDB (outbox and batches)."
)
@click.option(
    "--max-lag", type=float, help="Exit 1 when the oldest change not yet in MongoDB is older than this (seconds)."
)
def status_command(settings: Settings, as_json: bool, max_backlog: int | None, max_lag: float | None) -> None:
    """Backlog, lag, last batches, worker state, and captured tables whose triggers are missing.

    The backlog counts every change not yet in MongoDB: in the outbox, and in batches claimed and
    not yet applied (for `cdc export`: not yet archived). Times are ISO-8601, ages in seconds. Needs
    PostgreSQL only: a MongoDB that is down is reported, and so is a PostgreSQL that is down.
    """
    report, pg_down = _source_status(settings)
    target, target_down = _target_status(settings)
    report.update(target)
    report["checked_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    if as_json:
        click.echo(orjson.dumps(report).decode())
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            click.echo(f"{key:<{width}} {_show(value)}")
    problems = [down for down in (pg_down, target_down) if down]
    if report.get("tables_missing_triggers"):
        problems.append("captured tables lost their triggers: " + ", ".join(report["tables_missing_triggers"]))
    problems.extend(report.get("hierarchy_problems", []))
    if max_backlog is not None and report.get("backlog_changes", 0) > max_backlog:
        problems.append(f"backlog {report['backlog_changes']} > {max_backlog}")
    if max_lag is not None and report.get("oldest_change_age_s", 0) > max_lag:
        at_least = "at least " if report["oldest_change_age_is_lower_bound"] else ""
        problems.append(f"lag {at_least}{report['oldest_change_age_s']:.1f}s > {max_lag}s")
    if problems:
        raise CheckFailed("; ".join(problems))
