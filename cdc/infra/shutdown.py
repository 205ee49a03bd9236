"""One process-wide stop request: signal handlers set it, long waits and retry back-offs watch it."""

from __future__ import annotations

import os
import signal
import threading

REQUESTED = threading.Event()


class _Received:
    signum: int | None = None  # the signal that requested the stop


def install_handlers(*, notice: str | None = None, again_stops_at_once: bool = False) -> threading.Event:
    """SIGTERM and SIGINT request a clean stop (the current write finishes, nothing is lost).

    ``notice``: a line written to stderr when the first signal arrives. ``again_stops_at_once``: a
    second signal stops at once (``KeyboardInterrupt`` in the main thread; nothing is lost either);
    otherwise it changes nothing. ``exit_code`` is then the status to exit with."""

    def request(signum: int, _frame: object) -> None:
        if REQUESTED.is_set():
            if again_stops_at_once:
                raise KeyboardInterrupt
            return
        _Received.signum = signum
        REQUESTED.set()
        if notice is not None:
            os.write(2, f"{notice}\n".encode())

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request)
    return REQUESTED


def exit_code() -> int:
    """The status of a process stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM;
    130 when no handler saw one, a ``KeyboardInterrupt`` from Python's own SIGINT handler)."""
    return 128 + (_Received.signum or signal.SIGINT)


def sleep(seconds: float) -> None:
    """A back-off sleep that ends early when a stop is requested."""
    REQUESTED.wait(seconds)
