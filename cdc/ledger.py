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
        row = conn.execute(
            # waiting: batches claimed for applying and not applied, or (any mode) not yet archived
            """WITH waiting AS (SELECT batch_id, claimed_at FROM cdc.batches
                                WHERE state <> 'applied' AND (mode IN ('run', 'snapshot') OR state = 'claimed'))
                SELECT o.statements, o.changes, extract(epoch FROM now() - o.oldest),
                       h.statements, h.changes, w.batches, extract(epoch FROM now() - w.oldest)
                FROM (SELECT count(*) AS statements, coalesce(sum(cardinality(keys)), 0) AS changes,
                             min(created_at) AS oldest
                      FROM cdc.outbox) o,
                     (SELECT count(*) AS statements, coalesce(sum(cardinality(keys)), 0) AS changes
                      FROM cdc.batch_changes WHERE batch_id IN (SELECT batch_id FROM waiting)) h,
                     (SELECT count(*) AS batches, min(claimed_at) AS oldest FROM waiting) w"""
        ).fetchone()
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
