"""Is the clock synchronised? Asked of chronyd, systemd-timesyncd, or the kernel.

* chronyd: ``chronyc -n -c tracking`` (CSV); its leap status is "Normal" only while it is
  synchronised to a source ("Not synchronised" otherwise).
* systemd-timesyncd: it creates ``/run/systemd/timesync/synchronized`` once it has
  synchronised the clock (systemd >= 239), and leaves ``/run/systemd/timesync/`` without it
  before that.
* the kernel: ``adjtimex(2)`` with no modes only reads; it returns TIME_ERROR (5) while the
  clock is unsynchronised (STA_UNSYNC), which both daemons clear once they are in sync. This
  is what timedatectl's "System clock synchronized" shows.

Every answer is a small dict: ``source``, ``synchronised`` (True, False, or None when nobody
can tell) and ``detail``.
"""

from __future__ import annotations

import asyncio
import ctypes
import pathlib
import shutil
from typing import Any

TIME_ERROR = 5
TIMESYNC_DIR = pathlib.Path("/run/systemd/timesync")
CHRONYC_TIMEOUT_S = 5.0


def parse_chrony_tracking(csv_line: str) -> dict[str, Any]:
    """One line of ``chronyc -c tracking``: reference id, name, stratum, ref time, system
    offset, last offset, RMS offset, frequency, residual freq, skew, root delay, root
    dispersion, update interval, leap status."""
    fields = csv_line.strip().split(",")
    if len(fields) < 14:
        raise ValueError(f"unexpected chronyc output: {csv_line.strip()[:120]!r}")
    leap = fields[13]
    stratum = int(fields[2]) if fields[2].isdigit() else None
    offset = float(fields[4]) if fields[4] else None
    synchronised = leap.strip().lower() == "normal"
    name = fields[1] or fields[0]
    detail = (f"synchronised to {name}, stratum {stratum}, offset {offset * 1000:.3f} ms"
              if synchronised and offset is not None else f"leap status {leap}")
    return {"source": "chrony", "synchronised": synchronised, "detail": detail,
            "stratum": stratum, "reference": name, "leap_status": leap}


async def chrony_status(address: str = "") -> dict[str, Any]:
    chronyc = shutil.which("chronyc")
    if chronyc is None:
        return {"source": "chrony", "synchronised": None, "detail": "chronyc not installed"}
    argv = [chronyc, "-n", "-c"]
    if address:
        host, _, port = address.rpartition(":")
        argv += ["-h", host, "-p", port]
    process = await asyncio.create_subprocess_exec(
        *argv, "tracking", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), CHRONYC_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"source": "chrony", "synchronised": None,
                "detail": "chronyc got no answer from chronyd"}
    text = out.decode(errors="replace")
    if process.returncode != 0 or not text.strip():
        problem = (err.decode(errors="replace") or text).strip().splitlines()
        return {"source": "chrony", "synchronised": None,
                "detail": f"chronyd not answering ({problem[-1] if problem else 'no output'})"}
    try:
        return parse_chrony_tracking(text.strip().splitlines()[0])
    except ValueError as error:
        return {"source": "chrony", "synchronised": None, "detail": str(error)}


def timesyncd_status(directory: pathlib.Path = TIMESYNC_DIR) -> dict[str, Any]:
    if not directory.is_dir():
        return {"source": "timesyncd", "synchronised": None,
                "detail": "systemd-timesyncd is not running"}
    if (directory / "synchronized").exists():
        return {"source": "timesyncd", "synchronised": True,
                "detail": "systemd-timesyncd has synchronised the clock"}
    return {"source": "timesyncd", "synchronised": False,
            "detail": "systemd-timesyncd has not synchronised the clock yet"}


def kernel_status() -> dict[str, Any]:
    try:
        # The process's own symbols, libc among them: find_library("c") would run ldconfig
        # (a subprocess, on every selftest) to find what is already loaded.
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(256)  # struct timex; modes = 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError) as error:
        return {"source": "kernel", "synchronised": None, "detail": f"adjtimex: {error}"}
    if state < 0:
        return {"source": "kernel", "synchronised": None,
                "detail": f"adjtimex failed (errno {ctypes.get_errno()})"}
    if state == TIME_ERROR:
        return {"source": "kernel", "synchronised": False,
                "detail": "the kernel reports the clock unsynchronised (no NTP daemon has "
                "synchronised it)"}
    return {"source": "kernel", "synchronised": True,
            "detail": "the kernel reports the clock synchronised"}


async def clock_status(source: str, chrony_address: str = "") -> dict[str, Any]:
    if source == "chrony":
        return await chrony_status(chrony_address)
    if source == "timesyncd":
        return timesyncd_status()
    if source == "kernel":
        return kernel_status()
    chrony = await chrony_status(chrony_address)
    if chrony["synchronised"] is not None:
        return chrony
    timesyncd = timesyncd_status()
    if timesyncd["synchronised"] is not None:
        return timesyncd
    kernel = kernel_status()
    kernel["detail"] += f" ({chrony['detail']}; {timesyncd['detail']})"
    return kernel
