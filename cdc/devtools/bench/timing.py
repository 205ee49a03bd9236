"""What every bench module uses: a timer, a progress sink that ignores updates, and the worker lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdc.infra.errors import CheckFailed
from cdc.runtime.worker import Worker


def timed(action: Callable[[], Any]) -> float:
    """Seconds ``action()`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Quiet:
    """A ``Progress`` that ignores its updates (the bench prints its own lines)."""

    def update(self, n: float | None = 1) -> None:
        return None


def acquire(worker: Worker) -> None:
    """Take the worker lock (waiting, as before), or stop with a line when a stop was requested."""
    if not worker.acquire():
        raise CheckFailed("bench: stopped while waiting for the worker lock")
