"""jbc selftest: the commissioning checklist; jbc config: check and apply appliance.toml."""

from __future__ import annotations

import argparse
import pathlib
import textwrap

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, EXIT_USAGE, ControlClient
from appliance.cli.render import print_json, terminal_width

MARKS = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    selftest = subparsers.add_parser(
        "selftest", parents=[common], help="the commissioning checklist: is this site ready?",
        description="Check everything failover depends on, in under a minute: the config, "
        "each trunk (device, SIM, PIN, signal, network, VoLTE, a test call to "
        "selftest.test_call_number), each WAN probe target and the backup uplink, the cloud "
        "(enrolment, certificate, config bundle), the clock, free space, the watchdog, and "
        "every phone seen with its predicted failover time. Each line is PASS, WARN or FAIL; "
        "each non-pass says what to do. The result is journalled. Exit status: 0 no failure "
        "(warnings allowed), 1 at least one failure (or, with --strict, a warning).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    selftest.add_argument("--no-call", action="store_true",
                          help="skip the trunks' test calls")
    selftest.add_argument("--last", action="store_true",
                          help="show the last result instead of running the checklist")
    selftest.add_argument("--strict", action="store_true",
                          help="exit 1 on warnings too")
    selftest.set_defaults(run=run_selftest)

    config = subparsers.add_parser(
        "config", parents=[common], help="check and apply appliance.toml",
        description="Without an action: the config in force and whether the file on disk "
        "still matches it.")
    config.set_defaults(run=run_config_show)
    actions = config.add_subparsers(dest="config_action", metavar="ACTION")
    check = actions.add_parser(
        "check", parents=[common], help="check a config file without applying it",
        description="Check FILE (default: the file jbcd runs on) with jbcd's own loader; "
        "print the verdict, or the file, key and problem. Exit status 1 when it is refused.")
    check.add_argument("file", nargs="?", type=pathlib.Path, help="the file to check")
    check.set_defaults(run=run_config_check)
    reload = actions.add_parser(
        "reload", parents=[common], help="(admin) apply the config file on disk",
        description="Apply the config file jbcd runs on (what 'systemctl reload jbcd' "
        "does). A broken file is refused and the last good config stays in force.")
    reload.set_defaults(run=run_config_reload)


def run_selftest(client: ControlClient, args: argparse.Namespace) -> int:
    if args.last:
        report = client.call("selftest.last")
    else:
        client.timeout_s = max(client.timeout_s, 75.0)
        report = client.call("selftest.run", {"call": not args.no_call})
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return exit_code(report, strict=args.strict)


def exit_code(report: dict, *, strict: bool = False) -> int:
    """0: no failure (warnings allowed); 1: a failure, or a warning with ``strict``."""
    counts = report.get("counts", {})
    if counts.get("fail"):
        return EXIT_ATTENTION
    if strict and counts.get("warn"):
        return EXIT_ATTENTION
    return EXIT_OK


def render(report: dict) -> str:
    width = terminal_width()
    lines = []
    group = None
    for result in report["results"]:
        if result["group"] != group:
            group = result["group"]
            lines.append(f"{group}:")
        lines += textwrap.wrap(f"{MARKS[result['status']]}  {result['title']}: "
                               f"{result['detail']}", width=width, initial_indent="  ",
                               subsequent_indent="        ")
        if result.get("fix") and result["status"] in ("warn", "fail"):
            lines += textwrap.wrap(f"fix: {result['fix']}", width=width,
                                   initial_indent="        ", subsequent_indent="          ")
    counts = report["counts"]
    lines.append(f"selftest {report['verdict'].upper()}: {counts['pass']} pass, "
                 f"{counts['warn']} warn, {counts['fail']} fail, {counts['skip']} skipped "
                 f"in {report['duration_s']:.1f} s")
    return "\n".join(lines)


def run_config_show(client: ControlClient, args: argparse.Namespace) -> int:
    state = client.call("config.show")
    if args.json:
        print_json(state)
    else:
        print(render_config(state))
    return EXIT_OK if state["in_force"] and not state["problem"] else EXIT_ATTENTION


def render_config(state: dict) -> str:
    if state["builtin"]:
        return f"running on the built-in defaults ({state['digest']}); no config file"
    if state["problem"]:
        return f"{state['source']}: in force {state['digest']}; the file on disk would be " \
            f"refused: {state['problem']}"
    same = "the file on disk is the one in force" if state["in_force"] else \
        f"the file on disk changed ({state['on_disk']}): apply it with 'jbc config reload'"
    return f"{state['source']}: in force {state['digest']}; {same}"


def run_config_check(client: ControlClient, args: argparse.Namespace) -> int:
    if args.file is None:
        result = client.call("config.check")
        verdict = f"{result['source']}: valid"
    else:
        try:
            text = args.file.read_text()
        except (OSError, UnicodeDecodeError) as error:
            print(f"jbc: cannot read {args.file}: {error}")
            return EXIT_USAGE
        result = client.call("config.check", {"text": text, "name": str(args.file)})
        verdict = f"{args.file}: valid" + (" (the same as in force)"
                                           if result["same_as_in_force"] else "")
    if args.json:
        print_json(result)
    else:
        print(verdict)
    return EXIT_OK


def run_config_reload(client: ControlClient, args: argparse.Namespace) -> int:
    state = client.call("config.reload")
    if args.json:
        print_json(state)
    else:
        print(f"reloaded: {render_config(state)}")
    return EXIT_OK
