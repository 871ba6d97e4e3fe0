"""'jbc support-bundle': one tar.gz a support desk can read, with every secret taken out.

What goes in (each a file in ``jbc-support-<site>-<time>/``):

* ``README.txt`` -- what this is, when, and the list of files;
* ``versions.json`` -- jbcd, Python, the libraries, the kernel, the OS image release;
* ``config.json`` -- the config in force (secret-looking keys redacted) and whether the file on
  disk matches it; ``appliance.toml`` -- the file itself, secret values redacted;
* ``status.json``, ``wan.json``, ``trunks.json``, ``sync.json``, ``phones.json``,
  ``readiness.json`` -- exactly what ``jbc status/wan/trunks/sync/phones --json`` print;
* ``modems.json`` -- each modem's identity (model, firmware, IMEI, USB identity, ports);
* ``selftest.json`` -- a fresh selftest (no test calls) and the last one before it;
* ``journal.jsonl`` -- the event journal of the last 7 days;
* ``jbcd.log`` -- jbcd's own recent log lines (kept in memory since start);
* ``unit.txt`` -- how the unit runs: systemd notify and watchdog, limits, memory.

No call content: no recordings, no call records (their count only), no audio.

Secrets are removed twice. Secret-looking keys are redacted where the data is built (the
journal's own rule), and then every file's text is scrubbed of every secret value jbcd holds:
the directory's SIP passwords and HA1 hashes, the trunks' SIM PINs, the enrolment token, the
device's private key, the storage key. The test
``tests/fieldops/test_support_bundle.py`` checks each known secret of a bench site is absent.
"""

from __future__ import annotations

import base64
import collections
import datetime
import io
import json
import logging
import os
import platform
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any

from appliance import __version__
from appliance.journal import redact

REDACTED = "[REDACTED]"
JOURNAL_DAYS = 7
MAX_JOURNAL_ENTRIES = 50_000
LOG_LINES = 20_000
LIBRARIES = ("pjsua2-python", "cryptography", "pyroute2", "transitions", "sdnotify",
             "pyserial", "prometheus_client", "numpy")
SECRET_ASSIGNMENT = re.compile(
    r"(?im)^(\s*[\w.-]*(?:password|passwd|secret|token|pin|private_key|ha1)[\w.-]*\s*=\s*)"
    r"(\"[^\"\n]*\"|'[^'\n]*'|[^\s#]+)")
"""A TOML line assigning a secret-looking key (``pin = "1234"``, ``enrollment_token = ...``)."""


class LogRing(logging.Handler):
    """jbcd's recent log lines, in memory (the support bundle's jbcd.log)."""

    def __init__(self, capacity: int = LOG_LINES) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log line that cannot be formatted is not worth an error
            self.handleError(record)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove every secret value from ``text`` (longest first, so no part of one survives)."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + f'"{REDACTED}"', text)


def versions() -> dict[str, Any]:
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libraries[name] = None
    release = {}
    try:
        with open("/etc/os-release") as file:
            for line in file:
                key, _, value = line.strip().partition("=")
                if key in ("PRETTY_NAME", "VERSION_ID", "IMAGE_ID", "IMAGE_VERSION", "ID"):
                    release[key] = value.strip('"')
    except OSError:
        pass
    return {"jbcd": __version__, "python": sys.version.split()[0], "libraries": libraries,
            "kernel": platform.release(), "machine": platform.machine(), "os": release}


def unit_facts(notifier: Any) -> str:
    lines = [f"pid {os.getpid()}, uid {os.getuid()}, gid {os.getgid()}"]
    lines.append("systemd notify socket: " + ("yes" if os.environ.get("NOTIFY_SOCKET")
                                              else "no (not started by systemd)"))
    interval = getattr(notifier, "watchdog_interval_s", None)
    lines.append("service watchdog: " + (
        f"armed, ping every {interval:.1f} s, {getattr(notifier, 'pings_sent', 0)} sent, "
        f"{getattr(notifier, 'pings_skipped', 0)} skipped" if interval else "not armed"))
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(("VmRSS", "VmHWM", "Threads", "CapEff", "Seccomp")):
                    lines.append(line.strip())
    except OSError:
        pass
    try:
        with open("/proc/self/limits") as file:
            lines += [line.rstrip() for line in file if "open files" in line]
    except OSError:
        pass
    return "\n".join(lines) + "\n"


def build_tarball(files: Mapping[str, str], *, site: str, secrets: Iterable[str],
                  now: float | None = None) -> tuple[str, bytes]:
    """(file name, tar.gz bytes) of ``files`` scrubbed of ``secrets``. Pure, for tests."""
    now = time.time() if now is None else now
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    safe_site = re.sub(r"[^A-Za-z0-9_.-]+", "-", site) or "site"
    top = f"jbc-support-{safe_site}-{stamp}"
    secrets = list(secrets)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name, text in sorted(files.items()):
            data = scrub(text, secrets).encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mtime = int(now)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
    return f"{top}.tar.gz", buffer.getvalue()


def as_json(value: Any) -> str:
    return json.dumps(redact(value), indent=2, sort_keys=True, default=str) + "\n"


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode()
