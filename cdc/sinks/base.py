"""The contract between the pipeline and a target: ``Sink``.

An archive batch (``cdc.archive.folders.Batch``) is what a sink consumes: upsert and delete files of
Extended JSON lines, each document carrying its version in ``_cdc.pos``, and truncate markers. A sink
applies a batch idempotently (a line whose version is not above the stored one changes nothing, so a
batch applied twice, or after a crash half-way, leaves the same state), records it as applied, and
reports what it holds. The worker, the snapshot, replay and repair take a ``Sink``; MongoDB
(``cdc.sinks.mongo.applier.Applier``) is the one real implementation, ``cdc.sinks.memory.MemorySink``
an in-memory one for unit tests. The mongoimport path writes the same batches for a loader that is
not ours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdc.archive import folders as archive


@dataclass
class ApplyStats:
    """What applying one batch did: documents written, deleted, refused as stale (an older version than
    the stored one), removed by truncate markers; the retries it took; the counts per collection."""

    upserted: int = 0
    deleted: int = 0
    stale: int = 0
    truncated: int = 0
    retries: int = 0
    by_collection: dict[str, Counter[str]] = field(default_factory=dict)

    def count(self, collection: str, what: str, amount: int = 1) -> None:
        self.by_collection.setdefault(collection, Counter())[what] += amount


@dataclass(frozen=True)
class Held:
    """What a target holds, for moving positions past it after a re-install (``cdc.sinks.epoch``)."""

    version: int  # at least the highest _cdc.pos the target was ever given (0: none)
    batch: int  # the highest batch id the target records as applied (0: none)
    scanned: int | None = None  # no record of its versions: how many collections were read to find them


class Sink(Protocol):
    """A target that archive batches are applied to.

    Every method may raise a transient ``CdcError`` (the target is unreachable, say): the caller
    retries the whole batch, which the idempotence of ``apply`` makes safe."""

    @property
    def name(self) -> str:
        """The target in words, for messages ("MongoDB database orininu")."""
        ...

    @property
    def versions_record(self) -> str:
        """Where the target keeps its record of versions, in words: removing it makes the next ``held``
        read the versions from the documents themselves."""
        ...

    def apply(self, batch: archive.Batch, *, fast_insert: AbstractSet[str] | None = None) -> ApplyStats:
        """Apply one verified batch, idempotently; ``fast_insert`` names collections known to be empty
        (a snapshot's first batches), which may take a faster insert path."""
        ...

    def mark_applied(self, batch_id: int) -> None:
        """Record ``batch_id`` as applied (after ``apply`` returned), in the target itself."""
        ...

    def applied_batches(self) -> set[int]:
        """The batch ids recorded as applied (replay skips them)."""
        ...

    def held(self) -> Held:
        """The highest version and batch id the target holds."""
        ...

    def sweep(self, collection: str, below: int) -> int:
        """Remove the documents of ``collection`` whose version is below ``below`` (after a snapshot from
        that position: documents of rows that are gone); returns how many went."""
        ...

    def empty_collections(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` that hold no document (a snapshot writes them with the insert path)."""
        ...

    def ensure_indexes(self, collection: str, indexes: Sequence[Sequence[str]]) -> None:
        """Non-unique indexes on these fields of ``collection`` (a table's foreign-key columns)."""
        ...

    def delete_unchanged(self, collection: str, key: Any, seen: Any) -> None:
        """Delete the document ``key`` of ``collection`` if its ``_cdc`` is still ``seen`` (repair: a
        document the worker rewrote since it was read stays)."""
        ...
