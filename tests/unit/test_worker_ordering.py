"""The worker's ordering, pending-batch and re-export logic against an in-memory ledger: no servers."""

from __future__ import annotations

import threading
from pathlib import Path

from cdc.archive import folders as archive
from cdc.runtime.batches import InMemoryBatches, write_archive_batch
from cdc.runtime.worker import Worker
from cdc.sinks.mongo.applier import ApplyStats


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


class RecordingApplier:
    def __init__(self) -> None:
        self.applied: list[int] = []
        self.marked: list[int] = []
        self.lines: dict[int, list[bytes]] = {}

    def apply(self, batch: archive.Batch, *, fast_insert: set[str] | None = None) -> ApplyStats:
        self.applied.append(batch.batch_id)
        self.lines[batch.batch_id] = [
            line for _c, path in batch.files("upsert") for line in path.read_bytes().splitlines()
        ]
        return ApplyStats(upserted=len(self.lines[batch.batch_id]))

    def mark_applied(self, batch_id: int) -> None:
        self.marked.append(batch_id)


def line(n: int) -> bytes:
    return b'{"_id": %d, "_cdc": {"pos": {"$numberLong": "%d"}}}\n' % (n, n)


def worker_for(tmp_path: Path, batches: InMemoryBatches) -> tuple[Worker, RecordingApplier]:
    applier = RecordingApplier()
    worker = Worker("", applier, tmp_path, batches=batches, lock=FreeLock(), stop=threading.Event())  # type: ignore[arg-type]
    return worker, applier


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
    assert applier.applied == [3, 4, 5] == applier.marked == batches.applied
    assert batches.pending() == [] and worker.stats.last_batch == 5


def test_a_batch_is_applied_after_any_earlier_pending_one(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 6)  # claimed by another worker just before it lost its lock
    claimed(batches, tmp_path, 8)
    worker, applier = worker_for(tmp_path, batches)
    assert worker.apply_in_order(8) == 2
    assert applier.applied == [6, 8]


def test_after_batch_n_batch_n_plus_1_needs_no_look(tmp_path):
    """A claim commits within its exporter's turn: any batch below N+1 was visible when N was applied."""
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 4)
    claimed(batches, tmp_path, 5)
    worker, applier = worker_for(tmp_path, batches)
    worker.apply_in_order(4)
    claimed(batches, tmp_path, 3)  # cannot happen in PostgreSQL; shows the ledger is not asked again
    worker.apply_in_order(5)
    assert applier.applied == [4, 5]
    assert batches.pending() == [3]


def test_a_missing_folder_is_re_exported_from_the_ledger(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 3, on_disk=False)
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [3]
    assert applier.lines[3] == [line(3).rstrip(b"\n")]


def test_a_damaged_folder_is_re_exported(tmp_path):
    batches = InMemoryBatches()
    claimed(batches, tmp_path, 4)
    [(_, upserts)] = archive.read_batch(tmp_path / archive.batch_folder_name(4)).files("upsert")
    upserts.write_bytes(b"damaged\n")
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [4] and applier.applied == [4]


def test_a_folder_of_another_epoch_is_re_exported(tmp_path):
    batches = InMemoryBatches()
    write_archive_batch(tmp_path, 7, 1, 2, {"t": [line(1)]})  # batch 7 of an earlier epoch
    batches.claim(7, 70, 79, {"t": [line(7)]})
    worker, applier = worker_for(tmp_path, batches)
    worker.finish_pending()
    assert batches.reexported == [7]
    assert applier.lines[7] == [line(7).rstrip(b"\n")]


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
    assert applier.applied == [1] and batches.pending() == [2, 3]
