"""Trunk log lines name their trunk and call whatever the log format (issue 16: the trunk
LoggerAdapter's context was never printed)."""

from __future__ import annotations

import io
import logging

from drivers.logcontext import TrunkLog


def test_the_context_is_in_the_printed_line_and_in_the_record():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # jbcd's journald form
    records = []
    logger = logging.getLogger("test.trunklog")
    logger.addHandler(handler)
    logger.addFilter(lambda record: records.append(record) or True)
    logger.setLevel(logging.INFO)
    try:
        log = TrunkLog(logger, "lte1")
        log.info("opened %s", "/dev/ttyUSB2")
        log.for_call(7).warning("audio problem: %s", "no-downlink")
        TrunkLog(logger, "odd%name").info("100% sure")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "test.trunklog: lte1: opened /dev/ttyUSB2",
        "test.trunklog: lte1 call 7: audio problem: no-downlink",
        "test.trunklog: odd%name: 100% sure",
    ]
    assert (records[1].trunk, records[1].call) == ("lte1", 7)
