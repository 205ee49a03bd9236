"""`cdc verify`: compare PostgreSQL and MongoDB, and repair what differs."""

from __future__ import annotations

from typing import Any

import click
import orjson

from cdc.capture.install import require_installed as _require_capture
from cdc.capture.tables import TableInfo
from cdc.commands.connect import applier as _applier
from cdc.commands.options import settings_options
from cdc.demo import dql_mongo
from cdc.export import batch as export
from cdc.infra.config import Settings
from cdc.infra.errors import CheckFailed
from cdc.usecases import repair as usecase


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
    applier = _applier(settings)
    database = applier.database
    with export.drain_connection(dsn) as conn:
        _require_capture(conn)
        names = [name.strip() for name in table_list.split(",")] if table_list else None
        chosen = usecase.chosen(conn, names)
        diffs = usecase.verify_tables(conn, database, chosen)
        if repair and not all(diff.clean for diff in diffs):
            usecase.repair(conn, applier, chosen, diffs, dsn=dsn, archive_dir=settings.archive_dir)
            diffs = usecase.verify_tables(conn, database, chosen, step="verify again")
        usecase.clear_dropped(conn, chosen, diffs)
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
