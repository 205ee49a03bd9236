"""One process-wide stop request: signal handlers set it, long waits and retry back-offs watch it."""

from __future__ import annotations

import signal
import threading

REQUESTED = threading.Event()


def install_handlers() -> threading.Event:
    """SIGTERM and SIGINT request a clean stop (the current write finishes, nothing is lost)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: REQUESTED.set())
    return REQUESTED


def sleep(seconds: float) -> None:
    """A back-off sleep that ends early when a stop is requested."""
    REQUESTED.wait(seconds)
