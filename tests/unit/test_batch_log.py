"""A batch's log fields: one shape for the exported and the applied line."""

from __future__ import annotations

from collections import Counter

from cdc.archive.batch_log import log_fields


def test_fields_keep_the_totals_order_then_seconds_and_collections() -> None:
    by_collection = {"users": Counter({"upsert": 2, "delete": 1})}
    fields = log_fields(4, upserts=2, deletes=1, stale=0, seconds=0.123456789, collections=by_collection, digits=4)
    assert list(fields) == ["batch", "upserts", "deletes", "stale", "seconds", "collections"]
    assert fields["batch"] == 4 and fields["seconds"] == 0.1235
    assert fields["collections"] == {"users": {"upsert": 2, "delete": 1}}
    assert type(fields["collections"]["users"]) is dict  # plain dicts: JSON logs carry them as objects


def test_seconds_default_to_microseconds() -> None:
    assert log_fields(1, changes=0, seconds=1.23456789, collections={})["seconds"] == 1.234568
