"""The pause between retries of a long-running loop (``cdc run``, ``cdc export``) on a fault that may
pass on its own, and its few log lines."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable

from cdc.infra.errors import transient_errors

log = logging.getLogger("cdc.worker")

# Faults that may pass on their own (``CdcError.transient``): a loop retries them, backing off;
# anything else stops it.
TRANSIENT = transient_errors()
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STILL_FAILING_EVERY_S = 300.0
_NUMBERS = re.compile(r"\d+")


class Backoff:
    """The pause between retries of a long-running loop, and its log lines, for a persistent fault.

    The pause starts at 1 s and doubles up to 30 s (±10% jitter, so workers that failed together do not
    retry in step); a success resets it. Logged: the first failure, a failure whose error differs from
    the last one logged (numbers aside: a batch id is not a new error), every 5 minutes "still failing
    (N attempts)", and the recovery, with its count. The other attempts are logged at debug level.

    A small explicit loop rather than tenacity's ``Retrying``: the loop never ends (success resets
    the pause instead of returning), its sleep must end at once on SIGTERM (``stop.wait``), and the
    log lines depend on the error changing, which tenacity's ``before_sleep`` hooks do not track.
    """

    def __init__(
        self,
        stop: threading.Event,
        what: str,
        *,
        first: float = BACKOFF_FIRST_S,
        cap: float = BACKOFF_MAX_S,
        remind_every: float = STILL_FAILING_EVERY_S,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: float = 0.1,
    ) -> None:
        self.stop = stop
        self.what = what
        self.first, self.cap, self.remind_every, self.jitter = first, cap, remind_every, jitter
        self.log = logger or log
        self.clock = clock
        self.attempts = 0
        self.delay = 0.0
        self._since = self._logged_at = 0.0
        self._logged_error = ""

    @property
    def failing(self) -> bool:
        return self.attempts > 0

    def failed(self, exc: BaseException) -> float:
        """Count a failed attempt, log it when it says something new, and return the next pause."""
        now = self.clock()
        self.attempts += 1
        base = min(self.cap, self.first * 2 ** min(self.attempts - 1, 32))
        self.delay = base * (1 + random.uniform(-self.jitter, self.jitter))  # noqa: S311 (not crypto)
        error = str(exc) or type(exc).__name__
        key = _NUMBERS.sub("#", f"{type(exc).__name__}: {error}")
        extra = {"action": "retry", "what": self.what, "attempt": self.attempts, "retry_in_s": round(self.delay, 1)}
        if self.attempts == 1:
            self._since = now
            self.log.warning("%s interrupted: %s; retrying in %.0fs", self.what, error, self.delay, extra=extra)
        elif key != self._logged_error:
            self.log.warning(
                "%s still failing (%d attempts), now: %s; retrying in %.0fs",
                self.what,
                self.attempts,
                error,
                self.delay,
                extra=extra,
            )
        elif now - self._logged_at >= self.remind_every:
            self.log.warning(
                "%s still failing (%d attempts in %.0fs): %s; retrying in %.0fs",
                self.what,
                self.attempts,
                now - self._since,
                error,
                self.delay,
                extra=extra,
            )
        else:
            self.log.debug("%s failed again (attempt %d): %s", self.what, self.attempts, error, extra=extra)
            return self.delay
        self._logged_at, self._logged_error = now, key
        return self.delay

    def wait(self) -> None:
        """Sleep the pause chosen by the last ``failed`` (at once over when ``stop`` is set)."""
        self.stop.wait(self.delay)

    def succeeded(self) -> None:
        """An attempt went through: log the recovery (after failures) and reset the pause."""
        if self.attempts:
            self.log.info(
                "%s recovered after %d failed attempts in %.0fs",
                self.what,
                self.attempts,
                self.clock() - self._since,
                extra={"action": "recovered", "what": self.what, "attempts": self.attempts},
            )
        self.attempts = 0
        self.delay = 0.0
        self._logged_error = ""
