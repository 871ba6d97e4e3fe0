"""jbc data erase --confirm: (admin) delete all customer content and say what was deleted."""

from __future__ import annotations

import argparse

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, EXIT_USAGE, ControlClient
from appliance.cli.render import print_json, table


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("data", parents=[common], help="(admin) customer data",
                                   description="Customer content held by the appliance.")
    parser.set_defaults(run=lambda client, args: _usage(parser))
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION")
    erase = actions.add_parser(
        "erase", parents=[common], help="(admin) delete all customer content",
        description="Delete all customer content: the directory (extensions, credentials), "
        "registrations, call records and recordings, and leave nothing of it readable on "
        "disk (deleted rows zeroed, the database's WAL checkpointed and truncated and the file "
        "rebuilt, sealed files removed and the sealing key replaced). It also un-enrols the "
        "appliance, so the cloud sync fetches nothing (no directory, no passwords) until an "
        "admin enrols it again with a new one-time token (sync.enrollment_token, then "
        "'systemctl reload jbcd'); the token used before is refused. Prints what was deleted. "
        "The event journal (the audit trail) is kept, and records this erasure.")
    erase.add_argument("--confirm", action="store_true",
                       help="required: confirms that everything is to be deleted")
    erase.set_defaults(run=run_erase)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def run_erase(client: ControlClient, args: argparse.Namespace) -> int:
    if not args.confirm:
        print("jbc: this deletes all customer content (directory, registrations, call "
              "records, recordings) and un-enrols the appliance; repeat with --confirm to go "
              "ahead")
        return EXIT_USAGE
    result = client.call("data.erase", {"confirm": True})
    if args.json:
        print_json(result)
    else:
        rows = [(name, count) for name, count in result["deleted"].items()]
        print(table(("CONTENT", "DELETED"), rows))
    failed = any(isinstance(v, str) for v in result["deleted"].values())
    return EXIT_ATTENTION if failed else EXIT_OK
