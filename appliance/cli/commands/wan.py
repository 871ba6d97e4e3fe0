"""jbc wan / jbc failover: the WAN monitor's verdict and figures, and forcing failover.

``jbc wan`` shows the state, since when and why, the link as netlink sees it, what voice would
get over it (loss per packet, jitter, RTT, E-model MOS), and per target its RTT, loss and
MOS. ``jbc failover force|release`` (admin) forces the
appliance to serve phones locally, and hands them back.
"""

from __future__ import annotations

import argparse
import textwrap

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import clock, duration, print_json, table, terminal_width

CALM_STATES = ("online", "starting")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    wan = subparsers.add_parser(
        "wan", parents=[common],
        help="WAN state, cause, link, voice quality (MOS), per-target RTT and loss",
        description="The WAN monitor's state (online, degraded, outage, recovering, forced), "
        "since when and why, the WAN link as netlink reports it, what a call would get over "
        "it (loss per probe packet, jitter, RTT and the ITU-T G.107 E-model MOS of the last "
        "few seconds; a brownout makes the state 'degraded'), and for each probe target its "
        "round-trip time, loss and MOS. Exit status 1 unless the WAN is online (or still "
        "starting).")
    wan.set_defaults(run=run_wan)

    failover = subparsers.add_parser(
        "failover", parents=[common], help="force failover or release it (admin)",
        description="Force the appliance to serve the phones locally (as in an outage) until "
        "released, for maintenance or a drill; releasing hands them back to the cloud after "
        "the hold-down. Needs the admin role; every use is journalled with who did it.")
    actions = failover.add_subparsers(dest="action", metavar="ACTION", required=True)
    force = actions.add_parser("force", parents=[common], help="serve phones locally now",
                               description="Force failover until 'jbc failover release'.")
    force.add_argument("--reason", default="", metavar="TEXT",
                       help="why (kept in the event journal)")
    force.set_defaults(run=run_force)
    release = actions.add_parser(
        "release", parents=[common], help="end a forced failover",
        description="End a forced failover. When fresh probes say the cloud is reachable, "
        "phones go back after the hold-down; otherwise the appliance stays in outage.")
    release.set_defaults(run=run_release)


def run_wan(client: ControlClient, args: argparse.Namespace) -> int:
    report = client.call("wan.status")
    if args.json:
        print_json(report)
    else:
        print(render_wan(report))
    return EXIT_OK if report["configured"] and report["state"] in CALM_STATES \
        and not report.get("failure") else EXIT_ATTENTION


def run_force(client: ControlClient, args: argparse.Namespace) -> int:
    report = client.call("failover.force", {"reason": args.reason} if args.reason else {})
    return _print_change(report, args)


def run_release(client: ControlClient, args: argparse.Namespace) -> int:
    report = client.call("failover.release")
    return _print_change(report, args)


def _print_change(report: dict, args: argparse.Namespace) -> int:
    if args.json:
        print_json(report)
    else:
        print(_headline(report))
        print(f"  cause: {report['cause']}")
    return EXIT_OK


def _headline(report: dict) -> str:
    return (f"{report['state'].upper()} since {clock(report['since'])} "
            f"({duration(report['for_s'])})"
            + (f" on {report['interface']}" if report.get("interface") else ""))


def render_wan(report: dict) -> str:
    width = terminal_width()
    wrap = textwrap.TextWrapper(width=width, initial_indent="  ", subsequent_indent="    ")
    lines = [_headline(report)]
    if report.get("cause"):
        lines += wrap.wrap(f"cause: {report['cause']}")
    if not report["configured"]:
        lines += wrap.wrap("Set [wan] interface and [[wan.targets]] in appliance.toml "
                           "(see appliance.example.toml), then restart jbcd.")
        return "\n".join(lines)
    if report.get("failure"):
        lines += wrap.wrap(f"MONITOR FAILED: {report['failure']}")
    if report.get("forced_by"):
        lines += wrap.wrap(f"forced by {report['forced_by']}; 'jbc failover release' ends it")
    if report.get("restart_needed"):
        lines += wrap.wrap(report["restart_needed"])
    lines += wrap.wrap(f"verdict: {report.get('verdict')}; link: {_link(report.get('link'))}")
    damping = f"flap penalty {report.get('penalty', 0):.1f}"
    if report.get("suppressed"):
        damping += " (link flapping: staying in failover until it calms down)"
    if report.get("hold_down_left_s") is not None:
        damping += f"; back online in {duration(report['hold_down_left_s'])} if it stays up"
    else:
        damping += f"; hold-down {report.get('hold_down_s', 0):g}s"
    lines += wrap.wrap(damping)
    lines += wrap.wrap(_voice(report))
    for problem in report.get("problems") or []:
        lines += wrap.wrap(f"- {problem}")
    rows = []
    for target in report.get("targets", []):
        rtt = target.get("rtt_ms")
        quality = target.get("quality")
        loss = quality["round_trip_loss_pct"] if quality else target.get("loss_pct")
        rows.append((
            target["name"] + ("" if target["healthy"] else " !"),
            target["group"], target["kind"],
            "-" if not rtt else f"{rtt['avg']:.1f}",
            "-" if loss is None else f"{loss:.0f}%" + ("" if quality else "*"),
            f"{quality['mos']:.1f}" if quality else "-",
            target.get("last") or "-",
        ))
    if rows:
        lines.append("")
        lines.append(table(("TARGET", "GROUP", "KIND", "RTT MS", "LOSS", "MOS", "LAST"), rows,
                           width=width))
        lines += textwrap.wrap(
            "RTT over the last minute; LOSS per probe packet over the last few seconds (*: "
            "per probe over the last minute, for probes that do not count packets); "
            "'!' marks a failing target.", width=width)
    return "\n".join(lines)


def _voice(report: dict) -> str:
    quality = report.get("quality")
    if not quality:
        return "voice: no estimate yet (too few ICMP / SIP-over-UDP probe packets)"
    text = (f"voice: MOS {quality['mos']:.1f} (R {quality['r']:.0f}); "
            f"{quality['round_trip_loss_pct']:.0f}% of {quality['packets']} probe packets "
            f"lost, jitter {quality['jitter_ms'] or 0:.0f} ms, RTT {quality['rtt_ms'] or 0:.0f}"
            " ms")
    if report.get("brownout"):
        text += f"; BROWNOUT for {duration(report.get('brownout_for_s') or 0)}"
        if report.get("local_calls"):
            text += ": new calls are served locally"
    return text


def _link(link: dict | None) -> str:
    if not link:
        return "not seen yet"
    if link.get("problem"):
        return link["problem"]
    parts = [f"{link['interface']} up"]
    parts.append(", ".join(link.get("addresses") or []) or "no address")
    parts.append("default route" if link.get("default_route") else "no default route")
    return ", ".join(parts)
