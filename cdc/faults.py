"""Named fault points for crash tests: off unless ``CDC_FAULT_POINT`` names one.

``CDC_FAULT_POINT=<name>`` SIGKILLs this process the ``CDC_FAULT_AFTER``-th time (default 1) it
passes ``<name>``. The points: ``after_claim``, ``mid_archive``, ``before_commit``,
``after_commit``, ``mid_bulk_write``, ``before_mark_applied``.
"""

from __future__ import annotations

import os
import signal

POINTS = ("after_claim", "mid_archive", "before_commit", "after_commit", "mid_bulk_write", "before_mark_applied")
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when a test armed this point."""
    armed = os.environ.get("CDC_FAULT_POINT")
    if armed != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(os.environ.get("CDC_FAULT_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
