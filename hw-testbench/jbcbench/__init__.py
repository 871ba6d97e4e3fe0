"""The hardware bench: run the real appliance against simulated (or real) hardware and peers.

Bench scripts run as ``python hw-testbench/bench_<topic>.py``: Python puts ``hw-testbench`` on
the path, and this makes the checkout's own ``appliance`` and ``drivers`` importable too, so a
benchmark always measures the working tree it sits in.
"""

import pathlib
import sys

_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)
