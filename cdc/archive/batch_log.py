"""A batch's structured log fields, one shape for its "exported" line (export) and its "applied" line
(the worker): JSON logs carry them as fields, text lines show them in their sentence."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def log_fields(
    batch_id: int,
    *,
    seconds: float,
    collections: Mapping[str, Mapping[str, int]],
    digits: int = 6,
    **totals: int,
) -> dict[str, Any]:
    """``batch``, then ``totals`` in the order given (``upserts=…, deletes=…``), ``seconds`` rounded to
    ``digits``, and ``collections``: each collection's counts by op."""
    return {
        "batch": batch_id,
        **totals,
        "seconds": round(seconds, digits),
        "collections": {name: dict(counts) for name, counts in collections.items()},
    }
