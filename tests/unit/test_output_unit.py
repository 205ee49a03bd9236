"""Issue 15, point 4, where no server is involved: the run's summary line, retry lines, the password
refusal, the demo's help and its closing lines."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import click
import pymongo.errors
import pytest
from tenacity import stop_after_attempt, stop_when_event_set

from cdc import cli  # cdc.cli first: it registers the commands
from cdc.commands.demo import APPLIED_VS_MADE, Targets, demo, next_steps
from cdc.infra.config import refuse_password_in_argument
from cdc.infra.errors import UsageError
from cdc.ledger.queries import Backlog
from cdc.runtime.run_summary import RunStats, Summary
from cdc.sinks.mongo import applier as sink


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The records of the ``cdc`` loggers (attached directly: the CLI may have stopped propagation)."""
    logger = logging.getLogger("cdc")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # once each (the root logger holds the same handler)
    caplog.handler.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
        logger.propagate = propagate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_summary_says_what_the_last_interval_applied_and_the_backlog(logged: pytest.LogCaptureFixture) -> None:
    stats, clock = RunStats(), FakeClock()
    readings: list[Backlog | None] = [Backlog(statements=3, changes=25, oldest_age_s=1.25), None]
    summary = Summary(stats, lambda: readings.pop(0), every=10, clock=clock)

    clock.now += 10
    assert summary.tick() is False  # idle: nothing printed
    assert logged.records == []

    stats.batches, stats.changes, stats.stale, stats.rejected = 12, 340, 3, 1
    clock.now += 10
    assert summary.tick() is True
    (line,) = logged.records
    assert line.levelno == logging.INFO and line.name == "cdc.worker"
    assert line.getMessage() == (
        "last 10s: 12 batches, 340 changes (3 stale, 1 rejected); backlog 25 changes, oldest 1.2s"
    )
    assert line.__dict__["action"] == "summary"

    # only what happened since the last line, and a backlog that cannot be read is said so
    stats.batches, stats.changes = 14, 350
    clock.now += 10
    assert summary.tick() is True
    assert logged.records[-1].getMessage() == (
        "last 10s: 2 batches, 10 changes (0 stale, 0 rejected); backlog unknown (PostgreSQL cannot be read)"
    )
    clock.now += 10
    assert summary.tick() is False and len(logged.records) == 2


def test_summary_thread_stops_and_closes_its_backlog_reader() -> None:
    closed = threading.Event()

    class Reader:
        def __call__(self) -> Backlog | None:
            return None

        def close(self) -> None:
            closed.set()

    summary = Summary(RunStats(), Reader(), every=3600)
    summary.start()
    summary.close()  # at once, not after an hour
    assert closed.is_set()


def test_retry_lines_say_the_attempt_of_the_maximum(logged: pytest.LogCaptureFixture) -> None:
    failures = iter(range(3))

    def flaky() -> str:
        if next(failures, None) is not None:
            raise pymongo.errors.AutoReconnect("connection reset")
        return "done"

    wrapped = sink.transient_retry(flaky)
    assert wrapped.retry_with(sleep=lambda _seconds: None)() == "done"  # type: ignore[attr-defined]
    lines = [record.getMessage() for record in logged.records if record.__dict__.get("action") == "mongo_retry"]
    assert [re.search(r"retry \d+/\d+$", line).group() for line in lines] == [  # type: ignore[union-attr]
        "retry 1/12",
        "retry 2/12",
        "retry 3/12",
    ]
    assert logged.records[-1].__dict__["max_attempts"] == 12


def test_the_attempt_limit_is_found_inside_a_combined_stop() -> None:
    assert sink.max_attempts(stop_after_attempt(5) | stop_when_event_set(threading.Event())) == 5
    assert sink.max_attempts(stop_when_event_set(threading.Event())) is None


def test_mongo_password_refusal_names_mongodb_options_not_pgpassfile() -> None:
    with pytest.raises(UsageError) as refused:
        refuse_password_in_argument("--mongo", "mongodb://app:s3cret@db.example/")
    message = str(refused.value)
    assert "CDC_MONGO_URI" in message and "0600 file" in message
    assert "PGPASSFILE" not in message and "s3cret" not in message
    with pytest.raises(UsageError) as demo_refused:
        refuse_password_in_argument("--mongo", "mongodb://app:s3cret@db.example/", "CDC_DEMO_MONGO_URI")
    assert "CDC_DEMO_MONGO_URI" in str(demo_refused.value)
    with pytest.raises(UsageError) as pg_refused:
        refuse_password_in_argument("--pg", "host=db password=s3cret")
    assert "CDC_PG_DSN" in str(pg_refused.value) and "PGPASSFILE" in str(pg_refused.value)


def test_demo_help_states_the_metrics_default_it_uses() -> None:
    assert cli.cli.commands["demo"] is demo
    text = " ".join(demo.get_help(click.Context(demo, info_name="demo")).split())
    assert "[default: 9108, or a free port when 9108 is taken]" in text
    assert "no endpoint" not in text


def targets(embedded: bool, data_dir: str = ".orininu", mongo_db: str = "orininu") -> Targets:
    return Targets(embedded, Path(data_dir), None, None, mongo_db, Path(data_dir) / "archive")


def test_demo_ends_with_commands_to_try_pointed_at_its_servers() -> None:
    lines = next_steps(targets(True), keep=False)
    assert lines[0] == "what to try next:"
    commands = [line.split("  ")[1] for line in lines[1:]]
    assert commands == [
        "cdc demo --keep",
        "cdc status",
        "cdc workload --rate 50 --duration 60 &",
        "cdc run --listen",
        "cdc verify",
        "cdc stack down",
    ]
    kept = next_steps(targets(True, "my data", "shop"), keep=True)
    assert not any("cdc demo --keep" in line for line in kept)
    assert any("cdc verify --data-dir 'my data' --mongo-db shop" in line for line in kept)
    assert any("cdc stack down --data-dir 'my data' " in line for line in kept)
    external = next_steps(targets(False), keep=False)
    assert "export CDC_PG_DSN and CDC_MONGO_URI" in external[1]
    assert not any("stack down" in line or "--keep" in line for line in external)


def test_demo_explains_why_applied_can_exceed_made() -> None:
    text = " ".join(" ".join(APPLIED_VS_MADE).split())
    assert "applied: MongoDB documents written, stale ones included" in text
    assert "one row change refreshes every document that shows the row" in text
    assert "latency probe" in text
