"""The applier: one archive batch into MongoDB, idempotently, in plain pymongo (Atlas works unchanged).

- Truncate markers first: a collection's documents older than the marker are deleted.
- Upserts are ``ReplaceOne({_id, "_cdc.pos": {$lt: pos}}, doc, upsert=True)`` and deletes
  ``DeleteOne({_id, "_cdc.pos": {$lt: pos}})``, so an older change never overwrites or removes a
  newer one. An E11000 on the ``_id`` index is stale only when a re-read shows a stored position
  at least the incoming one: stale is counted and skipped, anything else is retried.
- Write concern ``majority``. Transient errors (pymongo's ``AutoReconnect`` family, writes
  labelled ``RetryableWriteError``) are retried with jittered exponential backoff and a stop,
  one log line per retry; anything else stops with one clear error, the batch unapplied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import bson.errors
import pymongo
import pymongo.errors
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from pymongo import DeleteOne, InsertOne, ReplaceOne
from pymongo.database import Database
from pymongo.write_concern import WriteConcern
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from cdc.archive import folders as archive
from cdc.encode.extjson import parse_line
from cdc.infra import faults, shutdown
from cdc.infra.errors import ArchiveError, MongoError, MongoUnavailable, shorten
from cdc.sinks.base import ApplyStats, Held, Sink
from cdc.sinks.mongo.client import codec_options, describe, translated

log = logging.getLogger("cdc.apply")  # the name users filter on, kept across the move to packages
_P = ParamSpec("_P")
_R = TypeVar("_R")

APPLIED_COLLECTION = "_cdc_batches"  # the target's own record of applied batches
# the target's record of the highest version (_cdc.pos) it was ever given: {_id: "versions", version},
# raised before each batch's first write; `cdc run` and `cdc snapshot` move positions past it (cdc.sinks.epoch)
STATE_COLLECTION = "_cdc_state"
VERSIONS_ID = "versions"
CHUNK = 5_000  # documents per bulk write, and at most CHUNK_BYTES of archive lines
CHUNK_BYTES = 16 * 1024 * 1024
FIRST_CHUNK = 500
INLINE_BYTES = 256 * 1024  # files up to this size are written without the helper thread
DUPLICATE_KEY = 11000
MAX_REWRITES = 5

Document = dict[str, Any]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, pymongo.errors.AutoReconnect):
        return True
    return isinstance(exc, pymongo.errors.PyMongoError) and exc.has_error_label("RetryableWriteError")


def max_attempts(stop: object) -> int | None:
    """The attempt limit of a tenacity stop condition (``stop_after_attempt``, maybe inside an ``|``)."""
    if isinstance(stop, stop_after_attempt):
        return stop.max_attempt_number
    limits = [limit for inner in getattr(stop, "stops", ()) if (limit := max_attempts(inner)) is not None]
    return min(limits) if limits else None


def _log_retry(state: RetryCallState) -> None:
    """One line per retry: ``retry 3/12`` is the third failed attempt of at most 12."""
    exc = state.outcome.exception() if state.outcome else None
    limit = max_attempts(state.retry_object.stop)
    log.warning(
        "MongoDB write failed (%s); retry %d/%s",
        describe(exc) if isinstance(exc, pymongo.errors.PyMongoError) else exc,
        state.attempt_number,
        limit if limit is not None else "?",
        extra={"action": "mongo_retry", "attempt": state.attempt_number, "max_attempts": limit},
    )


def transient_retry_with(on_retry: Callable[[], None] | None = None) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """The retry decorator of MongoDB writes: transient errors only, jittered exponential waits, at
    most 12 attempts or until shutdown; one log line per retry, then ``on_retry()`` (the caller's
    own hook, e.g. a metrics counter)."""

    def before_sleep(state: RetryCallState) -> None:
        _log_retry(state)
        if on_retry is not None:
            on_retry()

    return retry(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.2, max=10),
        stop=stop_after_attempt(12) | stop_when_event_set(shutdown.REQUESTED),
        sleep=shutdown.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


transient_retry = transient_retry_with()  # logs each retry, with no hook of its own


def pos_of(document: Document) -> int:
    """A document's position; one written outside the pipeline (no ``_cdc``) counts as older than any."""
    try:
        return int(document["_cdc"]["pos"])
    except (KeyError, TypeError):
        return -1


