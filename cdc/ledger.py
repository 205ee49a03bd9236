"""The ledger's batch states, as the applying side reads and writes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cdc import pg


def pending_batches(conn: psycopg.Connection[Any]) -> list[int]:
    """Batches claimed for applying (run or snapshot) and not yet applied, in ledger order."""
    with pg.translated("reading the ledger"):
        rows = conn.execute(
            "SELECT batch_id FROM cdc.batches WHERE state <> 'applied' AND mode IN ('run', 'snapshot')"
            " ORDER BY batch_id"
        ).fetchall()
    conn.commit()
    return [int(row[0]) for row in rows]


def committed_batches(conn: psycopg.Connection[Any], first: int | None = None, last: int | None = None) -> set[int]:
    """Batch ids the ledger committed (exported, or applied) between ``first`` and ``last``.

    A claim is committed with its export, so an id absent from here was burned by an interrupted
    claim and never held a change.
    """
    with pg.translated("reading the ledger"):
        rows = conn.execute(
            "SELECT batch_id FROM cdc.batches WHERE state <> 'claimed'"
            " AND batch_id >= coalesce(%s::bigint, batch_id) AND batch_id <= coalesce(%s::bigint, batch_id)",
            [first, last],
        ).fetchall()
    conn.commit()
    return {int(row[0]) for row in rows}


def mark_applied(conn: psycopg.Connection[Any], batch_id: int) -> None:
    """Applied: MongoDB acknowledged every write with w:majority. The claimed keys are released."""
    with pg.translated(f"marking batch {batch_id} applied"):
        conn.execute("UPDATE cdc.batches SET state = 'applied', applied_at = now() WHERE batch_id = %s", [batch_id])
        conn.execute("DELETE FROM cdc.batch_changes WHERE batch_id = %s", [batch_id])
        conn.commit()


@dataclass(frozen=True)
class Backlog:
    """What waits in the outbox: captured statements, the changes (keys) they hold, the oldest one's age."""

    statements: int
    changes: int
    oldest_age_s: float


def backlog(conn: psycopg.Connection[Any]) -> Backlog:
    """The outbox backlog (``cdc status``, the demo's live line and the metrics read it).

    The age is measured from ``now()``, the transaction's start: use an autocommit connection
    (or a fresh transaction) for a live reading.
    """
    with pg.translated("reading the outbox backlog"):
        row = conn.execute(
            "SELECT count(*), coalesce(sum(cardinality(keys)), 0),"
            " coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM cdc.outbox"
        ).fetchone()
    assert row is not None
    return Backlog(int(row[0]), int(row[1]), float(row[2]))
