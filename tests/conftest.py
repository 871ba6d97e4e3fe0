"""Shared fixtures (integration tests start the real jbcd from this checkout in temp dirs),
and the check that keeps the `integration` mark true."""

from __future__ import annotations

import pytest

from jbcbench.daemon import DaemonProcess
from jbcbench.realio import (  # the check that keeps the `integration` mark true
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_sessionfinish,
)

__all__ = ["pytest_runtest_call", "pytest_runtest_setup", "pytest_sessionfinish"]


@pytest.fixture
def daemon_factory(tmp_path):
    """Make (not yet started) daemons in fresh temp dirs; all are stopped at the end."""
    made: list[DaemonProcess] = []

    def make(config_text: str = "", **kwargs) -> DaemonProcess:
        workdir = tmp_path / f"jbcd{len(made)}"
        workdir.mkdir()
        daemon = DaemonProcess(workdir, config_text, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory):
    """A running jbcd on built-in defaults (plus temp dirs)."""
    return daemon_factory().start()