def _chunks(path: Path, kind: str) -> Iterator[list[tuple[str, Document]]]:
    """The file's documents as (kind, document) pairs, ``CHUNK`` (or ``CHUNK_BYTES``) at a time."""
    changes: list[tuple[str, Document]] = []
    size, limit = 0, FIRST_CHUNK  # a small first chunk: its parsing is the only part not hidden by a write
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    changes.append((kind, parse_line(line)))
                except (ValueError, bson.errors.BSONError) as exc:  # the file matched its manifest digest
                    raise ArchiveError(
                        f"{path.parent.name}/{path.name} line {number}: not a document MongoDB can hold: {exc}"
                    ) from None
                size += len(line)
                if len(changes) >= limit or size >= CHUNK_BYTES:
                    yield changes
                    changes, size, limit = [], 0, CHUNK
    if changes:
        yield changes


def composite_key_index_default() -> bool:
    """``CDC_COMPOSITE_KEY_INDEX=off`` turns the composite-key workaround off (see ``KeyFields``)."""
    return os.environ.get("CDC_COMPOSITE_KEY_INDEX", "on").strip().lower() not in ("off", "0", "false", "no")


class KeyFields:
    """Composite keys: the key's columns, which a table's documents also hold as ordinary fields, are
    repeated in every guarded filter beside ``_id``, and a compound index on them is created once per
    collection (``cdc_key_…``, named after the key).

    Why: a server may look a document-valued ``_id`` up by scanning (SecantusDB does: 3 guarded
    replaces/s at 30,000 documents; about 880/s with this). On MongoDB itself the ``_id`` index
    serves the filter either way: the extra equalities only narrow the same match, and an upsert
    still takes ``_id`` (alone) from the filter, so writes stay valid; the cost is one more index to
    maintain per composite-key collection. Turn it off with ``CDC_COMPOSITE_KEY_INDEX=off``.
    Mapped collections are left alone (their documents need not hold the key's columns).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._indexed: set[tuple[str, tuple[str, ...]]] = set()
        self._refused: set[tuple[str, tuple[str, ...]]] = set()
        self._lock = threading.Lock()

    def filter(self, document: Document, *, may_extend: bool) -> Document:
        key = document["_id"]
        guard: Document = {"_id": key}
        if self.enabled and may_extend and isinstance(key, dict) and key:
            guard.update({f"{name}": value for name, value in key.items()})
        return guard

    def usable(self, document: Document, kind: str) -> bool:
        """Whether the upsert document holds the key's columns as ordinary fields equal to its ``_id``."""
        key = document["_id"]
        if not (self.enabled and isinstance(key, dict) and key):
            return False
        # a name with '.' or '$' is a path or an operator in a filter; two arrays cannot share an index
        if (
            any("." in name or name.startswith("$") for name in key)
            or sum(isinstance(v, list) for v in key.values()) > 1
        ):
            return False
        if kind == "delete":
            return True
        return all(name in document and document[name] == value for name, value in key.items())

    def ensure_index(self, target: pymongo.collection.Collection[Document], key: Document) -> bool:
        """Create the index once per collection and key; False (and the workaround off for that
        collection and key) when the server refuses it. A collection re-keyed after a migration gets
        the index of its new key, and the index of its old key goes."""
        names = tuple(key)
        wanted = _key_index_name(names)
        with self._lock:
            if (target.name, names) in self._refused:
                return False
            if (target.name, names) not in self._indexed:
                try:
                    for index in target.list_indexes():
                        if str(index["name"]).startswith("cdc_key") and index["name"] != wanted:
                            target.drop_index(index["name"])
                    target.create_index([(name, 1) for name in names], name=wanted)
                except pymongo.errors.OperationFailure as exc:
                    log.warning("%s: no composite-key index (%s); writes use _id alone", target.name, describe(exc))
                    self._refused.add((target.name, names))
                    return False
                self._indexed.add((target.name, names))
            return True


