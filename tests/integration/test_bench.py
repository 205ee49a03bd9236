"""A smoke run of `cdc bench`'s suite at a few hundred rows: every key, from real measurements.

The benchmark itself never runs here (issue 7): the sizes are too small for the figures to mean
anything, so only their presence and their consistency with the raw times are checked.
"""

from __future__ import annotations

import math

from cdc.devtools.bench import suite


def test_every_bench_key_comes_from_a_measurement(pg_dsn, mongo_uri):
    steps: list[str] = []
    report = suite.run(pg_dsn, mongo_uri, "smoke", steps.append, sizes=suite.SMOKE)

    assert steps[0] == "capture overhead" and len(steps) == 8
    for key in [*suite.TARGETS, *suite.FLOORS]:
        value = report[key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    # the ratios are what the raw times behind them say
    assert report["apply_vs_raw"] == report["apply_seconds"] / report["raw_bulk_write_seconds"]
    assert report["snapshot_vs_raw"] == report["snapshot_seconds"] / report["raw_insert_many_seconds"]
    assert report["incremental_vs_full"] == report["incremental_seconds"] / report["full_seconds"]
    assert report["apply_guard_floor"] == report["guarded_replace_seconds"] / report["unguarded_replace_seconds"]
    assert report["export_changes_per_s"] == report["export_changes"] / report["export_seconds"]
    assert report["export_rss_ratio"] == report["export_rss_mb_1m"] / report["export_rss_mb_10k"]
    assert report["export_changes"] == suite.SMOKE.export_rows and report["apply_changes"] == suite.SMOKE.rows
    assert report["latency_samples"] > 0
    assert report["verify_vs_snapshot"] == report["verify_seconds"] / report["snapshot_seconds"]
    assert report["mapped_incremental_vs_full"] == report["mapped_incremental_seconds"] / report["mapped_full_seconds"]
    assert report["mapped_export_vs_export"] == report["mapped_export_rows_per_s"] / report["export_changes_per_s"]
    assert report["fanout_docs"] >= 20  # the renamed artist sits in every playlist
    assert report["fanout_docs_per_s"] == report["fanout_docs"] / report["fanout_seconds"]
    assert report["notify_latency_p50_ms"] <= report["notify_latency_p99_ms"]
    raw = report["capture_raw_seconds"]
    assert report["capture_overhead_single"] == raw["single_captured_s"] / raw["single_plain_s"]
