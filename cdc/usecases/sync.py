"""One sync pass: take the worker lock, apply everything up to the outbox position seen now, release."""

from __future__ import annotations

from collections.abc import Collection

from cdc.infra.progress import Progress
from cdc.runtime.worker import Worker


def sync_once(
    worker: Worker, *, wait: bool = True, fast_insert: Collection[str] = (), progress: Progress | None = None
) -> bool:
    """Apply everything up to the outbox position seen now (``progress`` told each batch's changes;
    ``fast_insert``: collections known empty). False when the lock was not taken (another worker
    holds it and ``wait`` is False, or a stop was requested)."""
    if not worker.acquire(wait=wait):
        return False
    try:
        worker.cycle_to_head(fast_insert=fast_insert, progress=progress)
    finally:
        worker.release()
    return True
