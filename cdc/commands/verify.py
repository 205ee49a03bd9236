"""`cdc verify`: compare PostgreSQL and MongoDB, and repair what differs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import click
import orjson

from cdc import export, hierarchy, ledger, mongo, snapshot, verify
from cdc.commands.connect import applier as _applier
from cdc.commands.connect import require_capture as _require_capture
from cdc.commands.options import settings_options
from cdc.config import Settings
from cdc.demo import dql_mongo
from cdc.errors import CheckFailed
from cdc.mapping import Collection
from cdc.progress import track
from cdc.tables import TableInfo
from cdc.worker import Worker

log = logging.getLogger(__name__)


@click.command(name="verify")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@click.option("--repair", is_flag=True, help="Re-sync exactly the differing keys, then verify again.")
@click.option("--tables", "table_list", metavar="A,B", help="Only these captured tables [default: all].")
def verify_command(settings: Settings, as_json: bool, repair: bool, table_list: str | None) -> None:
    """Compare PostgreSQL and MongoDB row by row under the type mapping; exit 1 on any difference.

    Prints missing / extra / different counts per table with the first examples. --repair puts
    the missing and different keys back into the outbox and applies them through the normal
    archive + applier path; extra documents are deleted with a guard on their position.
    """
    dsn = settings.pg_dsn()
    database = mongo.client(settings.mongo_uri())[settings.mongo_db]
    with export.drain_connection(dsn) as conn:
        _require_capture(conn)
        names = [name.strip() for name in table_list.split(",")] if table_list else None
        chosen = [target.mapped or target.table for target in snapshot.targets(conn, names)]
        diffs = verify_tables(conn, database, chosen)
        if repair and not all(diff.clean for diff in diffs):
            _repair(settings, conn, database, chosen, diffs)
            diffs = verify_tables(conn, database, chosen, step="verify again")
        for item, diff in zip(chosen, diffs, strict=True):
            if diff.clean:  # what was left of dropped partitions or children is gone
                for relid in [item.relid] if isinstance(item, TableInfo) else [n.table.relid for n in item.nodes()]:
                    hierarchy.clear_dropped(conn, relid)
        conn.commit()
        # the Orininu validation queries, answered on both sides, when the database is the demo's
        # only over table mirrors: the pipelines read the songs and user_interaction collections as tables
        mirrors = [item for item in chosen if isinstance(item, TableInfo)]
        queries = dql_mongo.compare(conn, database) if dql_mongo.applies(conn, mirrors) else []
    summaries = [diff.summary() for diff in diffs]
    dql = [
        {"query": q.name, "equal": q.equal, "postgres": [list(map(str, r)) for r in q.postgres],
         "mongodb": [list(map(str, r)) for r in q.mongodb]}
        for q in queries
    ]  # fmt: skip
    if as_json:
        clean = all(d.clean for d in diffs) and all(q.equal for q in queries)
        click.echo(orjson.dumps({"clean": clean, "tables": summaries, "dql": dql}).decode())
    else:
        _print_report(summaries, queries)
    if not all(diff.clean for diff in diffs):
        bad = sum(len(d.missing) + len(d.extra) + len(d.different) for d in diffs)
        raise CheckFailed(f"verify found {bad} differences")
    unequal = [q.name for q in queries if not q.equal]
    if unequal:
        raise CheckFailed("the validation queries answer differently on MongoDB: " + ", ".join(unequal))


def _print_report(summaries: list[dict[str, Any]], queries: list[dql_mongo.DqlComparison]) -> None:
    for item in summaries:
        verdict = "ok" if not (item["missing"] or item["extra"] or item["different"]) else "DIFFERS"
        click.echo(
            f"{item['table']:<24} rows={item['rows']:<8} documents={item['documents']:<8} "
            f"missing={item['missing']} extra={item['extra']} different={item['different']} {verdict}"
        )
        for kind, examples in item["examples"].items():
            if examples:
                click.echo(f"    {kind}: " + ", ".join(examples))
        if item["fields"]:
            counts = ", ".join(f"{name} ({count})" for name, count in item["fields"].items())
            click.echo(f"    fields that differ: {counts}")
        for detail in item["details"]:
            click.echo(f"    {detail}")
    for query in queries:
        click.echo(f"dql {query.name:<20} {'same answer' if query.equal else 'DIFFERS'} on both sides")
        if not query.equal:
            click.echo(f"    postgresql: {query.postgres}")
            click.echo(f"    mongodb:    {query.mongodb}")


def verify_tables(
    conn: Any, database: Any, chosen: Sequence[TableInfo | Collection], *, step: str = "verify"
) -> list[verify.TableDiff]:
    """``verify.verify`` one table (or mapped collection) at a time, with progress in rows compared."""
    diffs = []
    with track(step, unit="rows", scale=True, logger=log) as progress:
        for item in chosen:
            progress.note(item.name if isinstance(item, Collection) else item.display)
            diffs += verify.verify(conn, database, [item], progress=progress.update)
    return diffs


def _repair(settings: Settings, conn: Any, database: Any, chosen: list[Any], diffs: list[verify.TableDiff]) -> None:
    for item, diff in zip(chosen, diffs, strict=True):
        # a mapped collection's roots are refreshed (op 'r'): each document read whole again
        relid, op, name = (
            (item.root.table.relid, "r", item.name)
            if isinstance(item, Collection)
            else (item.relid, "k", item.collection)
        )
        if diff.repair_keys:
            ledger.enqueue_keys(conn, relid, diff.repair_keys, op)
        for key, seen in zip(diff.extra, diff.extra_positions, strict=True):
            # guarded by the position verify saw: a document the worker rewrote since then stays
            database[name].delete_one({"_id": key, "_cdc": seen})
    conn.commit()
    worker = Worker(settings.pg_dsn(), _applier(settings), settings.archive_dir)
    worker.sync_once(wait=True)
