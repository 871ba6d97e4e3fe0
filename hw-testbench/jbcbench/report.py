"""The outage run's outputs: the figures table on the terminal, the JSON, and the PNG plot of
WAN state, probe round-trip times, registrations and active calls over time."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any, TextIO

from .outage import OutageResult
from .sitelab import OUTAGE_TITLES

WAN_LEVELS = {"starting": 0, "online": 0, "degraded": 1, "recovering": 2, "outage": 3,
              "forced": 3}
WAN_LABELS = ["online", "degraded", "recovering", "outage"]


def _label(result: OutageResult, results: Sequence[OutageResult]) -> str:
    modes = {r.mode for r in results}
    return OUTAGE_TITLES[result.kind] + (f", {result.mode} phones" if len(modes) > 1 else "")


def print_summary(results: Sequence[OutageResult], stream: TextIO) -> None:
    for result in results:
        print(f"\n{_label(result, results)} ({'ok' if result.ok else 'FAILED'})",
              file=stream)
        for name, figure in result.ordered_figures().items():
            print(f"  {name:<22}{figure.describe()}", file=stream)
        for name, figure in result.trunk_figures.items():
            print(f"  {'first call ' + name:<22}{figure.describe()}", file=stream)
        for call in result.calls:
            if not call.ok:
                print(f"  call {call.kind} {call.caller} -> {call.callee}: {call.problem}",
                      file=stream)
        for problem in result.problems:
            print(f"  problem: {problem}", file=stream)
        for item in result.untested:
            print(f"  untested: {item}", file=stream)


SIDE_BY_SIDE = ("detection_s", "all_local_s", "first_local_call_s", "inbound_reached_s",
                "failback_s", "calls_dropped")


def side_by_side(results: Sequence[OutageResult]) -> list[dict[str, Any]]:
    """One row per outage kind and figure, one column per phone mode: the comparison the
    in-path mode is for (also with the first outside call over each trunk)."""
    rows: list[dict[str, Any]] = []
    kinds = list(dict.fromkeys(r.kind for r in results))
    for kind in kinds:
        mine = [r for r in results if r.kind == kind]
        trunks = list(dict.fromkeys(t for r in mine for t in r.trunk_figures))
        for name in (*SIDE_BY_SIDE, *(f"first call {t}" for t in trunks)):
            row: dict[str, Any] = {"outage": kind, "figure": name}
            for result in mine:
                figure = result.trunk_figures.get(name[len("first call "):]) \
                    if name.startswith("first call ") else result.figures.get(name)
                row[result.mode] = None if figure is None else (
                    round(figure.value, 2) if isinstance(figure.value, float) else figure.value)
                row[f"{result.mode} goal"] = None if figure is None else figure.goal
            rows.append(row)
    return rows


def print_side_by_side(results: Sequence[OutageResult], stream: TextIO) -> None:
    modes = list(dict.fromkeys(r.mode for r in results))
    if len(modes) < 2:
        return
    print("\nside by side (seconds from the cut; failback from the restore):", file=stream)
    print(f"  {'outage':<10}{'figure':<26}" + "".join(f"{m:>20}" for m in modes),
          file=stream)
    for row in side_by_side(results):
        cells = []
        for mode in modes:
            value = row.get(mode)
            cells.append(f"{'-' if value is None else value:>20}")
        print(f"  {row['outage']:<10}{row['figure']:<26}" + "".join(cells), file=stream)


def failures(results: Sequence[OutageResult]) -> list[str]:
    out = []
    for result in results:
        where = result.kind if result.mode == "backup-registrar" else \
            f"{result.kind} ({result.mode})"
        for name, figure in {**result.figures, **result.trunk_figures}.items():
            if not figure.met:
                shown = "not reached" if figure.value is None else f"{figure.value:g}"
                out.append(f"{where}: {name} = {shown} {figure.unit} missed its goal "
                           f"({figure.op} {figure.goal:g})")
        out += [f"{where}: call {c.kind} {c.caller} -> {c.callee}: {c.problem}"
                for c in result.calls if not c.ok]
        out += [f"{where}: {problem}" for problem in result.problems]
    return out


def write_json(path: pathlib.Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, pathlib.Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plot(path: pathlib.Path, samples: Sequence[dict[str, Any]],
         results: Sequence[OutageResult], *, start: float, handsets: int,
         title: str) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] - start for s in samples]
    figure, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 9),
                                gridspec_kw={"height_ratios": [1.1, 2, 1.5, 1]})
    wan_axis, rtt_axis, reg_axis, call_axis = axes
    for result in {r.cut_at: r for r in results}.values():  # one span per outage
        end = (result.restored_at or samples[-1]["t"] if samples else result.cut_at) - start
        for axis in axes:
            axis.axvspan(result.cut_at - start, end, color="tab:red", alpha=0.08, lw=0)
        wan_axis.annotate(OUTAGE_TITLES[result.kind], (result.cut_at - start, 3.35),
                          fontsize=8, color="tab:red", annotation_clip=False)
    wan_axis.step(t, [WAN_LEVELS.get(s["wan"], 0) for s in samples], where="post",
                  color="black")
    wan_axis.set_yticks(range(len(WAN_LABELS)), WAN_LABELS)
    wan_axis.set_ylim(-0.4, 3.8)
    wan_axis.set_title(title, fontsize=10)
    wan_axis.set_ylabel("WAN state")
    names = sorted({name for s in samples for name in s["rtt_ms"]})
    for name in names:
        points = [(x, s["rtt_ms"].get(name)) for x, s in zip(t, samples, strict=True)]
        rtt_axis.plot([x for x, _ in points], [y for _, y in points], marker=".", ms=3,
                      lw=0.8, label=name)
    rtt_axis.set_ylabel("probe RTT (ms)")
    rtt_axis.set_yscale("log")
    if names:
        rtt_axis.legend(fontsize=7, ncol=4, loc="upper right")
    reg_axis.step(t, [s["cloud"] for s in samples], where="post", label="at the cloud",
                  color="tab:blue")
    modes = sorted({m for s in samples for m in s.get("served", {})})
    colours = {"backup-registrar": "tab:orange", "in-path": "tab:purple"}
    if modes:
        for mode in modes:
            reg_axis.step(t, [s.get("served", {}).get(mode, 0) for s in samples],
                          where="post", label=f"served locally: {mode}",
                          color=colours.get(mode))
    else:
        reg_axis.step(t, [s["local"] for s in samples], where="post",
                      label="at the appliance", color="tab:orange")
    reg_axis.set_ylim(-0.3, handsets + 0.5)
    reg_axis.set_ylabel("phones")
    reg_axis.legend(fontsize=8, loc="center right")
    call_axis.step(t, [s["calls"] for s in samples], where="post", color="tab:green")
    call_axis.set_ylabel("calls via\nappliance")
    call_axis.set_xlabel("seconds since the bench started")
    call_axis.set_ylim(-0.2, max([s["calls"] for s in samples] + [2]) + 0.5)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
