"""Benchmark: what in-path mode's relay costs while the cloud is up (issue 11 goals).

On loopback, no root needed: the real jbcd in in-path mode (``sip.mode = "in-path"``, WAN
assumed online, so it relays) in front of the cloud stand-in (:mod:`jbcbench.cloud_pbx`,
over verified TLS, in its own process so that it does not share the bench's CPU budget):

* **INVITE -> 180**, through the relay and directly: a caller and a callee both registered
  to the cloud, once through the appliance (caller -> appliance -> cloud -> appliance ->
  callee, Path and Record-Route, two relay hops) and once straight to the cloud; each call
  is challenged by the cloud (digest, nonce reused with a rising nc), rung (180) and refused
  (486). Reported: p50/p99 of each and the difference. Goal: the relay adds <= 2 ms p50
  and <= 10 ms p99.
* **a registration storm**: N handsets (default 2000), each on its own loopback address,
  REGISTER through the appliance at once and answer the cloud's challenge (digest passed
  through untouched); the appliance mirrors each 200. Goals: done in <= 2 s; jbcd's CPU
  <= 1 CPU-s per 1000 relayed registrations (from /proc: the handsets' and the cloud's
  CPU are not counted). For scale, the same storm straight to the cloud stand-in first (a
  Python process too: on 2 cores it shares the machine with jbcd and the handsets).

Prints one JSON object with the machine's load average (the figures are noisy when the
machine is shared).

    python hw-testbench/bench_relay.py [--handsets 2000] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import platform
import resource
import socket
import sys
import tempfile
import time

from jbcbench import regstorm
from jbcbench.cloud_edge import RegionEdge, TestCA, loopback_socket
from jbcbench.cloud_pbx import CloudPbx
from jbcbench.daemon import DaemonProcess
from jbcbench.sipcalls import invite_to_180
from jbcbench.sipdaemon import sip_ports, toml_value

CLOUD = "127.0.66.10"
DOMAIN = "cloud.test"
SERVER_NAME = "sip.bench.cloud.test"
GOALS = {"relay_added_p50_ms": 2.0, "relay_added_p99_ms": 10.0, "storm_2000_s": 2.0,
         "cpu_s_per_1000": 1.0}


def cloud_process(workdir: str, count: int, ready) -> None:
    """The cloud stand-in in a process of its own: SIP over UDP and TLS on CLOUD."""
    async def main() -> None:
        ca = TestCA()
        path = pathlib.Path(workdir)
        site = regstorm.site_of(count)
        credentials = {d["username"]: d["password"] for d in site["devices"]}
        edge = CloudPbx(name="bench", credentials=credentials, realm=DOMAIN,
                        max_expires_s=3600, address=CLOUD)
        def make_socket(address: str, port: int, kind: int) -> socket.socket:
            sock = loopback_socket(kind, address)
            if kind == socket.SOCK_DGRAM:  # room for a storm, as jbcd's own UDP socket has
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            return sock

        region = await RegionEdge.start("bench", CLOUD, SERVER_NAME, ca=ca, certs_dir=path,
                                        make_socket=make_socket, sip_port=0, sips_port=0,
                                        https_port=0, sip_edge=edge)
        edge.ports = {"UDP": region.ports["sip-udp"], "TCP": region.ports["sip-tcp"],
                      "TLS": region.ports["sips"]}
        ca.write_ca(path / "ca.pem")
        ready.send(region.ports)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_appliance(workdir: pathlib.Path, count: int, cloud_ports: dict) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    directory = workdir / "directory.json"
    directory.write_text(json.dumps(regstorm.site_of(count)))
    sip = {"enabled": True, "udp_port": 0, "tcp_port": 0, "mode": "in-path",
           "assume_wan_state": "online", "realm": DOMAIN, "rate_per_source": 10000.0,
           "burst_per_source": 10000.0, "cloud_ca_file": str(workdir.parent / "cloud" /
                                                             "ca.pem")}
    lines = ["[directory]", f"file = {toml_value(directory)}", "[sip]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in sip.items()]
    lines += ["[[sip.cloud_edges]]", f'address = "{CLOUD}"', f"port = {cloud_ports['sips']}",
              'transport = "tls"', f'server_name = "{SERVER_NAME}"']
    return DaemonProcess(workdir, "\n".join(lines) + "\n").start()


def wait_relaying(daemon: DaemonProcess, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not daemon.call("sip.phones").get("relaying"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jbcd does not relay:\n{daemon.log()[-3000:]}")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handsets", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.handsets + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.handsets + 256), hard))
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    result: dict = {"benchmark": "in-path relay",
                    "command": "python hw-testbench/bench_relay.py "
                    + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="jbc-bench-relay-") as tmp:
        root = pathlib.Path(tmp)
        (root / "cloud").mkdir()
        receiver, sender = multiprocessing.Pipe(duplex=False)
        cloud = multiprocessing.Process(target=cloud_process,
                                        args=(str(root / "cloud"), args.handsets + 4, sender),
                                        daemon=True)
        cloud.start()
        try:
            if not receiver.poll(20):
                raise RuntimeError("the cloud stand-in did not start")
            cloud_ports = receiver.recv()
            daemon = start_appliance(root / "jbcd", args.handsets + 4, cloud_ports)
            try:
                appliance_port = sip_ports(daemon)["udp"]
                wait_relaying(daemon)
                time.sleep(0.3)
                appliance = ("127.0.0.1", appliance_port)
                direct = (CLOUD, cloud_ports["sip-udp"])
                relayed = invite_to_180(appliance, args.handsets, args.calls, domain=DOMAIN,
                                        realm=DOMAIN, address_base="127.3.0")
                straight = invite_to_180(direct, args.handsets + 2, args.calls, domain=DOMAIN,
                                         realm=DOMAIN, address_base="127.3.1")
                result["invite_to_180"] = {
                    "through_the_relay": relayed, "direct_to_the_cloud": straight,
                    "relay_added_p50_ms": round(relayed["p50_ms"] - straight["p50_ms"], 3),
                    "relay_added_p99_ms": round(relayed["p99_ms"] - straight["p99_ms"], 3)}
                result["register_storm_direct_to_the_cloud"] = regstorm.storm(
                    direct, args.handsets, cloud.pid, realm=DOMAIN, domain=DOMAIN,
                    address_of=lambda i: regstorm.spread_address(i + args.handsets))
                storm = regstorm.storm(appliance, args.handsets, daemon.proc.pid, realm=DOMAIN,
                                       domain=DOMAIN)
                mirrored = sum(1 for p in daemon.call("sip.phones")["phones"]
                               if p.get("origin") == "cloud")
                storm["mirrored_by_the_appliance"] = mirrored
                result["register_storm"] = storm
            finally:
                daemon.stop()
        finally:
            cloud.terminate()
            cloud.join(5)
    added = result["invite_to_180"]
    storm = result["register_storm"]
    per_thousand = storm.get("appliance_cpu_s_per_1000")
    result["goals"] = {
        "relay_adds_le_2ms_p50": added["relay_added_p50_ms"] <= GOALS["relay_added_p50_ms"],
        "relay_adds_le_10ms_p99": added["relay_added_p99_ms"] <= GOALS["relay_added_p99_ms"],
        "storm_le_2s": storm["registered"] == args.handsets
        and storm["wall_s"] <= GOALS["storm_2000_s"],
        "cpu_le_1s_per_1000": per_thousand is not None
        and per_thousand <= GOALS["cpu_s_per_1000"]}
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "kernel": platform.release(), "load_avg_at_start": load_at_start,
                         "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
