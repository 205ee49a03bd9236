"""cdc.usecases.status.Report.problems: what makes `cdc status` exit 1, without servers."""

import threading

import pytest

from cdc.infra.errors import ArchiveWriteError
from cdc.ledger.queries import CycleLog, error_line
from cdc.usecases.status import Report


def _fields(**extra: object) -> dict[str, object]:
    return {
        "backlog_changes": 10,
        "oldest_change_age_s": 2.5,
        "oldest_change_age_is_lower_bound": False,
        "tables_missing_triggers": [],
        "hierarchy_problems": [],
        **extra,
    }


def test_a_healthy_report_has_no_problem_without_thresholds():
    assert Report(_fields()).problems() == []


def test_thresholds_are_exceeded_only_above_them():
    report = Report(_fields())
    assert report.problems(max_backlog=10, max_lag=2.5) == []
    assert report.problems(max_backlog=9, max_lag=2.4) == ["backlog 10 > 9", "lag 2.5s > 2.4s"]


def test_a_lag_read_from_a_claim_says_at_least():
    report = Report(_fields(oldest_change_age_is_lower_bound=True))
    assert report.problems(max_lag=1) == ["lag at least 2.5s > 1s"]


def test_servers_down_lost_triggers_and_hierarchy_problems_come_first_in_that_order():
    report = Report(
        _fields(tables_missing_triggers=["public.users"], hierarchy_problems=["run cdc install --tables public.m"]),
        down=["cannot connect to MongoDB"],
    )
    assert report.problems() == [
        "cannot connect to MongoDB",
        "captured tables lost their triggers: public.users",
        "run cdc install --tables public.m",
    ]


def test_a_report_without_postgresql_fields_only_lists_the_server_down():
    report = Report({"postgresql": "down", "mongodb": "up"}, down=["cannot connect to PostgreSQL"])
    assert report.problems(max_backlog=0, max_lag=0) == ["cannot connect to PostgreSQL"]


# ---- the worker: what `cdc run` recorded of its last cycle (cdc.worker_state) ---------------------


def _worker(**extra: object) -> dict[str, object]:
    worker: dict[str, object] = {
        "worker_running": True,
        "worker_last_cycle": "ok",
        "worker_failing_since": None,
        "worker_error": None,
        "worker_interval_s": 0.5,
        "worker_progress_age_s": 0.2,
    }
    return _fields(**{**worker, **extra})


def test_a_worker_whose_cycles_succeed_in_time_is_no_problem():
    assert Report(_worker()).problems() == []
    assert Report(_worker(worker_progress_age_s=1.5)).problems() == []  # three intervals exactly


def test_a_failing_last_cycle_is_a_problem_naming_since_when_and_the_error():
    report = Report(
        _worker(
            worker_last_cycle="failing",
            worker_failing_since="2025-03-01T10:00:00.000+00:00",
            worker_error="cannot write to /archive: Not a directory",
        )
    )
    assert report.problems() == [
        "the worker has been failing since 2025-03-01T10:00:00.000+00:00: cannot write to /archive: Not a directory"
    ]


def test_a_failing_last_cycle_is_a_problem_even_when_no_worker_runs_any_more():
    report = Report(
        _worker(worker_running=False, worker_last_cycle="failing", worker_failing_since="t", worker_error="boom")
    )
    assert report.problems() == ["the worker has been failing since t: boom"]


def test_a_running_worker_without_a_cycle_for_more_than_three_intervals_is_a_problem():
    assert Report(_worker(worker_progress_age_s=1.6)).problems() == ["no cycle completed for 1.6 s (interval 0.5 s)"]
    hours = Report(_worker(worker_interval_s=300.0, worker_progress_age_s=7200.4))
    assert hours.problems() == ["no cycle completed for 7200 s (interval 300 s)"]


def test_no_stall_is_reported_without_a_running_worker_of_cdc_run():
    # stopped: the lock is free
    assert Report(_worker(worker_running=False, worker_progress_age_s=100.0)).problems() == []
    # the lock is held by another (a snapshot, a repair): status reads no age for it
    assert Report(_worker(worker_progress_age_s=None)).problems() == []
    # `cdc run --once` records no interval
    assert Report(_worker(worker_interval_s=None, worker_progress_age_s=100.0)).problems() == []


def test_an_install_without_the_worker_record_has_no_worker_problem():
    report = Report(_fields(worker_running=True, worker_last_cycle=None, worker_progress_age_s=None))
    assert report.problems() == []


def test_a_failing_worker_comes_after_the_server_and_trigger_problems_and_before_thresholds():
    report = Report(
        _worker(worker_last_cycle="failing", worker_failing_since="t", worker_error="e"),
        down=["cannot connect to MongoDB"],
    )
    assert report.problems(max_backlog=1) == [
        "cannot connect to MongoDB",
        "the worker has been failing since t: e",
        "backlog 10 > 1",
    ]


def test_recording_a_cycle_never_fails_the_worker():
    """PostgreSQL unreachable: the record is skipped; the cycle's own error is raised unchanged."""
    cycles = CycleLog("postgresql://cdc@127.0.0.1:1/none?connect_timeout=2", 0.5, lambda: None, threading.Event())
    cycles.started()
    cycles.watch(lambda: 1)
    with pytest.raises(ArchiveWriteError, match="Not a directory"):
        cycles.watch(_fails)
    cycles.close()


def _fails() -> None:
    raise ArchiveWriteError("cannot write to /a: Not a directory")


def test_a_cycle_cut_short_by_a_stop_is_not_recorded_as_failed():
    stop = threading.Event()
    written: list[str] = []
    cycles = CycleLog("", 0.5, lambda: None, stop)
    cycles._write = lambda name, params: written.append(name) or True  # type: ignore[method-assign]
    with pytest.raises(ArchiveWriteError):
        cycles.watch(_fails)
    stop.set()
    with pytest.raises(ArchiveWriteError):
        cycles.watch(_fails)
    cycles.watch(lambda: None)
    assert written == ["worker_cycle_failed"]


def test_the_error_line_is_one_short_line():
    line = error_line(ArchiveWriteError("cannot\nwrite " + "x" * 1000))
    assert "\n" not in line and len(line) <= 300 and line.startswith("cannot write x")
    assert error_line(ValueError("bad")) == "ValueError: bad"
