"""The README's first command: run the appliance and show what a technician sees.

Starts the real jbcd on its built-in defaults (only its state and runtime dirs are moved into
a temporary directory), then runs the real 'jbc' CLI against it: status, then the event
journal, then a config reload and a clean stop, and the journal once more.
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import tempfile
import time

from jbcbench.daemon import DaemonProcess


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(daemon: DaemonProcess, *argv: str) -> None:
    print(f"$ jbc {' '.join(argv)}", flush=True)
    result = daemon.cli(*argv)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    print(f"(exit status {result.returncode})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jbc-demo-"))
    daemon = DaemonProcess(workdir, None)
    banner(f"starting jbcd on its built-in defaults (state and runtime dirs in {workdir})")
    started = time.monotonic()
    daemon.start()
    print(f"jbcd is serving its control socket after {time.monotonic() - started:.2f} s")
    banner("what a technician sees")
    show(daemon, "status")
    show(daemon, "events")
    banner("reload (SIGHUP) and stop (SIGTERM)")
    daemon.signal(signal.SIGHUP)
    time.sleep(0.5)
    code = daemon.stop()
    print(f"jbcd exited with status {code}")
    banner("the event journal survives the stop; it is SQLite in the state dir")
    daemon.start()
    show(daemon, "events")
    daemon.stop()
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir} (daemon log: {daemon.log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
