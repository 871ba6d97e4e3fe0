"""The README's first command: a site loses its internet, keeps calling, and gets it back.

    hw-testbench/demo                       one silent blackhole, 6 desk phones, tuned profile
    hw-testbench/demo --mode in-path        the phones use the appliance as outbound proxy
    hw-testbench/demo --mode both           6 backup-registrar and 6 in-path phones side by side
    hw-testbench/demo --outage all          carrier loss, blackhole, heavy loss, cloud-only
    hw-testbench/demo --profile factory     phones on their factory timers (takes ~10 min)
    hw-testbench/demo --quick               the CI variant: 3 phones, all four outages, short
    hw-testbench/demo --config bench.toml   real modems named in a bench config file

Builds the site (see :mod:`jbcbench.sitelab`): network namespaces when run as root, loopback
addresses otherwise; the cloud (SIP edges, DNS, the mutual-TLS API with the site's signed
directory), simulated LTE and analog modems, the real jbcd, and pjsua2 desk phones registered
to the cloud with the appliance as their backup. Then runs the outage scenario
(:mod:`jbcbench.outage`) and prints the timeline as it happens, then the figures with their
goals. Writes ``outage.json`` (figures, goals, calls, timeline), ``outage.png`` (WAN state,
probe RTTs, registrations, calls over time), ``timeline.txt`` and jbcd's log and config to
``hw-testbench/out/<time>/``. Exits 0 when every figure meets its goal and every call worked,
1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import pathlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, TextIO

from .benchconfig import BenchConfig, BenchConfigError, load_bench_config
from .outage import OutageScenario
from .report import failures, plot, print_side_by_side, print_summary, side_by_side, write_json
from .sitelab import MODE_CHOICES, OUTAGE_KINDS, OUTAGE_TITLES, LabSettings, SiteLab
from .timeline import PhoneBoard, Timeline

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUT = BENCH_DIR / "out"


def quick_settings(**overrides: Any) -> LabSettings:
    """The CI variant: three phones on the tuned profile re-registering every 20 s, a 3 s
    hold-down and fast flap-damping decay (four outages back to back), compressed modem
    timings. About four minutes for the four outage kinds."""
    values: dict[str, Any] = {
        "handsets": 3, "profile": "tuned", "expires_s": 20, "fast_modems": True,
        "wan": {"hold_down_s": 3.0, "flap_half_life_s": 10.0}}
    values.update(overrides)
    return LabSettings(**values)


class Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy (timeline.txt)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


def run_bench(settings: LabSettings, kinds: Sequence[str], out_dir: pathlib.Path, *,
              stream: TextIO | None = None, far_end=None, keep_workdir: bool = False,
              command: str = "") -> tuple[dict[str, Any], bool]:
    """Build the lab, run the outages, write the outputs; returns (report, all goals met)."""
    stream = stream or sys.stdout
    out_dir.mkdir(parents=True, exist_ok=True)
    tee = Tee(stream)
    started = time.time()
    timeline = Timeline(started, tee)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jbc-bench-"))
    namespaces, why_not = SiteLab.choose_mode(settings)
    profile = settings.phone_profile
    timeline.heading("JBC appliance outage bench")
    timeline.note(f"outages: {', '.join(OUTAGE_TITLES[k] for k in kinds)}"
                  + ("; fast fail on (the appliance refuses phones' packets to the cloud)"
                     if settings.fast_fail else ""))
    timeline.note(f"{settings.handsets} desk phones"
                  + (" per mode" if settings.mode == "both" else "")
                  + f", {profile.name} profile: {profile.summary}"
                  + (f" (expiry {settings.expires_s} s here)" if settings.expires_s else "")
                  + (f"; SIP over {settings.phone_transport.upper()}"
                     if settings.phone_transport != "udp" else ""))
    for mode, group in settings.groups.items():
        how = ("outbound proxy = the appliance, registrar and fallback = the cloud"
               if mode == "in-path" else "primary = the cloud, backup = the appliance")
        timeline.note(f"{mode} phones: ext {group[0]}..{group[-1]} ({how})")
    if not namespaces:
        timeline.note("")
        timeline.note(f"LOOPBACK MODE ({why_not}): the site runs on loopback addresses, the WAN")
        timeline.note("is a userspace relay (the WAN stand-in) and the outages are injected "
                      "there, between")
        timeline.note("the appliance and phones and the bench's own cloud. Carrier loss cannot "
                      "be shown this")
        timeline.note("way (no link for netlink to watch): it runs as a blackhole. As root, "
                      "the bench uses")
        timeline.note("network namespaces, veth pairs and nftables instead.")
    board = PhoneBoard(timeline)
    lab = SiteLab(workdir / "site", settings, on_event=board.on_event)
    results = []
    scenario = None
    error: str | None = None
    try:
        lab.start(progress=lambda text: timeline.add("bench", text))
        scenario = OutageScenario(lab, timeline, far_end=far_end, board=board)
        scenario.start()
        timeline.add("bench", f"steady state: {settings.handsets} phones registered to the "
                     "cloud, WAN online", bold=True)
        for kind in kinds:
            results.extend(scenario.run_one(kind))
    except Exception as exc:  # report what we have; the run failed
        error = f"{type(exc).__name__}: {exc}"
        timeline.add("bench", f"the bench itself failed: {error}", bold=True)
    finally:
        if scenario is not None:
            scenario.stop()
        board.closing = True
        lab.keep(out_dir)
        lab.close()
        if keep_workdir:
            timeline.note(f"kept the bench's work directory {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results, tee)
    print_side_by_side(results, tee)
    problems = failures(results) + ([f"bench: {error}"] if error else [])
    plot_path = None
    if scenario is not None and scenario.sampler.samples:
        plot_path = plot(out_dir / "outage.png", scenario.sampler.samples, results,
                         start=started, handsets=len(settings.extensions),
                         title=f"{len(settings.extensions)} desk phones ({settings.mode}, "
                         f"{profile.name} profile), "
                         f"{'namespaces' if namespaces else 'loopback'}: "
                         + ", ".join(OUTAGE_TITLES[k] for k in kinds))
    ok = not problems and len(results) == len(kinds) * len(settings.groups)
    report = {
        "ok": ok, "failures": problems, "command": command,
        "started_at": started, "duration_s": round(time.time() - started, 1),
        "mode": "namespaces" if namespaces else "loopback",
        "mode_note": "" if namespaces else f"not root ({why_not}): loopback addresses, WAN "
        "stand-in relay; carrier loss runs as a blackhole",
        "settings": {**{k: v for k, v in dataclasses.asdict(settings).items()
                        if k not in ("real_trunks",)},
                     "phone_profile": profile.to_json(),
                     "cloud_granted_s": settings.cloud_granted_s,
                     "appliance_outage_expires_s": settings.appliance_outage_expires_s,
                     "real_trunks": [t.get("name") for t in settings.real_trunks]},
        "site": lab.site.describe() if lab.site is not None else None,
        "trunks": [{k: v for k, v in e.items() if k in ("name", "kind", "usb_id")}
                   for e in getattr(lab, "trunk_entries", [])],
        "outages": [result.to_json() for result in results],
        "side_by_side": side_by_side(results) if settings.mode == "both" else None,
        "plot": str(plot_path) if plot_path else None,
        "samples": scenario.sampler.samples if scenario is not None else [],
        "timeline": timeline.entries,
        "handset_events": board.events(),
    }
    write_json(out_dir / "outage.json", report)
    (out_dir / "timeline.txt").write_text(tee.copy.getvalue())
    print(f"\nfigures: {out_dir / 'outage.json'}", file=stream)
    if plot_path:
        print(f"plot:    {plot_path}", file=stream)
    print(f"log:     {out_dir / 'jbcd.log'}", file=stream)
    print("\n" + ("all figures met their goals" if ok else
                  "FAILED:\n  " + "\n  ".join(problems or ["incomplete run"])), file=stream)
    return report, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hw-testbench/demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--outage", action="append", choices=(*OUTAGE_KINDS, "all"),
                        help="outage kind (repeatable; default: blackhole)")
    parser.add_argument("--mode", choices=MODE_CHOICES,
                        help="how the phones reach the appliance: backup-registrar (default), "
                        "in-path (outbound proxy), or both side by side (a group of each)")
    parser.add_argument("--profile", choices=("tuned", "factory"), help="desk-phone profile")
    parser.add_argument("--fast-fail", action="store_true", dest="fast_fail", default=None,
                        help="sip.fast_fail: the appliance refuses phones' packets to the "
                        "cloud during an outage (namespaces only)")
    parser.add_argument("--phone-transport", choices=("udp", "tcp"), dest="phone_transport",
                        help="how the desk phones carry SIP (default udp; tcp needs "
                        "namespaces)")
    parser.add_argument("--handsets", type=int, help="number of desk phones (default 6)")
    parser.add_argument("--hold-down", type=float, dest="hold_down_s",
                        help="WAN monitor hold-down in seconds (jbcd's default: 10)")
    parser.add_argument("--loss", type=float, dest="loss_percent",
                        help="packet loss of the heavy-loss outage, percent (default 90)")
    parser.add_argument("--cloud-max-expires", type=int, dest="cloud_max_expires_s",
                        help="longest registration the cloud grants (default 300 s)")
    parser.add_argument("--quick", action="store_true",
                        help="the CI variant: 3 phones, all four outages, short timers")
    parser.add_argument("--loopback", action="store_true",
                        help="loopback addresses and the WAN stand-in even when root")
    parser.add_argument("--config", type=pathlib.Path,
                        help="bench config file (real modems; see bench.example.toml)")
    parser.add_argument("--out", type=pathlib.Path, help="output directory "
                        "(default: hw-testbench/out/<date-time>)")
    parser.add_argument("--keep", action="store_true", help="keep the bench's work directory")
    args = parser.parse_args(argv)

    config: BenchConfig | None = None
    if args.config:
        try:
            config = load_bench_config(args.config)
        except BenchConfigError as error:
            parser.error(str(error))
    bench = dict(config.bench) if config else {}
    for key in ("mode", "profile", "fast_fail", "phone_transport", "handsets", "hold_down_s",
                "loss_percent", "cloud_max_expires_s"):
        if getattr(args, key) is not None:
            bench[key] = getattr(args, key)
    if args.loopback:
        bench["loopback"] = True
    kinds = args.outage or bench.pop("outages", None) or (
        ["all"] if args.quick else ["blackhole"])
    bench.pop("outages", None)
    kinds = list(OUTAGE_KINDS) if "all" in kinds else list(dict.fromkeys(kinds))
    unknown = [k for k in kinds if k not in OUTAGE_KINDS]
    if unknown:
        parser.error(f"unknown outage kind {unknown[0]!r}")
    if bench.get("handsets", 2) < 2 or bench.get("handsets", 2) > 50:
        parser.error("--handsets must be between 2 and 50")
    settings_values: dict[str, Any] = {}
    wan: dict[str, Any] = {}
    if "hold_down_s" in bench:
        wan["hold_down_s"] = float(bench.pop("hold_down_s"))
    if bench.pop("loopback", False):
        settings_values["namespaces"] = False
    settings_values.update(bench)
    if config and config.trunks:
        settings_values["real_trunks"] = config.trunks
    if args.quick:
        quick = quick_settings()
        settings = dataclasses.replace(quick, **settings_values,
                                       wan={**quick.wan, **wan})
    else:
        settings = LabSettings(**settings_values, wan=wan)
    out_dir = args.out or DEFAULT_OUT / time.strftime("%Y%m%d-%H%M%S")
    command = shlex.join(["hw-testbench/demo", *(argv if argv is not None else sys.argv[1:])])
    with contextlib.suppress(KeyboardInterrupt):
        _, ok = run_bench(settings, kinds, out_dir, far_end=config.far_end if config else None,
                          keep_workdir=args.keep, command=command)
        return 0 if ok else 1
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
