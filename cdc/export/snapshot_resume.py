"""Resuming an interrupted snapshot: what each table's snapshot recorded, and what to do with it.

Each page records, in the transaction that enqueues it, how far its table got (the last key
enqueued and the page's position), and the table's record says when every key is enqueued. A
re-run continues after the last key of each table that was not finished and enqueues nothing for
the finished ones; what was already enqueued (the outbox and the batches not yet applied) is
drained by the normal cycle. Records whose keys are all enqueued and drained belong to a snapshot
that finished: it starts over. The records are the ledger's (``cdc.snapshot_progress``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from cdc.capture.tables import TableInfo
from cdc.ledger import queries as ledger
from cdc.ledger.queries import SnapshotStep as Step

MODES = ("apply", "export")

__all__ = ["MODES", "Recorder", "ResumePlan", "Step", "can_record", "describe_left", "forget", "plan_resume"]


class Part(Protocol):
    """One collection of a snapshot (``cdc.export.snapshot.Target``): its table and op name its record."""

    @property
    def collection(self) -> str: ...
    @property
    def table(self) -> TableInfo: ...
    @property
    def op(self) -> str: ...


class Recorder:
    """Writes a snapshot's progress, in the transaction of each page."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode

    def page(  # noqa: PLR0917 (one page's facts)
        self, conn: psycopg.Connection[Any], relid: int, op: str, last_key: str, pos: int, keys: int
    ) -> None:
        ledger.record_snapshot_page(conn, relid, op, self.mode, last_key, pos, keys)

    def finished(self, conn: psycopg.Connection[Any], relid: int, op: str) -> None:
        ledger.record_snapshot_done(conn, relid, op, self.mode)


@dataclass
class ResumePlan:
    """Which tables of this snapshot continue an interrupted one; ``recorder`` records the new pages."""

    recorder: Recorder
    resumed: dict[tuple[int, str], Step] = field(default_factory=dict)
    restarted: list[str] = field(default_factory=list)  # why a record was dropped, one line each

    @property
    def resuming(self) -> bool:
        return bool(self.resumed)


def can_record(conn: psycopg.Connection[Any]) -> str | None:
    """None when this role can record progress; else why not (the snapshot then cannot resume)."""
    exists, allowed = ledger.snapshot_progress_access(conn)
    conn.commit()
    if allowed:
        return None
    if not exists:
        return "cdc.snapshot_progress does not exist (run `cdc install` again to add it)"
    return f"role {conn.info.user!r} may not write cdc.snapshot_progress (grant it, as for cdc.outbox)"


def _steps(conn: psycopg.Connection[Any], keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Step]:
    found = ledger.snapshot_steps(conn, keys)
    conn.commit()
    return found


def in_flight(conn: psycopg.Connection[Any], step: Step) -> bool:
    """Whether what ``step`` enqueued is still on its way: in the outbox, or in a batch not yet
    applied (``apply``) or not yet archived (``export``)."""
    if step.last_pos is None:
        return False
    waiting = ledger.waiting_up_to(conn, step.last_pos, applying=step.mode == "apply")
    conn.commit()
    return waiting


def _steps_of(chosen: Sequence[Part]) -> list[tuple[int, str]]:
    return list(dict.fromkeys((t.table.relid, t.op) for t in chosen))


def plan_resume(conn: psycopg.Connection[Any], chosen: Sequence[Part], mode: str, *, restart: bool) -> ResumePlan:
    """Decide, per table of ``chosen``, whether this snapshot continues an interrupted one.

    Records exist only for a snapshot that did not finish (they go when it does). They are
    continued when written by a snapshot of the same ``mode``, unless every table's keys were
    enqueued and have all been drained since (``cdc run`` finished it): then it starts over, and
    so does every table with ``restart``."""
    plan = ResumePlan(Recorder(mode))
    by_step = {(t.table.relid, t.op): t for t in chosen}
    dropped: list[tuple[int, str]] = []
    found = _steps(conn, _steps_of(chosen))
    finished = bool(found) and all(step.done and not in_flight(conn, step) for step in found.values())
    for key, step in found.items():
        if restart or finished:
            dropped.append(key)
        elif step.mode != mode:
            dropped.append(key)
            plan.restarted.append(
                f"{by_step[key].table.display}: the interrupted snapshot was "
                f"{'--export-only' if step.mode == 'export' else 'applying'}; starting it over"
            )
        else:
            plan.resumed[key] = step
    if dropped:
        ledger.forget_snapshot_steps(conn, dropped)
        conn.commit()
    return plan


def forget(conn: psycopg.Connection[Any], chosen: Sequence[Part]) -> None:
    """The snapshot of ``chosen`` finished: drop its records, so the next one starts over."""
    ledger.forget_snapshot_steps(conn, _steps_of(chosen))
    conn.commit()


def describe_left(conn: psycopg.Connection[Any], chosen: Sequence[Part], mode: str) -> str:
    """What an interrupted snapshot leaves: per collection how far its keys were enqueued, and what
    waits in the outbox and in batches (one line)."""
    steps = _steps(conn, _steps_of(chosen)) if can_record(conn) is None else {}
    finished, partial, untouched = [], [], []
    for target in chosen:
        step = steps.get((target.table.relid, target.op))
        if step is not None and step.mode != mode:
            step = None
        if step is None:
            untouched.append(target.collection)
        elif step.done:
            finished.append(target.collection)
        else:
            partial.append(f"{target.collection} up to key {step.last_key} ({step.keys:,} keys)")
    waiting = ledger.backlog(conn)
    conn.commit()
    parts = [f"keys of {len(finished)} of {len(chosen)} collections fully enqueued"]
    if partial:
        parts.append("partly: " + ", ".join(partial))
    if untouched and (finished or partial):
        parts.append("not started: " + ", ".join(untouched))
    parts.append(
        f"{waiting.outbox_changes:,} changes wait in the outbox and {waiting.batch_changes:,} in "
        f"{waiting.batches} batches not yet {'archived' if mode == 'export' else 'applied'}"
    )
    return "; ".join(parts)
