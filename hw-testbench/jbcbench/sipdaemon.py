"""Start the real jbcd with its SIP registrar and proxy on free loopback ports."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping
from typing import Any

from jbcbench.daemon import DaemonProcess


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def sip_daemon(workdir: pathlib.Path, site: Mapping[str, Any], **sip: Any) -> DaemonProcess:
    """A (not yet started) jbcd serving ``site`` with [sip] enabled on free ports, in an
    outage unless ``assume_wan_state`` says otherwise. Extra keyword arguments are [sip]
    keys."""
    workdir.mkdir(parents=True, exist_ok=True)
    directory = workdir / "directory.json"
    directory.write_text(json.dumps(site))
    options: dict[str, Any] = {"enabled": True, "udp_port": 0, "tcp_port": 0, "tls_port": 0,
                               "assume_wan_state": "outage", **sip}
    lines = ["[directory]", f"file = {toml_value(directory)}", "[sip]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in options.items()]
    return DaemonProcess(workdir, "\n".join(lines) + "\n")


def sip_ports(daemon: DaemonProcess, timeout_s: float = 15.0) -> dict[str, int]:
    """The ports the running daemon's SIP subsystem listens on, once it does."""
    deadline = time.monotonic() + timeout_s
    while True:
        for subsystem in daemon.call("status")["subsystems"]:
            if subsystem["name"] == "sip" and subsystem["details"].get("ports"):
                return subsystem["details"]["ports"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"jbcd's SIP subsystem did not come up:\n{daemon.log()}")
        time.sleep(0.05)
