"""Logging: our own timestamps on a terminal, none (and a priority prefix) under journald."""

from __future__ import annotations

import logging
import os

import pytest

from appliance.logs import RepeatLimiter, setup_logging, under_journald


@pytest.fixture(autouse=True)
def root_logger_restored():
    """setup_logging replaces the root logger's handlers with one on this test's captured
    stderr; left in place, every later test's log lines would go to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_journal_stream_must_match_our_stderr(tmp_path):
    with open(tmp_path / "stream", "w") as stream:
        stat = os.fstat(stream.fileno())
        assert under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}, stream)
        assert not under_journald({"JOURNAL_STREAM": "1:2"}, stream)
        assert not under_journald({}, stream)
        assert not under_journald({"JOURNAL_STREAM": "garbage"}, stream)


def test_under_journald_lines_carry_a_priority_and_no_timestamp(capfd):
    stat = os.fstat(2)
    setup_logging("info", {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
    logging.getLogger("appliance.test").warning("link %s lost", "eth0")
    err = capfd.readouterr().err.strip()
    assert err == "<4>appliance.test: link eth0 lost"


def test_on_a_terminal_lines_carry_a_timestamp(capfd):
    setup_logging("info", {})
    logging.getLogger("appliance.test").info("hello")
    err = capfd.readouterr().err.strip()
    assert err.endswith("INFO    appliance.test: hello") and err[:4].isdigit()


def _record(message: str, created: float, level: int = logging.ERROR, *args):
    record = logging.LogRecord("asyncio", level, __file__, 1, message, args, None)
    record.created = created
    return record


def test_repeated_errors_are_rate_limited_and_the_next_one_says_how_many_were_held():
    limiter = RepeatLimiter(burst=3, interval_s=10.0)
    flood = "socket.accept() out of system resource\nsocket: <fd=7>"
    passed = [limiter.filter(_record(flood, 100.0 + i * 0.0005)) for i in range(13_500)]
    assert sum(passed) == 3
    other = _record("connection from %s refused", 100.5, logging.WARNING, "10.0.0.1")
    assert limiter.filter(other)  # a different message is not held back by the flood
    later = _record(flood, 111.0)
    assert limiter.filter(later) and "13497 more like this held back" in later.getMessage()
    assert all(limiter.filter(_record("tick", float(i), logging.INFO)) for i in range(10))
