"""The one stop request: SIGTERM/SIGINT set it; a snapshot's notice line, its "again: at once", and
the exit status of a stopped process. Signals are raised in this process (handlers restored after)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from cdc.infra import shutdown


@pytest.fixture(autouse=True)
def fresh_request(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A request of this test's own, and the handlers put back afterwards."""
    monkeypatch.setattr(shutdown, "REQUESTED", threading.Event())
    monkeypatch.setattr(shutdown._Received, "signum", None)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_signal_requests_a_stop_and_a_second_changes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    stop = shutdown.install_handlers()
    assert stop is shutdown.REQUESTED and not stop.is_set()
    signal.raise_signal(signal.SIGTERM)
    assert stop.is_set()
    signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: `cdc run` finishes its write
    assert shutdown.exit_code() == 128 + signal.SIGTERM
    assert capfd.readouterr().err == ""


def test_sleep_ends_early_once_a_stop_is_requested() -> None:
    shutdown.install_handlers()
    signal.raise_signal(signal.SIGTERM)
    shutdown.sleep(60)  # returns at once


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_snapshot_says_it_stops_and_a_second_signal_stops_it_at_once(
    capfd: pytest.CaptureFixture[str], signum: int, code: int
) -> None:
    stop = shutdown.install_handlers(notice="cdc: stopping after this page", again_stops_at_once=True)
    signal.raise_signal(signum)
    assert stop.is_set()
    assert capfd.readouterr().err == "cdc: stopping after this page\n"
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGTERM if signum == signal.SIGINT else signal.SIGINT)
    assert shutdown.exit_code() == code  # the first signal's
    assert capfd.readouterr().err == ""  # said once


def test_without_a_signal_the_exit_status_is_ctrl_c_s() -> None:
    assert shutdown.exit_code() == 130
