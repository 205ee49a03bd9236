"""The in-memory sink keeps the MongoDB sink's rules and counts, so the worker's unit tests on it mean
what they would against MongoDB: guarded writes, truncate markers, what is counted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from cdc.archive import folders as archive
from cdc.infra.errors import CdcError
from cdc.sinks.memory import MemorySink, document_key


def doc(key: int, pos: int | None, value: str = "v") -> bytes:
    cdc = b"" if pos is None else b', "_cdc": {"pos": {"$numberLong": "%d"}}' % pos
    return b'{"_id": %d, "v": "%s"%s}\n' % (key, value.encode(), cdc)


def batch(
    tmp_path: Path,
    batch_id: int,
    *,
    upserts: Sequence[bytes] = (),
    deletes: Sequence[bytes] = (),
    truncate: int | None = None,
) -> archive.Batch:
    writer = archive.BatchWriter(tmp_path, batch_id)
    writer.write_many("t", "upsert", list(upserts))
    writer.write_many("t", "delete", list(deletes))
    if truncate is not None:
        writer.truncate("t", truncate)
    writer.finish(batch_id, batch_id, {"mode": "run"})
    return archive.read_batch(writer.publish())


def test_counts_are_what_was_written_and_lines_per_op(tmp_path):
    sink = MemorySink()
    stats = sink.apply(batch(tmp_path, 1, upserts=[doc(1, 10), doc(2, 10)], deletes=[doc(3, 10)]))
    # the delete found nothing: no document deleted, but its line is counted under its op
    assert (stats.upserted, stats.deleted, stats.stale) == (2, 0, 0)
    assert dict(stats.by_collection["t"]) == {"upsert": 2, "delete": 1}
    stats = sink.apply(batch(tmp_path, 2, upserts=[doc(1, 5, "old")], deletes=[doc(2, 20)]))
    assert (stats.upserted, stats.deleted, stats.stale) == (0, 1, 1)
    assert sink.documents("t") == [{"_id": 1, "v": "v", "_cdc": {"pos": 10}}]


def test_a_document_without_a_version_is_matched_by_no_guard(tmp_path):
    sink = MemorySink()
    sink.apply(batch(tmp_path, 1, upserts=[doc(1, 10)]))
    outside = {"_id": 2, "v": "written outside"}
    sink.collections["t"][document_key(2)] = outside
    stats = sink.apply(batch(tmp_path, 2, deletes=[doc(2, 30)], truncate=20))
    assert stats.truncated == 1 and stats.deleted == 0  # like {"_cdc.pos": {"$lt": …}}: no match on a missing field
    assert sink.documents("t") == [outside]
    assert sink.sweep("t", 100) == 0
    with pytest.raises(CdcError, match=r"no _cdc\.pos"):
        sink.apply(batch(tmp_path, 3, upserts=[doc(2, 40)]))
