"""What every bench module uses: a timer, a progress sink that ignores updates, and the worker lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cdc.errors import CheckFailed
from cdc.worker import Worker


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
    """Take the worker lock of the bench's own database (nobody else holds it), or say why not."""
    if not worker.acquire(wait=False):
        raise CheckFailed("bench: another worker holds the worker lock of the bench database")
