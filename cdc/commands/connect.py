"""What several commands need to reach the pipeline: the sink on the configured MongoDB."""

from __future__ import annotations

from collections.abc import Callable

from cdc.infra.config import Settings
from cdc.sinks.mongo import client as mongo
from cdc.sinks.mongo.applier import Applier


def applier(settings: Settings, *, on_retry: Callable[[], None] | None = None) -> Applier:
    return Applier(mongo.client(settings.mongo_uri())[settings.mongo_db], on_retry=on_retry)
