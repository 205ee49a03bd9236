"""What several commands need to reach the pipeline: the applier on the configured MongoDB, and the
check that capture is installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cdc import capture, mongo
from cdc.apply import Applier
from cdc.config import Settings
from cdc.errors import ConfigError


def applier(settings: Settings, *, on_retry: Callable[[], None] | None = None) -> Applier:
    return Applier(mongo.client(settings.mongo_uri())[settings.mongo_db], on_retry=on_retry)


def require_capture(conn: Any) -> None:
    if not capture.is_installed(conn):
        raise ConfigError("capture is not installed: run `cdc install` first")
