"""What several commands need to reach the pipeline: the applier on the configured MongoDB, and the
check that capture is installed."""

from __future__ import annotations

from collections.abc import Callable

from cdc import mongo
from cdc.apply import Applier
from cdc.capture import require_installed as require_capture
from cdc.config import Settings

__all__ = ["applier", "require_capture"]


def applier(settings: Settings, *, on_retry: Callable[[], None] | None = None) -> Applier:
    return Applier(mongo.client(settings.mongo_uri())[settings.mongo_db], on_retry=on_retry)
