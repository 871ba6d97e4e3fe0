"""The last rung of the recovery ladder: drop a hung modem off USB and bring it back.

The kernel re-enumerates a USB device whose ``authorized`` attribute is written 0 then 1, as
if it had been unplugged; the modem's ports come back (under new tty names). A daemon running
as the shipped unit cannot do that itself (``User=jbc``, and ``ProtectKernelTunables=`` makes
/sys read-only for it), so it asks a helper:

* jbcd writes a *request* into its runtime directory (``/run/jbc/modem-reset/``): one small
  JSON file per device, written to a temporary name and renamed into place;
* ``jbc-modem-reset.path`` (``DirectoryNotEmpty=``) starts ``jbc-modem-reset.service``,
  which runs :func:`main` as root with no capabilities and nothing else writable but /sys
  and that directory;
* the helper checks each request and resets the device only if the request names a USB
  device that exists under ``/sys/devices``, carries the vendor:product the request says,
  and has a serial port (a tty) among its interfaces: a modem, which jbcd already drives
  through ``dialout``; a request for anything else is refused and logged. Requests older
  than :data:`MAX_AGE_S` are dropped unread. Every request is removed, done or not, so the
  path unit never loops.

Where jbcd may write ``authorized`` itself (a development machine run as root, the hardware
bench's simulated sysfs), :class:`UsbReset` does it directly and no helper is needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import re
import sys
import time
from collections.abc import Sequence

from drivers.errors import DriverError
from drivers.usbports import UsbTty, reset_usb_device

log = logging.getLogger(__name__)

MAX_AGE_S = 120.0
REQUEST_SUFFIX = ".reset"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class UsbResetUnavailable(DriverError):
    """Neither a direct write to ``authorized`` nor a request to the helper is possible."""


class UsbReset:
    """Resets a modem's USB device: directly when permitted, else through the helper."""

    def __init__(self, *, sysfs: pathlib.Path, requests: pathlib.Path | None,
                 direct: bool = True) -> None:
        self.sysfs = sysfs
        self.requests = requests
        self.direct = direct
        """Try writing ``authorized`` ourselves first (False: always ask the helper)."""

    def reset(self, tty: UsbTty) -> str:
        """Reset the device ``tty`` belongs to; returns how ('direct' or 'requested')."""
        if self.direct:
            try:
                reset_usb_device(tty)
                return "direct"
            except OSError as error:
                if self.requests is None:
                    raise UsbResetUnavailable(
                        f"cannot write {tty.usb_device / 'authorized'} ({error.strerror}) and "
                        "no reset helper is configured") from None
                log.info("cannot reset %s directly (%s); asking the reset helper",
                         tty.usb_device.name, error.strerror)
        elif self.requests is None:
            raise UsbResetUnavailable("no reset helper is configured")
        write_request(self.requests, self.sysfs, tty)
        return "requested"


def write_request(directory: pathlib.Path, sysfs: pathlib.Path, tty: UsbTty) -> pathlib.Path:
    """Drop a reset request for ``tty``'s USB device where the helper looks for them."""
    try:
        directory.mkdir(mode=0o770, parents=True, exist_ok=True)
        directory.chmod(0o770)  # the helper runs with our group: it must delete requests
    except OSError as error:
        raise UsbResetUnavailable(f"cannot create {directory}: {error.strerror}") from None
    device = os.path.relpath(os.path.realpath(tty.usb_device), os.path.realpath(sysfs))
    body = {"device": device, "usb_id": f"{tty.vendor:04x}:{tty.product:04x}",
            "serial": tty.serial, "tty": tty.name, "requested_at": time.time()}
    name = _SAFE_NAME.sub("_", tty.usb_device.name) + REQUEST_SUFFIX
    final = directory / name
    temporary = directory / f".{name}.{os.getpid()}"
    try:
        temporary.write_text(json.dumps(body) + "\n", encoding="utf-8")
        temporary.chmod(0o660)
        temporary.replace(final)
    except OSError as error:
        raise UsbResetUnavailable(f"cannot write {final}: {error.strerror}") from None
    return final


# -- the privileged helper -------------------------------------------------------------------


def serve_requests(directory: pathlib.Path, *, sysfs: pathlib.Path = pathlib.Path("/sys"),
                   now: float | None = None) -> list[tuple[str, str]]:
    """Handle every request in ``directory``; returns (request, outcome) pairs."""
    now = time.time() if now is None else now
    outcomes = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as error:
        log.error("cannot read %s: %s", directory, error.strerror)
        return []
    for name in names:
        path = directory / name
        if not name.endswith(REQUEST_SUFFIX) or name.startswith("."):
            if name.startswith(".") and _age(path, now) > MAX_AGE_S:
                _remove(path)  # a temporary file its writer never renamed
            continue
        try:
            outcome = _serve(path, sysfs=sysfs, now=now)
        except Exception as error:  # one bad request must not stop the others
            outcome = f"refused: {error}"
        finally:
            _remove(path)
        (log.warning if outcome.startswith("refused") else log.info)("%s: %s", name, outcome)
        outcomes.append((name, outcome))
    return outcomes


def _serve(path: pathlib.Path, *, sysfs: pathlib.Path, now: float) -> str:
    if _age(path, now) > MAX_AGE_S:
        return f"refused: older than {MAX_AGE_S:g} s"
    if path.stat().st_size > 4096:
        return "refused: too large to be a request"
    body = json.loads(path.read_text(encoding="utf-8"))
    device_text, usb_id = body.get("device"), body.get("usb_id")
    if not isinstance(device_text, str) or not isinstance(usb_id, str):
        return "refused: no 'device' or 'usb_id'"
    root = pathlib.Path(os.path.realpath(sysfs))
    device = pathlib.Path(os.path.realpath(root / device_text))
    if root / "devices" not in device.parents:
        return f"refused: {device_text} is not a device under {sysfs}/devices"
    vendor, product = _read(device / "idVendor"), _read(device / "idProduct")
    if vendor is None or product is None or not (device / "authorized").exists():
        return f"refused: {device_text} is not a USB device (or is gone)"
    if f"{vendor}:{product}".lower() != usb_id.lower():
        return f"refused: {device_text} is {vendor}:{product}, not {usb_id}"
    if not _has_tty(device):
        return f"refused: {device_text} has no serial port; only modems are reset"
    authorized = device / "authorized"
    authorized.write_text("0\n", encoding="ascii")
    authorized.write_text("1\n", encoding="ascii")
    return f"reset {usb_id} at {device.name}"


def _has_tty(device: pathlib.Path) -> bool:
    for _dirpath, dirnames, _files in os.walk(device, followlinks=False):
        if any(name.startswith(("ttyUSB", "ttyACM")) or name == "tty" for name in dirnames):
            return True
    return False


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _age(path: pathlib.Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        log.error("cannot remove %s: %s", path, error.strerror)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jbc-modem-reset",
        description="Reset the USB modems jbcd asked to reset (run by jbc-modem-reset.service "
        "as root when a request appears in the directory).")
    parser.add_argument("directory", type=pathlib.Path, nargs="?",
                        default=pathlib.Path("/run/jbc/modem-reset"),
                        help="where jbcd drops requests (default /run/jbc/modem-reset)")
    parser.add_argument("--sysfs", type=pathlib.Path, default=pathlib.Path("/sys"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.directory.is_dir():
        log.error("%s is not a directory", args.directory)
        return 1
    serve_requests(args.directory, sysfs=args.sysfs)
    return 0  # a refused request is logged; it is not this run's failure


if __name__ == "__main__":
    sys.exit(main())
