"""Fixtures for driver tests against the bench's simulated modems (real ptys, real sysfs
lookups, real serial I/O; timings compressed where the simulator allows)."""

from __future__ import annotations

import pytest

from jbcbench.modems.usb import UsbBus


@pytest.fixture
def bus(tmp_path) -> UsbBus:
    return UsbBus(tmp_path / "bench")
