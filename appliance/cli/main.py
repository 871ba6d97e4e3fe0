"""jbc: the technician CLI. Every command is a thin client of jbcd's control socket."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.cli.client import (
    EXIT_USAGE,
    ClientError,
    ControlClient,
    default_socket_path,
)
from appliance.cli.commands import (
    data,
    drill,
    events,
    gateway,
    selftest,
    sip,
    status,
    support,
    sync,
    trunks,
    update,
    wan,
)

# Each module adds its sub-commands; the order here is the order in 'jbc --help'.
COMMAND_MODULES = [status, wan, events, sip, trunks, gateway, sync, data, selftest,
                   drill, support, update]

EPILOG = """\
exit status:
  0  ok
  1  something needs attention (or the daemon refused the request)
  2  usage error
  3  jbcd unreachable (not running, or wrong --socket)
  4  permission denied (technician commands need the jbc-tech group,
     changes need jbc-admin or root)

environment:
  JBC_SOCKET       control socket path (default /run/jbc/control.sock)
  JBC_RUNTIME_DIR  jbcd's runtime dir; the socket is control.sock inside it
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print machine-readable JSON instead of a table")
    parser = argparse.ArgumentParser(
        prog="jbc",
        description="Technician CLI for the JBC business-continuity appliance: see what it is "
        "doing, and (admins) change what it does.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true",
                        help="print machine-readable JSON instead of a table")
    parser.add_argument("--socket", type=pathlib.Path, metavar="PATH",
                        help="jbcd's control socket (default: $JBC_SOCKET, "
                        "$JBC_RUNTIME_DIR/control.sock or /run/jbc/control.sock)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for jbcd to answer (default 30)")
    parser.add_argument("--version", action="version", version=f"jbc {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if exit_.code in (0, None) else EXIT_USAGE
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    path = args.socket or default_socket_path()
    try:
        with ControlClient(path, timeout_s=args.timeout) as client:
            return args.run(client, args)
    except ClientError as error:
        if args.json:
            import json

            print(json.dumps({"error": {"code": error.code, "message": error.message}}))
        print(f"jbc: {error.message}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
