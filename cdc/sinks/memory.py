"""An in-memory ``Sink``: the same contract as MongoDB's, in dictionaries, for unit tests of the
pipeline's ordering and retry logic (no server). It applies archive batches with the same rules as
the MongoDB sink: a write whose version (``_cdc.pos``) is not above the stored one changes nothing
(an upsert is counted stale), a truncate marker removes what is below its position; the counts are the
MongoDB sink's (documents written, deleted, refused as stale; lines per collection and op). A stored
document without ``_cdc.pos`` is matched by no guard, as in MongoDB (``$lt`` does not match a missing
field): truncates, sweeps and deletes keep it, and an upsert over it fails. ``fail_next`` makes the
next ``apply`` raise after a given number of writes, to test what a retry must repair."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

import bson

from cdc.archive import folders as archive
from cdc.encode.extjson import parse_line
from cdc.infra.errors import CdcError
from cdc.sinks.base import ApplyStats, Held, Sink

Document = dict[str, Any]


def _pos(document: Document) -> int | None:
    """The document's ``_cdc.pos``; None when it has none (written outside the pipeline)."""
    try:
        return int(document["_cdc"]["pos"])
    except (KeyError, TypeError):
        return None


def _below(document: Document, pos: int) -> bool:
    """Whether ``{"_cdc.pos": {"$lt": pos}}`` matches ``document``."""
    found = _pos(document)
    return found is not None and found < pos


def document_key(document_id: Any) -> bytes:
    """MongoDB's equality of ``_id`` values: their BSON (a document's field order counts)."""
    return bson.encode({"_id": document_id})


class MemorySink:
    """Collections of documents by ``_id``, the applied batch ids, and the highest version given."""

    def __init__(self, name: str = "memory") -> None:
        self._name = name
        self.collections: dict[str, dict[bytes, Document]] = {}
        self.applied: list[int] = []  # batch ids, in the order they were recorded as applied
        self.applies: list[int] = []  # batch ids, in the order ``apply`` was called (retries included)
        self.indexes: dict[str, list[tuple[str, ...]]] = {}
        self.version = 0
        self._fail: tuple[BaseException, int] | None = None

    @property
    def name(self) -> str:
        return f"in-memory sink {self._name}"

    @property
    def versions_record(self) -> str:
        return f"the version record of {self.name}"

    def fail_next(self, error: BaseException, *, after_writes: int = 0) -> None:
        """The next ``apply`` raises ``error`` once it has made ``after_writes`` writes."""
        self._fail = (error, after_writes)

    def documents(self, collection: str) -> list[Document]:
        return list(self.collections.get(collection, {}).values())

    def apply(self, batch: archive.Batch, *, fast_insert: AbstractSet[str] | None = None) -> ApplyStats:
        self.applies.append(batch.batch_id)
        stats = ApplyStats()
        fail, self._fail = self._fail, None
        writes = 0

        def wrote() -> None:
            nonlocal writes
            if fail is not None and writes >= fail[1]:
                raise fail[0]
            writes += 1

        if fail is not None and fail[1] == 0:
            raise fail[0]
        self.version = max(self.version, archive.top_version(batch.manifest))
        for marker in batch.manifest["truncates"]:
            stored = self.collections.setdefault(marker["collection"], {})
            below = [key for key, document in stored.items() if _below(document, int(marker["pos"]))]
            for key in below:
                del stored[key]
            stats.truncated += len(below)
            stats.count(marker["collection"], "truncated", len(below))
        for op in ("upsert", "delete"):
            for collection, path in batch.files(op):
                stored = self.collections.setdefault(collection, {})
                for line in path.read_bytes().splitlines():
                    if not line.strip():
                        continue
                    wrote()
                    document = parse_line(line)
                    key = document_key(document["_id"])
                    current = stored.get(key)
                    pos = _pos(document)
                    guard_matches = current is not None and pos is not None and _below(current, pos)
                    if op == "delete":
                        if guard_matches:
                            del stored[key]
                            stats.deleted += 1
                    elif current is None or guard_matches:
                        stored[key] = document
                        stats.upserted += 1
                    elif _pos(current) is None:
                        raise CdcError(
                            f"{collection}: the document {document['_id']!r} has no _cdc.pos: no guarded write"
                            " can replace it"
                        )
                    else:
                        stats.stale += 1
                        stats.count(collection, "stale")
                    stats.count(collection, op)
        return stats

    def mark_applied(self, batch_id: int) -> None:
        if batch_id not in self.applied:
            self.applied.append(batch_id)

    def applied_batches(self) -> set[int]:
        return set(self.applied)

    def held(self) -> Held:
        return Held(self.version, max(self.applied, default=0))

    def sweep(self, collection: str, below: int) -> int:
        stored = self.collections.get(collection, {})
        gone = [key for key, document in stored.items() if _below(document, below)]
        for key in gone:
            del stored[key]
        return len(gone)

    def empty_collections(self, names: Iterable[str]) -> set[str]:
        return {name for name in names if not self.collections.get(name)}

    def ensure_indexes(self, collection: str, indexes: Sequence[Sequence[str]]) -> None:
        known = self.indexes.setdefault(collection, [])
        known.extend(tuple(fields) for fields in indexes if tuple(fields) not in known)

    def delete_unchanged(self, collection: str, key: Any, seen: Any) -> None:
        stored = self.collections.get(collection, {})
        found = stored.get(document_key(key))
        if found is not None and found.get("_cdc") == seen:
            del stored[document_key(key)]


if TYPE_CHECKING:
    _IS_A_SINK: type[Sink] = MemorySink  # mypy holds the in-memory sink to the contract
