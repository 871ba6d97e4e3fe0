#!/usr/bin/env python3
"""The chaos benchmark (issue 14): during one outage with calls up, fill the state dir,
corrupt the journal, SIGKILL jbcd mid-upload and mid-bundle-apply, flood the control socket
and the SIP port, and report what survived.

The site is the outage bench's (:mod:`jbcbench.sitelab`: network namespaces, the cloud, a
simulated LTE modem, pjsua2 desk phones registered to the cloud with the appliance as
backup) with jbcd's state dir on a 16 MiB filesystem of its own; the faults and what is
checked after each are in :mod:`jbcbench.chaos`. Goal: phones and calls served throughout
(every phone registered at the appliance, the held call's audio both ways, a new call after
each fault, jbcd serving again within 5 s of a SIGKILL), 0 call records lost, 0 duplicated.

Needs root (namespaces, mounts, other users). The timeline goes to stderr, one JSON object
to stdout; exit 1 when a goal is missed::

    sudo .venv/bin/python hw-testbench/bench_chaos.py [--handsets 4] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from jbcbench.chaos import ChaosScenario
from jbcbench.diskfaults import SmallFilesystem, can_mount
from jbcbench.sitelab import LabSettings, SiteLab
from jbcbench.timeline import PhoneBoard, Timeline

STATE_DIR_KIB = 16 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handsets", type=int, default=4, help="desk phones (4 to 20)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if not can_mount() or not 4 <= args.handsets <= 20:
        print(json.dumps({"error": "needs root (namespaces, a tmpfs, other users) and 4 to "
                          "20 handsets"}))
        return 2
    started = time.time()
    timeline = Timeline(started, sys.stderr)
    board = PhoneBoard(timeline)
    settings = LabSettings(handsets=args.handsets, profile="tuned", expires_s=20,
                           fast_modems=True, modems=("eg25",), namespaces=True,
                           wan={"hold_down_s": 3.0})
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jbc-chaos-"))
    lab = SiteLab(workdir / "site", settings, on_event=board.on_event)
    disk = SmallFilesystem(workdir / "site" / "jbcd" / "state", size_kib=STATE_DIR_KIB)
    report: dict = {"ok": False, "load": os.getloadavg()}
    closed = False
    try:
        lab.build(lambda text: timeline.add("bench", text))
        with disk:
            lab.start_appliance(lambda text: timeline.add("bench", text))
            lab.wait_appliance_ready(lambda text: timeline.add("bench", text))
            lab.start_phones(lambda text: timeline.add("bench", text))
            report.update(ChaosScenario(lab, timeline, board, disk).run())
            board.closing = True
            lab.keep(workdir / "kept")
            lab.close()  # before the state dir's filesystem goes
            closed = True
    except Exception as error:  # the bench itself failed: say so, in the JSON too
        report["error"] = f"{type(error).__name__}: {error}"
        timeline.add("bench", f"the bench itself failed: {report['error']}", bold=True)
    finally:
        board.closing = True
        if not closed:
            lab.close()
        report["duration_s"] = round(time.time() - started, 1)
        report["load_after"] = os.getloadavg()
        if args.keep:
            report["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
