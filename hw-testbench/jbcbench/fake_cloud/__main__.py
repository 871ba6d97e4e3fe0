"""Run the fake cloud as its own process (benchmarks, namespaces, the demo).

    python -m jbcbench.fake_cloud --dir DIR [--host 127.0.0.1] [--port 0]
                                  [--extensions 500] [--version 1]

Prints one JSON line once serving: url, port, ca_file, signing_public_key, token (a fresh
one-time enrolment token), then serves until stdin closes or SIGTERM. Each further line on
stdin is a command: "publish <version> <extensions>", "token", "stats", "fault <name> <value>".
"""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys

from . import CloudKeys, FakeCloud, make_directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jbcbench.fake_cloud")
    parser.add_argument("--dir", type=pathlib.Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--extensions", type=int, default=0,
                        help="publish a bundle with this many extensions at start")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    keys = CloudKeys(args.dir, server_ips=(args.host,))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with FakeCloud(keys, host=args.host, port=args.port) as cloud:
        if args.extensions:
            cloud.publish(make_directory(args.version, extensions=args.extensions))
        _say({"url": cloud.url, "port": cloud.port, "ca_file": str(keys.ca_file),
              "signing_public_key": keys.signing_public_key_b64, "token": cloud.new_token(),
              "server_name": keys.server_name})
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "publish":
                cloud.publish(make_directory(int(words[1]), extensions=int(words[2])))
                _say({"published": int(words[1])})
            elif words[0] == "token":
                _say({"token": cloud.new_token()})
            elif words[0] == "stats":
                with cloud.lock:
                    _say({"call_records": len(cloud.call_records), "events": len(cloud.events),
                          "received": sum(cloud.received_ids.values()),
                          "heartbeats": cloud.heartbeats[-3:], "violations": cloud.violations,
                          "alerts": list(cloud.alerts.values()),
                          "requests": len(cloud.requests)})
            elif words[0] == "fault":
                value = json.loads(words[2])
                setattr(cloud.faults, words[1], value)
                _say({"fault": words[1], "value": value})
            else:
                _say({"error": f"unknown command {words[0]!r}"})
    return 0


def _say(message: dict) -> None:
    print(json.dumps(message), flush=True)


if __name__ == "__main__":
    sys.exit(main())
