"""Logging: our own timestamps on a terminal, none (and a priority prefix) under journald."""

from __future__ import annotations

import logging
import os

from appliance.logs import setup_logging, under_journald


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
