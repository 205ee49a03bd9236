"""What the worker asks the ledger about batches, behind one interface.

``PgBatches`` is the ledger in PostgreSQL (``cdc.ledger`` on the worker's connection, ending each
read's transaction so the next claim reads a fresh snapshot); ``InMemoryBatches`` holds the same
states in memory, so the worker's ordering, pending-batch and re-export logic is tested without
servers (as procrastinate's ``InMemoryConnector``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg

from cdc.archive import folders as archive
from cdc.capture import mapping
from cdc.export import batch as export
from cdc.infra import pg
from cdc.infra.errors import ArchiveWriteError
from cdc.ledger import queries as ledger
from cdc.ledger.queries import BatchInfo, Mode, State


class Batches(Protocol):
    def pending(self) -> list[int]:
        """Batches claimed for applying and not yet applied, in batch order."""

    def info(self, batch_id: int) -> BatchInfo | None: ...

    def mark_applied(self, batch_id: int) -> None: ...

    def head(self) -> int:
        """The highest outbox position now."""

    def reexport(self, batch_id: int, archive_dir: Path) -> archive.Batch:
        """Write ``batch_id`` again from the keys the ledger holds, and read it back."""

    def due_sweeps(self) -> list[tuple[str, int, bool]]:
        """(collection, below, rows of it rejected meanwhile) of the sweeps a snapshot left whose pages
        are all applied."""

    def forget_sweep(self, collection: str, below: int) -> None: ...

    def broken_collections(self) -> set[str]:
        """Collections of the installed mapping a migration broke (nothing of theirs was written)."""


class PgBatches:
    def __init__(self, connection: Callable[[], psycopg.Connection[Any]]) -> None:
        self.connection = connection  # the worker's (REPEATABLE READ) connection, reopened when broken

    def pending(self) -> list[int]:
        conn = self.connection()
        found = ledger.pending_batches(conn)
        conn.commit()
        return found

    def info(self, batch_id: int) -> BatchInfo | None:
        conn = self.connection()
        found = ledger.batch_info(conn, batch_id)
        conn.commit()
        return found

    def mark_applied(self, batch_id: int) -> None:
        ledger.mark_applied(self.connection(), batch_id)

    def head(self) -> int:
        conn = self.connection()
        found = ledger.outbox_head(conn)
        conn.commit()
        return found

    def due_sweeps(self) -> list[tuple[str, int, bool]]:
        conn = self.connection()
        with pg.translated("reading the sweeps snapshots left"):
            found = ledger.due_sweeps(conn) if ledger.sweeps_readable(conn) else []
        conn.commit()
        return found

    def broken_collections(self) -> set[str]:
        conn = self.connection()
        model = mapping.load(conn)
        conn.commit()
        return {name for name, _why in model.broken} if model is not None else set()

    def forget_sweep(self, collection: str, below: int) -> None:
        conn = self.connection()
        with pg.translated("forgetting a sweep"):
            ledger.forget_sweep(conn, collection, below)
        conn.commit()

    def reexport(self, batch_id: int, archive_dir: Path) -> archive.Batch:
        conn = self.connection()
        with pg.translated(f"re-exporting batch {batch_id}"):
            try:
                writer = export.write_batch(conn, archive_dir, batch_id)
                info = ledger.batch_info(conn, batch_id)
                assert info is not None
                try:
                    # read again in a later snapshot than its claim's: it no longer shows PostgreSQL at
                    # one moment, whatever the claim was (the ledger keeps the claim's completeness)
                    extra = {"mode": str(info.mode), "reexported": True, "complete": False}
                    writer.finish(info.pos_min, info.pos_max, extra)
                except OSError as exc:
                    writer.abort()
                    raise ArchiveWriteError(f"batch {batch_id}: cannot re-export: {exc.strerror}") from None
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return archive.read_batch(writer.publish())


@dataclass
class InMemoryBatches:
    """The ledger's batch states in memory; ``lines`` are what a re-export writes for a batch
    (collection → upsert lines)."""

    batches: dict[int, BatchInfo] = field(default_factory=dict)
    lines: dict[int, dict[str, list[bytes]]] = field(default_factory=dict)
    outbox_head: int = 0
    reexported: list[int] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)

    def claim(self, batch_id: int, pos_min: int, pos_max: int, lines: dict[str, list[bytes]]) -> None:
        self.batches[batch_id] = BatchInfo(batch_id, Mode.RUN, State.EXPORTED, pos_min, pos_max, pos_max)
        self.lines[batch_id] = lines

    def pending(self) -> list[int]:
        return sorted(
            b
            for b, info in self.batches.items()
            if info.state is not State.APPLIED and info.mode in (Mode.RUN, Mode.SNAPSHOT)
        )

    def info(self, batch_id: int) -> BatchInfo | None:
        return self.batches.get(batch_id)

    def mark_applied(self, batch_id: int) -> None:
        info = self.batches[batch_id]
        self.batches[batch_id] = BatchInfo(
            info.batch_id, info.mode, State.APPLIED, info.pos_min, info.pos_max, info.version
        )
        self.applied.append(batch_id)

    def head(self) -> int:
        return self.outbox_head

    def due_sweeps(self) -> list[tuple[str, int, bool]]:
        return []

    def forget_sweep(self, collection: str, below: int) -> None:
        return None

    def broken_collections(self) -> set[str]:
        return set()

    def reexport(self, batch_id: int, archive_dir: Path) -> archive.Batch:
        self.reexported.append(batch_id)
        info = self.batches[batch_id]
        return write_archive_batch(archive_dir, batch_id, info.pos_min, info.pos_max, self.lines.get(batch_id, {}))


def write_archive_batch(
    archive_dir: Path, batch_id: int, pos_min: int | None, pos_max: int | None, lines: dict[str, list[bytes]]
) -> archive.Batch:
    """A published batch folder holding ``lines`` (collection → upsert lines)."""
    writer = archive.BatchWriter(archive_dir, batch_id)
    for collection, upserts in lines.items():
        writer.write_many(collection, "upsert", upserts)
    writer.finish(pos_min, pos_max, {"mode": "run"})
    return archive.read_batch(writer.publish())
