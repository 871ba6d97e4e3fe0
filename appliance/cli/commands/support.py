"""jbc support-bundle: one tar.gz for the support desk (made by jbcd, written here)."""

from __future__ import annotations

import argparse
import base64
import os
import pathlib

from appliance.cli.client import EXIT_ATTENTION, EXIT_OK, ControlClient
from appliance.cli.render import print_json


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "support-bundle", parents=[common], help="(admin) a tar.gz for the support desk",
        description="Write one tar.gz a support desk can read: config (secrets redacted), "
        "versions, 'jbc status/wan/trunks/sync/phones --json', modem identity, a fresh "
        "selftest (no test calls), the last 7 days of the event journal, jbcd's recent log "
        "and how the unit runs. SIP passwords, PINs, tokens and keys are redacted; no call "
        "content is included. Takes up to a minute (the selftest).")
    parser.add_argument("-o", "--output", type=pathlib.Path, metavar="PATH",
                        help="file or directory to write to (default: the current directory)")
    parser.set_defaults(run=run_bundle)


def run_bundle(client: ControlClient, args: argparse.Namespace) -> int:
    client.timeout_s = max(client.timeout_s, 90.0)
    result = client.call("support.bundle")
    data = base64.b64decode(result.pop("tar_gz_base64"))
    target = args.output or pathlib.Path(".")
    path = target / result["name"] if target.is_dir() else target
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as error:
        print(f"jbc: cannot write {path}: {error.strerror or error}")
        return EXIT_ATTENTION
    result["path"] = str(path)
    if args.json:
        print_json(result)
    else:
        print(f"{path}: {len(data)} bytes, {len(result['files'])} files "
              f"({', '.join(result['files'])})")
    return EXIT_OK
