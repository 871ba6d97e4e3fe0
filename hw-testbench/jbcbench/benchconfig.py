"""The bench config file: run the outage scenario against real modems (and other settings).

    hw-testbench/demo --config hw-testbench/bench.example.toml

``[bench]`` holds the scenario's settings (every key optional; the command line wins);
each ``[[trunks]]`` entry is passed to jbcd unchanged (the same keys as appliance.toml's
[[trunks]]: name the modem by ``usb_id`` or by ``at_port``/``audio_port``, see
appliance/appliance.example.toml), and replaces the simulated modems. ``[far_end]`` says how
the bench reaches the world through real trunks: which number it dials out to, whether that
line answers with a tone it can check, and whether someone will ring the trunk for the
inbound test.
"""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any

BENCH_KEYS = {"handsets": int, "profile": str, "outages": list, "cloud_max_expires_s": int,
              "loss_percent": (int, float), "hold_down_s": (int, float), "loopback": bool,
              "expires_s": int}


class BenchConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FarEndConfig:
    number: str
    """What the bench dials (without the outside prefix) to test each real trunk."""
    tone_hz: float | None = None
    """The tone that line answers with, if any (a test line); None: audio is not checked."""
    inbound_wait_s: float = 0.0
    """How long to wait for someone to ring a real trunk (0: skip the inbound test)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    bench: dict[str, Any]
    trunks: tuple[dict[str, Any], ...]
    far_end: FarEndConfig | None


def load_bench_config(path: pathlib.Path) -> BenchConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BenchConfigError(f"{path}: {error}") from None
    unknown = set(data) - {"bench", "trunks", "far_end"}
    if unknown:
        raise BenchConfigError(f"{path}: unknown section {sorted(unknown)[0]!r} (use [bench], "
                               "[[trunks]], [far_end])")
    bench = data.get("bench", {})
    for key, value in bench.items():
        if key not in BENCH_KEYS:
            raise BenchConfigError(f"{path}: bench.{key}: unknown key (known: "
                                   f"{', '.join(sorted(BENCH_KEYS))})")
        wrong_bool = isinstance(value, bool) and BENCH_KEYS[key] is not bool
        if wrong_bool or not isinstance(value, BENCH_KEYS[key]):
            raise BenchConfigError(f"{path}: bench.{key}: {value!r} has the wrong type")
    trunks = data.get("trunks", [])
    if not isinstance(trunks, list) or not all(isinstance(t, dict) for t in trunks):
        raise BenchConfigError(f"{path}: trunks: write each modem as a [[trunks]] table")
    for index, trunk in enumerate(trunks):
        for key in ("name", "kind"):
            if key not in trunk:
                raise BenchConfigError(f"{path}: trunks[{index}].{key}: missing")
        if "usb_id" not in trunk and "at_port" not in trunk:
            raise BenchConfigError(f"{path}: trunks[{index}]: name the modem by usb_id "
                                   "(from lsusb) or by at_port (/dev/serial/by-id/...)")
    far = data.get("far_end")
    far_end = None
    if far is not None:
        if "number" not in far:
            raise BenchConfigError(f"{path}: far_end.number: missing (the number to dial "
                                   "out to, without the outside prefix)")
        unknown = set(far) - {"number", "tone_hz", "inbound_wait_s"}
        if unknown:
            raise BenchConfigError(f"{path}: far_end.{sorted(unknown)[0]}: unknown key")
        far_end = FarEndConfig(number=str(far["number"]), tone_hz=far.get("tone_hz"),
                               inbound_wait_s=float(far.get("inbound_wait_s", 0.0)))
    if trunks and far_end is None:
        raise BenchConfigError(f"{path}: real trunks need a [far_end] with the number to dial")
    return BenchConfig(bench=bench, trunks=tuple(trunks), far_end=far_end)