def _key_index_name(names: tuple[str, ...]) -> str:
    """``cdc_key_`` and a short digest of the key's field names (one index per key a collection had)."""
    return "cdc_key_" + hashlib.sha256("\x00".join(names).encode()).hexdigest()[:12]


class Applier:
    def __init__(
        self,
        database: Database[Document],
        *,
        on_retry: Callable[[], None] | None = None,
        composite_key_index: bool | None = None,
    ) -> None:
        self.database = database
        self.options: CodecOptions[Document] = codec_options()
        self.on_retry = on_retry  # called before each retried MongoDB write (metrics)
        self.retrying = transient_retry_with(self._retried)  # this applier's writes: counted, then on_retry
        self._retries = 0
        self._retries_lock = threading.Lock()  # bulk writes retry on a helper thread too
        self._write = self.retrying(self._write_once)
        self.key_fields = KeyFields(
            composite_key_index_default() if composite_key_index is None else composite_key_index
        )
        self._mapped: set[str] = set()  # the batch's mapped collections (manifest "documents")
        self._given = 0  # the highest version this applier recorded in the target (STATE_COLLECTION)

    @property
    def name(self) -> str:
        return f"MongoDB database {self.database.name}"

    @property
    def versions_record(self) -> str:
        return f"the collection {STATE_COLLECTION} of {self.database.name}"

    def collection(self, name: str) -> pymongo.collection.Collection[Document]:
        return self.database.get_collection(name, codec_options=self.options, write_concern=WriteConcern(w="majority"))

    def applied_batches(self) -> set[int]:
        return {int(doc["_id"]) for doc in self.collection(APPLIED_COLLECTION).find({}, {"_id": 1})}

    def held(self) -> Held:
        """The target's record of its versions (``STATE_COLLECTION``; without one, read once from each
        collection's highest ``_cdc.pos`` and written) and its highest applied batch."""
        database = self.database
        scanned = None
        with translated(f"reading what MongoDB database {database.name} holds"):
            state = database.get_collection(STATE_COLLECTION).find_one({"_id": VERSIONS_ID})
            last = database.get_collection(APPLIED_COLLECTION).find_one({}, {"_id": 1}, sort=[("_id", -1)])
            if state is not None:
                version = int(state.get("version") or 0)
            else:
                names = [name for name in database.list_collection_names() if not name.startswith(("_cdc", "system."))]
                version = max((_highest_pos(database.get_collection(name)) for name in names), default=0)
                scanned = len(names)
                if version > 0:  # once: from now on the record answers
                    self.collection(STATE_COLLECTION).update_one(
                        {"_id": VERSIONS_ID},
                        {"$max": {"version": Int64(version)}, "$set": {"updated_at": dt.datetime.now(dt.UTC)}},
                        upsert=True,
                    )
        batch = int(last["_id"]) if last is not None and isinstance(last["_id"], int) else 0
        return Held(version, batch, scanned)

    def empty_collections(self, names: Iterable[str]) -> set[str]:
        database = self.database
        with translated(f"counting the documents of MongoDB database {database.name}"):
            existing = set(database.list_collection_names())
            return {name for name in names if name not in existing or database[name].estimated_document_count() == 0}

    def ensure_indexes(self, collection: str, indexes: Sequence[Sequence[str]]) -> None:
        with translated(f"creating the indexes of {collection}"):
            for fields in indexes:
                self.database[collection].create_index([(name, 1) for name in fields])

    def delete_unchanged(self, collection: str, key: Any, seen: Any) -> None:
        @self.retrying
        def run() -> None:
            self.collection(collection).delete_one({"_id": key, "_cdc": seen})

        with translated(f"removing a document of {collection}"):
            run()

    def _retried(self) -> None:
        with self._retries_lock:
            self._retries += 1
        if self.on_retry is not None:
            self.on_retry()

    def _write_once(
        self, collection: str, changes: list[tuple[str, Document]], stats: ApplyStats, depth: int = 0
    ) -> None:
        """One unordered bulk write of (kind, document) pairs; kind is upsert, insert or delete.

        Duplicate-key errors on ``_id`` are sorted out here: stale ones are counted, the rest
        written again as guarded upserts (a few rounds at most). A write-concern error is raised,
        so the whole chunk is retried (the writes are guarded, so that is safe).
        """
        target = self.collection(collection)
        may_extend = collection not in self._mapped
        extend = [may_extend and self.key_fields.usable(document, kind) for kind, document in changes]
        if any(extend) and not self.key_fields.ensure_index(target, changes[extend.index(True)][1]["_id"]):
            extend = [False] * len(changes)
        requests = [
            _request(kind, document, self.key_fields.filter(document, may_extend=wide))
            for (kind, document), wide in zip(changes, extend, strict=True)
        ]
        try:
            result = target.bulk_write(requests, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise
            again: list[tuple[str, Document]] = []
            stale = 0
            for error in details.get("writeErrors", []):
                _kind, document = changes[error["index"]]
                on_id = error.get("keyPattern", {"_id": 1}) == {"_id": 1}
                if error.get("code") != DUPLICATE_KEY or not on_id:
                    raise MongoError(
                        f"{collection}: write of _id {shorten(document['_id'])} rejected: "
                        f"{shorten(error.get('errmsg', error))} (code {error.get('code')})"
                    ) from None
                found_by = self.key_fields.filter(document, may_extend=extend[error["index"]])
                if self._is_stale(target, document, found_by):
                    stale += 1
                else:  # an insert that met a document, or a newer document that moved under us
                    again.append(("upsert", document))
            if again:
                if depth >= MAX_REWRITES:
                    raise MongoError(
                        f"{collection}: {len(again)} writes kept meeting newer documents; stopping"
                    ) from None
                self._write(collection, again, stats, depth + 1)
            # counted once the rewrites went through: a retry of this whole chunk counts it once
            stats.stale += stale
            stats.count(collection, "stale", stale)
            stats.upserted += details.get("nUpserted", 0) + details.get("nMatched", 0) + details.get("nInserted", 0)
            stats.deleted += details.get("nRemoved", 0)
            return
        stats.upserted += result.upserted_count + result.matched_count + result.inserted_count
        stats.deleted += result.deleted_count

    @staticmethod
    def _is_stale(target: pymongo.collection.Collection[Document], document: Document, found_by: Document) -> bool:
        stored = target.find_one(found_by, {"_cdc.pos": 1})
        return stored is not None and pos_of(stored) >= pos_of(document)

    def _truncate(self, collection: str, pos: int, stats: ApplyStats) -> None:
        @self.retrying
        def run() -> int:
            return self.collection(collection).delete_many({"_cdc.pos": {"$lt": pos}}).deleted_count

        removed = run()
        stats.truncated += removed
        stats.count(collection, "truncated", removed)

    def apply(self, batch: archive.Batch, *, fast_insert: AbstractSet[str] | None = None) -> ApplyStats:
        """Apply one verified batch; ``fast_insert`` names collections known to be empty (insert path)."""
        stats = ApplyStats()
        self._mapped = set(batch.manifest.get("documents") or {})
        retries_before = self._retries
        try:
            self._record_given(archive.top_version(batch.manifest))
            for marker in batch.manifest["truncates"]:
                self._truncate(marker["collection"], int(marker["pos"]), stats)
            for op in ("upsert", "delete"):
                for collection, path in batch.files(op):
                    self._apply_file(
                        collection, path, op, stats, fast=op == "upsert" and collection in (fast_insert or ())
                    )
        except pymongo.errors.AutoReconnect as exc:  # retries exhausted: still an outage, not a bad batch
            raise MongoUnavailable(f"batch {batch.batch_id}: {describe(exc)}") from exc
        except pymongo.errors.PyMongoError as exc:
            if is_transient(exc):
                raise MongoUnavailable(f"batch {batch.batch_id}: {describe(exc)}") from exc
            raise MongoError(f"batch {batch.batch_id}: {describe(exc)}") from exc
        stats.retries = self._retries - retries_before
        return stats

    def _apply_file(self, collection: str, path: Path, op: str, stats: ApplyStats, *, fast: bool) -> None:
        """Write the file in chunks, one bulk write in flight on a helper thread while the next chunk
        is read and parsed here (pymongo releases the GIL while it waits for the server)."""
        kind = "delete" if op == "delete" else "insert" if fast else "upsert"
        if path.stat().st_size <= INLINE_BYTES:  # a live batch's few lines: no thread to start
            for changes in _chunks(path, kind):
                self._write(collection, changes, stats)
                _counted(collection, op, stats, len(changes))
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-bulk-write") as writer:
            in_flight: tuple[Future[None], int] | None = None
            for changes in _chunks(path, kind):
                if in_flight is not None:
                    self._written(collection, op, stats, *in_flight)
                in_flight = writer.submit(self._write, collection, changes, stats), len(changes)
            if in_flight is not None:
                self._written(collection, op, stats, *in_flight)

    @staticmethod
    def _written(collection: str, op: str, stats: ApplyStats, write: Future[None], size: int) -> None:
        write.result()  # re-raises the write's error here
        _counted(collection, op, stats, size)

    def _record_given(self, version: int) -> None:
        """Before a batch's first write: raise the target's record of the highest version it was given
        (``$max``), so that it is never below a ``_cdc.pos`` the target holds, even after a crash."""
        if version <= self._given:
            return

        @self.retrying
        def run() -> None:
            self.collection(STATE_COLLECTION).update_one(
                {"_id": VERSIONS_ID},
                {"$max": {"version": Int64(version)}, "$set": {"updated_at": dt.datetime.now(dt.UTC)}},
                upsert=True,
            )

        run()
        self._given = version

    def sweep(self, collection: str, below: int) -> int:
        """Delete the documents of ``collection`` whose version is below ``below``: after a whole snapshot
        taken from that position on, they are documents of rows that no longer exist (every row left
        was written again at or above it). Returns how many went."""

        @self.retrying
        def run() -> int:
            return self.collection(collection).delete_many({"_cdc.pos": {"$lt": Int64(below)}}).deleted_count

        with translated(f"removing the documents of rows gone from {collection}"):
            return int(run())

    def mark_applied(self, batch_id: int) -> None:
        @self.retrying
        def run() -> None:
            self.collection(APPLIED_COLLECTION).replace_one(
                {"_id": batch_id}, {"_id": batch_id, "applied_at": dt.datetime.now(dt.UTC)}, upsert=True
            )

        with translated(f"recording batch {batch_id} as applied"):
            run()


def _highest_pos(collection: pymongo.collection.Collection[Document]) -> int:
    """The highest ``_cdc.pos`` of a collection: one sorted read, a full scan without an index."""
    found = collection.find_one({}, {"_cdc.pos": 1}, sort=[("_cdc.pos", -1)])
    return max(pos_of(found), 0) if found is not None else 0


def _counted(collection: str, op: str, stats: ApplyStats, size: int) -> None:
    """After a chunk's bulk write went through (a test may kill the process here)."""
    stats.count(collection, op, size)
    faults.point("mid_bulk_write")


def _request(kind: str, document: Document, found_by: Document) -> Any:
    guard = {**found_by, "_cdc.pos": {"$lt": pos_of(document)}}
    if kind == "delete":
        return DeleteOne(guard)
    if kind == "insert":
        return InsertOne(document)
    return ReplaceOne(guard, document, upsert=True)


if TYPE_CHECKING:
    _IS_A_SINK: type[Sink] = Applier  # mypy holds the MongoDB sink to the contract
