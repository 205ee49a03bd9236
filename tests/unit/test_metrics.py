"""cdc/runtime/metrics.py without servers: per-table counts, a registry per run, retries, the textfile."""

import socket
from collections import Counter
from pathlib import Path

import pymongo.errors
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc.export.batch import ExportedBatch
from cdc.infra.errors import ConfigError
from cdc.runtime.metrics import Metrics, applied_by_table, changes_by_table
from cdc.sinks.base import ApplyStats
from cdc.sinks.mongo.applier import Applier, transient_retry


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def exported_batch(counts: dict[str, dict[str, int]], seconds: float = 0.2) -> ExportedBatch:
    return ExportedBatch(1, Path("unused"), 0, 1, 2, counts, seconds)


def test_changes_by_table_sums_the_ops_and_leaves_out_zeros():
    counts = {"users": {"upsert": 3, "delete": 2, "rejected": 1}, "songs": {"upsert": 0}, "albums": {"rejected": 4}}
    assert changes_by_table(counts, "upsert", "delete") == {"users": 5}
    assert changes_by_table(counts, "rejected") == {"users": 1, "albums": 4}


def test_applied_is_the_lines_sent_less_the_stale_ones():
    by_collection = {
        "users": Counter({"upsert": 10, "delete": 2, "stale": 3}),
        "songs": Counter({"upsert": 1, "stale": 1}),
        "albums": Counter({"truncated": 7}),
    }
    assert applied_by_table(by_collection) == {"users": 9}


def test_a_batch_is_counted_per_table_with_its_durations():
    metrics = Metrics()
    metrics.batch_exported(exported_batch({"users": {"upsert": 4, "delete": 1}, "songs": {"rejected": 2}}))
    stats = ApplyStats(upserted=3, deleted=1, stale=1)
    stats.count("users", "upsert", 4)
    stats.count("users", "delete", 1)
    stats.count("users", "stale", 1)
    metrics.batch_applied(stats, 0.03)
    metrics.drained()
    found = samples(metrics)
    assert found[("cdc_changes_exported_total", (("table", "users"),))] == 5
    assert found[("cdc_changes_rejected_total", (("table", "songs"),))] == 2
    assert found[("cdc_changes_applied_total", (("table", "users"),))] == 4
    assert found[("cdc_changes_stale_total", (("table", "users"),))] == 1
    assert ("cdc_changes_exported_total", (("table", "songs"),)) not in found
    assert found[("cdc_batch_duration_seconds_count", (("phase", "export"),))] == 1
    assert found[("cdc_batch_duration_seconds_count", (("phase", "apply"),))] == 1
    assert found[("cdc_batch_duration_seconds_sum", (("phase", "apply"),))] == pytest.approx(0.03)
    assert found[("cdc_last_success_timestamp_seconds", ())] > 0
    assert found[("cdc_last_batch_timestamp_seconds", ())] > 0
    # without a DSN there is no backlog reading at all, not a zero
    assert not any(name.startswith("cdc_outbox") for name, _ in found)


def test_each_run_has_its_own_registry():
    first, second = Metrics(), Metrics()
    first.batch_exported(exported_batch({"users": {"upsert": 2}}))
    assert ("cdc_changes_exported_total", (("table", "users"),)) not in samples(second)


def test_retried_bulk_writes_are_counted_through_the_applier_hook():
    metrics = Metrics()
    applier = Applier(None, on_retry=metrics.retried)  # type: ignore[arg-type]  # only the retry hook is used
    failures = iter([pymongo.errors.AutoReconnect("gone"), pymongo.errors.AutoReconnect("gone again")])

    @applier.retrying
    def write() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "written"

    assert write.retry_with(sleep=lambda _seconds: None)() == "written"  # type: ignore[attr-defined]
    assert samples(metrics)[("cdc_mongo_retries_total", ())] == 2


def test_the_module_retry_counts_nothing_of_an_applier_passed_to_it():
    """The hook is the applier's own: a plain ``transient_retry`` no longer finds one in its arguments."""
    metrics = Metrics()
    applier = Applier(None, on_retry=metrics.retried)  # type: ignore[arg-type]
    failures = iter([pymongo.errors.AutoReconnect("gone")])

    @transient_retry
    def write(owner: Applier) -> str:
        if next(failures, None) is not None:
            raise pymongo.errors.AutoReconnect("gone")
        return "written"

    assert write.retry_with(sleep=lambda _seconds: None)(applier) == "written"  # type: ignore[attr-defined]
    assert samples(metrics).get(("cdc_mongo_retries_total", ()), 0) == 0


def test_the_textfile_parses_and_leaves_no_temporary_file(tmp_path):
    metrics = Metrics()
    metrics.batch_exported(exported_batch({"users": {"upsert": 7}}))
    target = tmp_path / "cdc.prom"
    metrics.write_textfile(target)
    families = {family.name: family for family in text_string_to_metric_families(target.read_text())}
    assert families["cdc_changes_exported"].samples[0].value == 7
    assert [path.name for path in tmp_path.iterdir()] == ["cdc.prom"]


def test_a_port_in_use_is_one_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            Metrics().serve("127.0.0.1", port)


def test_textfile_without_once_is_a_usage_error(cdc, tmp_path):
    result = cdc("run", "--metrics-textfile", str(tmp_path / "cdc.prom"))
    assert result.returncode == 2
    assert "--metrics-textfile needs --once" in result.stderr
