"""Named fault points for crash tests: off unless ``CDC_FAULT_POINT`` names one.

``CDC_FAULT_POINT=<name>`` SIGKILLs this process the ``CDC_FAULT_AFTER``-th time (default 1) it
passes ``<name>``. The points: ``after_claim``, ``mid_archive``, ``before_commit``,
``after_commit``, ``mid_bulk_write``, ``before_mark_applied``, ``snapshot_chunk``.

``CDC_FAULT_DISK_FULL=<path>``: while a file exists at ``<path>``, archive writes fail with
ENOSPC, as on a full disk; remove the file and space "returns".
"""

from __future__ import annotations

import errno
import os
import signal

POINTS = (
    "after_claim",
    "mid_archive",
    "before_commit",
    "after_commit",
    "mid_bulk_write",
    "before_mark_applied",
    "snapshot_chunk",
)
_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) when a test armed this point."""
    armed = os.environ.get("CDC_FAULT_POINT")
    if armed != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(os.environ.get("CDC_FAULT_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)


def disk_write() -> None:
    """Fail like a full disk while the armed flag file exists."""
    flag = os.environ.get("CDC_FAULT_DISK_FULL")
    if flag and os.path.exists(flag):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
