"""Progress of a long step: a tqdm bar on a terminal, a log line every ``interval`` seconds otherwise.

``track(...)`` yields an object with ``update(n)`` (and ``note(text)`` for what is being worked
on). When stderr is a terminal it draws a bar there, and log lines written to stderr meanwhile
are printed above the bar instead of through it. When stderr is a file or a pipe it logs
``<step>: done/total unit`` at INFO at most every ``interval`` seconds, then one line when the step
ends, so ``--log-format json`` turns them into JSON objects like every other line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from tqdm import tqdm

_log = logging.getLogger("cdc.progress")  # the name users filter on, kept across the move to packages
INTERVAL_S = 10.0


class Progress(Protocol):
    """What long steps report to (``snapshot.prepare_targets`` and ``Worker.cycle`` take one): a tqdm
    bar, ``Lines``, or anything with ``update`` (what it returns is ignored)."""

    def update(self, n: float | None = 1) -> object: ...


class Bar:
    """A tqdm bar on ``stream``."""

    def __init__(self, step: str, total: int | None, unit: str, stream: TextIO, *, scale: bool = False) -> None:
        self.bar: tqdm[Any] = tqdm(total=total, unit=unit, unit_scale=scale, desc=step, file=stream, dynamic_ncols=True)

    def update(self, n: float | None = 1) -> None:
        self.bar.update(n)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


class Lines:
    """Log lines: one at most every ``interval`` seconds while updates come, one when the step ends."""

    def __init__(
        self,
        step: str,
        total: int | None,
        unit: str,
        *,
        logger: logging.Logger,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step, self.total, self.unit = step, total, unit
        self.logger, self.interval, self.clock = logger, interval, clock
        self.done = 0.0
        self.started = self.last_line = clock()
        self.current = ""

    def update(self, n: float | None = 1) -> None:
        self.done += n or 0
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._line(now, finished=False)

    def note(self, text: str) -> None:
        self.current = text

    def close(self) -> None:
        self._line(self.clock(), finished=True)

    def _line(self, now: float, *, finished: bool) -> None:
        seconds = now - self.started
        fields: dict[str, Any] = {
            "step": self.step,
            "done": int(self.done),
            "total": self.total,
            "unit": self.unit,
            "seconds": round(seconds, 3),
            "per_s": round(self.done / seconds, 1) if seconds > 0 else None,
        }
        if finished:
            message = "%(step)s: %(done)d %(unit)s in %(seconds).1fs"
        elif self.total:
            fields["percent"] = round(100 * self.done / self.total, 1)
            message = "%(step)s: %(done)d/%(total)d %(unit)s (%(percent).0f%%)"
        else:
            message = "%(step)s: %(done)d %(unit)s so far"
        if self.current and not finished:
            fields["current"] = self.current
            message += " [%(current)s]"
        # one mapping as the arguments: the text line shows the sentence, a JSON line gets the fields
        self.logger.info(message, fields, extra={"action": "progress_done" if finished else "progress"})


@contextlib.contextmanager
def track(
    step: str,
    *,
    total: int | None = None,
    unit: str = "it",
    scale: bool = False,
    logger: logging.Logger | None = None,
    stream: TextIO | None = None,
    interval: float = INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Bar | Lines]:
    """Report the progress of ``step`` (``total`` in ``unit``) to ``stream`` (default: stderr).

    ``scale`` shows large counts on a bar as 1.2M; ``logger`` (default: this module's) gets the lines.
    """
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream):
        bar = Bar(step, total, unit, stream, scale=scale)
        try:
            with _logs_above_bars(stream):
                yield bar
        finally:
            bar.close()
        return
    lines = Lines(step, total, unit, logger=logger or _log, interval=interval, clock=clock)
    yield lines  # no final line when the step failed: the error says what happened
    lines.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _AboveBars:
    """A stream for log handlers that prints each record above the bars instead of through them."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _logs_above_bars(stream: TextIO) -> Iterator[None]:
    """While a bar is drawn on ``stream``, route the CLI's handlers that write there through tqdm.

    Unlike ``tqdm.contrib.logging`` this keeps the handlers themselves, with their filters (redaction).
    """
    swapped: list[tuple[logging.StreamHandler[Any], Any]] = []
    for name in ("cdc", "generator"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                swapped.append((handler, handler.setStream(_AboveBars(stream))))
    try:
        yield
    finally:
        for handler, original in swapped:
            handler.setStream(original)
