"""The worker's ordering, pending-batch and re-export logic against an in-memory ledger: no servers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cdc.archive import folders as archive
from cdc.infra.errors import MongoUnavailable
from cdc.runtime.batches import InMemoryBatches, write_archive_batch
from cdc.runtime.worker import Worker
from cdc.sinks.base import ApplyStats
from cdc.sinks.memory import MemorySink


class FreeLock:
    """A worker lock that is always held (the fence is tested on real servers)."""

    def acquire(self, wait: bool = True) -> bool:
        return True

    def fence(self, conn: object) -> None:
        return None

    def check(self) -> None:
        return None

    def release(self) -> None:
        return None


def line(n: int) -> bytes:
    return b'{"_id": %d, "_cdc": {"pos": {"$numberLong": "%d"}}}\n' % (n, n)


def worker_for(tmp_path: Path, batches: InMemoryBatches) -> tuple[Worker, MemorySink]:
    sink = MemorySink()
    worker = Worker("", sink, tmp_path, batches=batches, lock=FreeLock(), stop=threading.Event())
    return worker, sink


def claimed(batches: InMemoryBatches, tmp_path: Path, batch_id: int, *, on_disk: bool = True) -> None:
    lines = {"t": [line(batch_id)]}
    batches.claim(batch_id, batch_id * 10, batch_id * 10 + 9, lines)
    if on_disk:
        write_archive_batch(tmp_path, batch_id, batch_id * 10, batch_id * 10 + 9, lines)


def test_pending_batches_are_applied_first_in_batch_order(tmp_path):
    batches = InMemoryBatches()
    for batch_id in (5, 3, 4):
        claimed(batches, tmp_path, batch_id)
    worker, applier = worker_for(tmp_path, batches)
    assert worker.finish_pending() == 3
    assert applier.applies == [3, 4, 5] == applier.applied == batches.applied
    assert batches.pending() == [] and worker.stats.last_batch == 5


def test_a_batch_is_applied_after_any_earlier_pending_one(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 6)  # claimed by another worker just before it lost its lock
    claimed(batches, tmp_path, 8)
    worker, applier = worker_for(tmp_path, batches)
    assert worker.apply_in_order(8) == 2
    assert applier.applies == [6, 8]


def test_after_batch_n_batch_n_plus_1_needs_no_look(tmp_path):
    """A claim commits within its exporter's turn: any batch below N+1 was visible when N was applied."""
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 4)
    claimed(batches, tmp_path, 5)
    worker, applier = worker_for(tmp_path, batches)
    worker.apply_in_order(4)
    claimed(batches, tmp_path, 3)  # cannot happen in PostgreSQL; shows the ledger is not asked again
    worker.apply_in_order(5)
    assert applier.applies == [4, 5]
    assert batches.pending() == [3]


def test_a_missing_folder_is_re_exported_from_the_ledger(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 3, on_disk=False)
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [3]
    assert applier.documents("t") == [{"_id": 3, "_cdc": {"pos": 3}}]


def test_a_damaged_folder_is_re_exported(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 4)
    [(_, upserts)] = archive.read_batch(tmp_path / archive.batch_folder_name(4)).files("upsert")
    upserts.write_bytes(b"damaged\n")
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [4] and applier.applies == [4]


def test_a_folder_of_another_epoch_is_re_exported(tmp_path):
    batches = InMemoryBatches()
    write_archive_batch(tmp_path, 7, 1, 2, {"t": [line(1)]})  # batch 7 of an earlier epoch
    batches.claim(7, 70, 79, {"t": [line(7)]})
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [7]
    assert applier.documents("t") == [{"_id": 7, "_cdc": {"pos": 7}}]


def test_a_stop_leaves_the_rest_pending_for_next_time(tmp_path):
    batches = InMemoryBatches()
    for batch_id in (1, 2, 3):
        claimed(batches, tmp_path, batch_id)
    worker, applier = worker_for(tmp_path, batches)
    apply = applier.apply

    def apply_then_stop(batch: archive.Batch, *, fast_insert: set[str] | None = None) -> ApplyStats:
        worker.stop.set()  # a Ctrl-C during the first batch
        return apply(batch, fast_insert=fast_insert)

    applier.apply = apply_then_stop  # type: ignore[method-assign]
    assert worker.finish_pending() == 1
    assert applier.applies == [1] and batches.pending() == [2, 3]


def test_a_batch_that_failed_half_way_is_applied_again_to_the_same_state(tmp_path):
    """A transient fault after some writes: the batch stays pending (not marked applied), and applying
    it again, idempotently, leaves what one clean apply leaves."""
    batches = InMemoryBatches()
    lines = {"t": [line(n) for n in (1, 2, 3)]}
    batches.claim(1, 1, 3, lines)
    write_archive_batch(tmp_path, 1, 1, 3, lines)
    worker, sink = worker_for(tmp_path, batches)
    sink.fail_next(MongoUnavailable("connection reset"), after_writes=2)
    with pytest.raises(MongoUnavailable):
        worker.finish_pending()
    assert batches.pending() == [1] and sink.applied == [] and len(sink.documents("t")) == 2
    assert worker.finish_pending() == 1
    assert sink.applies == [1, 1] and sink.applied == [1] == batches.applied
    assert sorted(d["_id"] for d in sink.documents("t")) == [1, 2, 3]


def test_an_older_version_is_stale_and_changes_nothing(tmp_path):
    batches = InMemoryBatches()
    newer = b'{"_id": 1, "v": "new", "_cdc": {"pos": {"$numberLong": "20"}}}\n'
    older = b'{"_id": 1, "v": "old", "_cdc": {"pos": {"$numberLong": "10"}}}\n'
    for batch_id, text in ((1, newer), (2, older)):
        batches.claim(batch_id, batch_id, batch_id, {"t": [text]})
        write_archive_batch(tmp_path, batch_id, batch_id, batch_id, {"t": [text]})
    worker, sink = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert sink.documents("t") == [{"_id": 1, "v": "new", "_cdc": {"pos": 20}}]
    assert worker.stats.stale == 1 and worker.stats.changes == 2


def test_the_memory_sink_reports_what_it_holds(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 4)
    worker, sink = worker_for(tmp_path, batches)
    worker.finish_pending()
    held = sink.held()
    assert (held.version, held.batch) == (49, 4)  # the batch's last position, and the batch
    assert sink.applied_batches() == {4}
    assert sink.empty_collections(["t", "u"]) == {"u"}
    assert sink.sweep("t", 5) == 1 and sink.empty_collections(["t"]) == {"t"}
