"""What ``cdc run`` reports while it runs: its counters, and a summary line every few seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.worker")

SUMMARY_EVERY_S = 10.0  # `cdc run`: one summary line this often while batches are applied


@dataclass
class RunStats:
    batches: int = 0
    changes: int = 0
    stale: int = 0
    rejected: int = 0
    swept: int = 0  # documents of rows gone removed after snapshots (``Worker._sweep``)
    last_batch: int | None = None
    last_success: float | None = None


class Summary:
    """Every ``every`` seconds, one INFO line for what the worker did since the last tick: batches,
    changes, stale, rejected, then the backlog and its age. A tick that applied nothing and
    rejected nothing prints nothing, so an idle worker stays quiet. ``cdc run`` uses it instead of
    a line per batch (those are debug lines: ``-v``)."""

    def __init__(
        self,
        stats: RunStats,
        backlog: Callable[[], ledger.Backlog | None],
        *,
        every: float = SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.backlog = backlog
        self.every = every
        self.clock = clock
        self._seen = self._counts()
        self._since = clock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def _counts(self) -> tuple[int, int, int, int]:
        return self.stats.batches, self.stats.changes, self.stats.stale, self.stats.rejected

    def tick(self) -> bool:
        """Log the line for the time since the last tick; False, and nothing logged, when nothing happened."""
        counts, now = self._counts(), self.clock()
        batches, changes, stale, rejected = (new - old for new, old in zip(counts, self._seen, strict=True))
        fields: dict[str, Any] = {
            "seconds": round(now - self._since, 1),
            "batches": batches,
            "changes": changes,
            "stale": stale,
            "rejected": rejected,
            "total_batches": counts[0],
        }
        self._seen, self._since = counts, now
        if not (batches or rejected):
            return False
        waiting = self.backlog()
        if waiting is None:
            log.info(
                "last %(seconds).0fs: %(batches)d batches, %(changes)d changes (%(stale)d stale, "
                "%(rejected)d rejected); backlog unknown (PostgreSQL cannot be read)",
                fields,
                extra={"action": "summary"},
            )
            return True
        fields.update(backlog=waiting.changes, lag_s=round(waiting.oldest_age_s, 1))
        log.info(
            "last %(seconds).0fs: %(batches)d batches, %(changes)d changes (%(stale)d stale, "
            "%(rejected)d rejected); backlog %(backlog)d changes, oldest %(lag_s).1fs",
            fields,
            extra={"action": "summary"},
        )
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cdc-summary", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.wait(self.every):
            self.tick()

    def close(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join()
        closer = getattr(self.backlog, "close", None)
        if callable(closer):
            closer()
