"""cdc.progress: a bar on a terminal, throttled log lines otherwise; cdc.logs renders both kinds of field."""

import io
import logging

import orjson
import pytest

from cdc.infra import logs, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Pipe(io.StringIO):
    def isatty(self):
        return False


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


LOGGER = logging.getLogger("cdc.test_progress")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def progress(self):
        return [record for record in self.records if getattr(record, "action", "").startswith("progress")]


@pytest.fixture
def collected():
    """The records LOGGER emits (attached to it: the CLI's configure() stops propagation from `cdc`)."""
    handler = Collect()
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    yield handler
    LOGGER.removeHandler(handler)


def test_not_a_terminal_logs_at_most_one_line_per_interval_then_one_at_the_end(collected):
    clock, stream = Clock(), Pipe()
    with progress.track("generate", total=100, unit="rows", logger=LOGGER, stream=stream, clock=clock) as bar:
        assert isinstance(bar, progress.Lines)
        bar.note("users")
        for now in (103.0, 109.9):  # nothing before `interval` (10 s) has passed
            clock.now = now
            bar.update(10)
        assert collected.progress() == []
        clock.now = 110.0
        bar.update(10)  # 30 rows at t = 10 s: a line
        clock.now = 115.0
        bar.update(20)  # 5 s later: none
        clock.now = 120.5
        bar.update(20)  # another 10 s: a line
        clock.now = 121.0
        bar.update(20)
    assert stream.getvalue() == ""  # no bar drawn into a pipe
    records = collected.progress()
    assert [record.getMessage() for record in records] == [
        "generate: 30/100 rows (30%) [users]",
        "generate: 70/100 rows (70%) [users]",
        "generate: 90 rows in 21.0s",
    ]
    assert [record.action for record in records] == ["progress", "progress", "progress_done"]
    assert all(record.name == "cdc.test_progress" and record.levelno == logging.INFO for record in records)
    assert records[0].args == {
        "step": "generate",
        "done": 30,
        "total": 100,
        "unit": "rows",
        "seconds": 10.0,
        "per_s": 3.0,
        "percent": 30.0,
        "current": "users",
    }


def test_without_a_total_the_line_counts_what_is_done(collected):
    clock = Clock()
    with progress.track("enqueue", unit="keys", logger=LOGGER, stream=Pipe(), interval=1, clock=clock) as bar:
        clock.now += 1
        bar.update(5_000)
    assert [record.getMessage() for record in collected.records] == [
        "enqueue: 5000 keys so far",
        "enqueue: 5000 keys in 1.0s",
    ]


def test_a_failed_step_logs_no_final_line(collected):
    with pytest.raises(RuntimeError), progress.track("replay", total=3, logger=LOGGER, stream=Pipe()) as bar:
        bar.update(1)
        raise RuntimeError("boom")
    assert collected.records == []


def test_a_terminal_gets_a_bar_and_log_lines_go_above_it(collected):
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logs.TextFormatter())
    cdc_logger = logging.getLogger("cdc")
    cdc_logger.addHandler(handler)
    try:
        with progress.track("replay", total=4, unit="batches", logger=LOGGER, stream=terminal) as bar:
            assert isinstance(bar, progress.Bar)
            assert handler.stream is not terminal  # routed through tqdm.write while the bar is drawn
            bar.note("00000002")
            bar.update(2)
            LOGGER.info("in between")
            bar.update(2)
        assert handler.stream is terminal
    finally:
        cdc_logger.removeHandler(handler)
    drawn = terminal.getvalue()
    assert "replay" in drawn and "4/4" in drawn and "batches" in drawn
    assert "cdc.test_progress: in between\n" in drawn
    assert collected.progress() == []  # a bar, not lines


def test_a_stream_without_isatty_counts_as_not_a_terminal():
    with progress.track("verify", total=1, logger=LOGGER, stream=object()) as bar:  # type: ignore[arg-type]
        assert isinstance(bar, progress.Lines)


def test_json_lines_carry_the_fields_text_lines_the_sentence():
    record = LOGGER.makeRecord(
        LOGGER.name,
        logging.INFO,
        __file__,
        1,
        "batch %(batch)d applied in %(seconds).3fs",
        ({"batch": 7, "seconds": 0.25},),
        None,
        extra={"action": "batch_applied", "dsn": "postgresql://cdc:Hunter2pw@db/app"},
    )
    entry = orjson.loads(logs.JsonFormatter().format(record))
    assert entry["level"] == "info" and entry["logger"] == "cdc.test_progress"
    assert entry["message"] == "batch 7 applied in 0.250s"
    assert entry["batch"] == 7 and entry["seconds"] == 0.25 and entry["action"] == "batch_applied"
    assert entry["dsn"] == "postgresql://cdc:***@db/app"  # fields are redacted too, not only the message
    text = logs.TextFormatter().format(record)
    assert text.endswith("cdc.test_progress: batch 7 applied in 0.250s dsn=postgresql://cdc:***@db/app")
    assert "Hunter2pw" not in text
