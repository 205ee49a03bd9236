"""Verify, and repair what differs: `cdc verify`'s use case, shared with the demo."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from pymongo.database import Database

from cdc.capture import hierarchy, mapping
from cdc.capture.mapping import Collection
from cdc.capture.tables import TableInfo
from cdc.export import snapshot
from cdc.infra.errors import CheckFailed
from cdc.infra.progress import track
from cdc.ledger import queries as ledger
from cdc.runtime.worker import Worker
from cdc.sinks import epoch
from cdc.sinks.base import Sink
from cdc.usecases.sync import sync_once
from cdc.verify import run as verify

# its progress lines keep the command's logger name, what users filter on
log = logging.getLogger("cdc.commands.verify")

Item = TableInfo | Collection  # a table's own collection, or a mapped collection


def chosen(conn: psycopg.Connection[Any], names: Sequence[str] | None) -> list[Item]:
    """What verify compares: every captured table's collection and every mapped collection, or those named.
    Refuses them all at once (``RowSecurityError``) when row-level security may hide rows of one of
    the tables they read from this role (``verify.refuse_hidden``)."""
    items: list[Item] = [target.mapped or target.table for target in snapshot.targets(conn, names)]
    verify.refuse_hidden(conn, items)
    if not names:  # a collection a migration broke cannot be compared: verify must not say ok
        model = mapping.load(conn)
        conn.commit()
        if model is not None and model.broken:
            raise CheckFailed(
                "; ".join(
                    f"collection {name} cannot be verified: a migration broke its mapping: {why}"
                    for name, why in model.broken
                )
            )
    return items


def verify_tables(
    conn: psycopg.Connection[Any], database: Database[Any], items: Sequence[Item], *, step: str = "verify"
) -> list[verify.TableDiff]:
    """``verify.verify`` one table (or mapped collection) at a time, with progress in rows compared."""
    diffs = []
    with track(step, unit="rows", scale=True, logger=log) as progress:
        for item in items:
            progress.note(item.name if isinstance(item, Collection) else item.display)
            diffs += verify.verify(conn, database, [item], progress=progress.update)
    return diffs


def repair(
    conn: psycopg.Connection[Any],
    sink: Sink,
    items: Sequence[Item],
    diffs: Sequence[verify.TableDiff],
    *,
    dsn: str,
    archive_dir: Path,
) -> None:
    """Put the missing and different keys back into the outbox and apply them through the archive and
    the sink (waiting for the worker lock); delete the extra documents, each guarded by the
    position verify saw (a document the worker rewrote since then stays)."""
    epoch.align(dsn, sink, archive_dir)  # after a re-install, the repaired keys must not look stale
    for item, diff in zip(items, diffs, strict=True):
        # a mapped collection's roots are refreshed (op 'r'): each document read whole again
        relid, op, name = (
            (item.root.table.relid, "r", item.name)
            if isinstance(item, Collection)
            else (item.relid, "k", item.collection)
        )
        if diff.repair_keys:
            ledger.enqueue_keys(conn, relid, diff.repair_keys, op)
        for key, seen in zip(diff.extra, diff.extra_positions, strict=True):
            sink.delete_unchanged(name, key, seen)
    conn.commit()
    sync_once(Worker(dsn, sink, archive_dir), wait=True)


def clear_dropped(conn: psycopg.Connection[Any], items: Sequence[Item], diffs: Sequence[verify.TableDiff]) -> None:
    """After a clean verify of a table, what was left of its dropped partitions or children is gone."""
    for item, diff in zip(items, diffs, strict=True):
        if diff.clean:
            for relid in [item.relid] if isinstance(item, TableInfo) else [n.table.relid for n in item.nodes()]:
                hierarchy.clear_dropped(conn, relid)
    conn.commit()
