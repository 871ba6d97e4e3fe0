"""Benchmark: what hostile or merely crowded SIP traffic costs the real jbcd (issue 14
items 6-8). Each part starts a fresh jbcd on free loopback ports with the default [sip]
settings (UDP and TCP, outage assumed) and prints its figures as JSON.

flood     10,000 unauthenticated REGISTERs, each with a 60 kB header, from 50 addresses
          (200 each, as fast as the daemon answers). Figures: jbcd's RSS before, its peak
          (VmHWM) and its RSS ``--settle`` seconds after the flood. Goal: peak <= 100 MB.
idle-tcp  1100 idle TCP connections from 110 addresses, then 20 handsets from fresh addresses
          register over new TCP connections. jbcd runs under the unit's LimitNOFILE
          (systemd/jbcd.service). Figures: how many registered and how fast, connections
          refused or closed to make room, and log lines written (none may be a flood of
          'accept() out of system resource'). Goal: all 20 register.
shared    500 handsets behind one address (a NAT, an SBC, a DECT base) register at once.
          Goal: <= 1 s with the default per-source limits (Kamailio: 0.16 s).
guesser   A distributed password guesser (30 addresses, 12 guesses each) against extension
          101 while its real phone re-registers from a new address (same Call-ID, as a phone
          whose DHCP lease changed). Figures: whether any guess was ever evaluated after the
          lockouts engaged (a right password from a new address must still get 401), and
          how long the moved phone needed to register. Goal: phone registered at once.

    python hw-testbench/bench_sip_abuse.py [--only flood idle-tcp shared guesser] [--settle 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import re
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time

from appliance.cli.client import DaemonUnreachable
from jbcbench import regstorm, sipua
from jbcbench.daemon import DaemonProcess
from jbcbench.sipdaemon import sip_daemon, sip_ports
from jbcbench.sipnet import PASSWORDS, SITE

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS = ("flood", "idle-tcp", "shared", "guesser")


def unit_nofile() -> int:
    """LimitNOFILE of systemd/jbcd.service (systemd's default soft limit 1024 without it)."""
    text = (REPO / "systemd" / "jbcd.service").read_text()
    match = re.search(r"^LimitNOFILE=(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 1024


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def started(workdir: pathlib.Path, site: dict, **sip) -> tuple[DaemonProcess, dict]:
    daemon = sip_daemon(workdir, site, **sip).start()
    return daemon, sip_ports(daemon)


# -- flood -------------------------------------------------------------------------------------

def flood(workdir: pathlib.Path, *, messages: int, sources: int, header_bytes: int,
          settle_s: float) -> dict:
    daemon, ports = started(workdir, SITE)
    server = ("127.0.0.1", ports["udp"])
    try:
        time.sleep(0.5)
        before = memory_kb(daemon.proc.pid)
        padding = "x" * header_bytes
        socks = []
        for index in range(sources):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.7.{index // 250}.{index % 250 + 1}", 0))
            sock.setblocking(False)
            sock.connect(server)
            socks.append(sock)
        selector = selectors.DefaultSelector()
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        per_source = messages // sources
        sent = {sock: 0 for sock in socks}
        last = dict.fromkeys(socks, 0.0)
        answered = 0
        peak_sampled = 0
        begin = time.monotonic()

        def send(sock: socket.socket) -> None:
            number = sent[sock]
            local = sock.getsockname()
            data = sipua.register("101", "127.0.0.1", local=local,
                                  call_id=f"flood-{local[0]}-{number}", cseq=1,
                                  headers=[("X-Padding", padding)])
            try:
                sock.send(data)
            except BlockingIOError:
                return
            sent[sock] += 1
            last[sock] = time.monotonic()

        for sock in socks:
            send(sock)
        deadline = begin + 300.0
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                try:
                    sock.recv(65535)
                except OSError:
                    continue
                answered += 1
                if sent[sock] < per_source:
                    send(sock)
            now = time.monotonic()
            for sock in socks:  # a datagram lost or dropped: go on after 0.2 s
                if sent[sock] < per_source and now - last[sock] > 0.2:
                    send(sock)
            peak_sampled = max(peak_sampled, memory_kb(daemon.proc.pid)["VmRSS"])
            if all(n >= per_source for n in sent.values()) and now - max(last.values()) > 1.0:
                break
        duration = time.monotonic() - begin
        after = memory_kb(daemon.proc.pid)
        time.sleep(settle_s)
        settled = memory_kb(daemon.proc.pid)
        for sock in socks:
            sock.close()
        selector.close()
        return {
            "messages_sent": sum(sent.values()), "answered": answered, "sources": sources,
            "header_bytes": header_bytes, "duration_s": round(duration, 2),
            "rss_before_mb": round(before["VmRSS"] / 1024, 1),
            "rss_peak_mb": round(after["VmHWM"] / 1024, 1),
            "rss_after_flood_mb": round(after["VmRSS"] / 1024, 1),
            "rss_after_settle_mb": round(settled["VmRSS"] / 1024, 1),
            "settle_s": settle_s,
            "goal_peak_mb": 100, "goal_met": after["VmHWM"] / 1024 <= 100,
        }
    finally:
        daemon.stop()


# -- idle TCP connections ------------------------------------------------------------------------

def tcp_register(user: str, password: str, address: str, port: int, timeout_s: float) -> float:
    """Register over a new TCP connection; returns the seconds it took (raises on failure)."""
    begin = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s,
                                    source_address=(address, 0))
    try:
        sock.settimeout(timeout_s)
        local = sock.getsockname()
        call_id = sipua.unique("tcp-")
        sock.sendall(sipua.register(user, "127.0.0.1", local=local, call_id=call_id, cseq=1,
                                    transport="TCP"))
        challenge = sipua.parse_reply(_read_message(sock))
        answer = sipua.digest_answer(sipua.pick_challenge(challenge), method="REGISTER",
                                     uri="sip:127.0.0.1", username=user, password=password)
        sock.sendall(sipua.register(user, "127.0.0.1", local=local, call_id=call_id, cseq=2,
                                    transport="TCP", authorization=answer))
        reply = sipua.parse_reply(_read_message(sock))
        if reply is None or reply.status != 200:
            raise RuntimeError(f"TCP registration got {reply and reply.status}")
        return time.monotonic() - begin
    finally:
        sock.close()


def _read_message(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65535)
        if not chunk:
            raise ConnectionError("closed by jbcd")
        data += chunk
    return data


def idle_tcp(workdir: pathlib.Path, *, idle: int, idle_sources: int, handsets: int) -> dict:
    nofile = unit_nofile()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))  # jbcd inherits it
    try:
        daemon, ports = started(workdir, SITE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, idle + 512), hard))
    port = ports["tcp"]
    kept: list[socket.socket] = []
    try:
        log_before = daemon.log_path.read_text(errors="replace").count("\n")
        for index in range(idle):
            source = index % idle_sources
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((f"127.8.{source // 250}.{source % 250 + 1}", 0))
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            kept.append(sock)
        time.sleep(2.0)  # let jbcd accept (or refuse) every one of them
        times, failures = [], []
        users = ["101", "102", "103", "104", "105"]  # MD5 credentials (the default digest)
        for index in range(handsets):
            user = users[index % len(users)]
            try:
                times.append(tcp_register(user, PASSWORDS[user], f"127.9.0.{index + 1}", port,
                                          timeout_s=5.0))
            except (OSError, RuntimeError) as error:
                failures.append(f"{type(error).__name__}: {error}")
        try:
            status = next(s for s in daemon.call("status")["subsystems"]
                          if s["name"] == "sip")
            details = status["details"]
        except DaemonUnreachable as error:  # the control socket cannot accept either
            details = {"stats": {}, "control_socket": str(error)}
        stats = details["stats"]
        log = daemon.log_path.read_text(errors="replace").splitlines()[log_before:]
        return {
            "nofile_limit": nofile, "idle_connections": idle, "idle_sources": idle_sources,
            "handsets": handsets, "registered": len(times),
            "register_max_s": round(max(times), 3) if times else None,
            "failures": failures[:5],
            "connections_open": details.get("connections"),
            "control_socket": details.get("control_socket", "answered"),
            "refused": {k: v for k, v in stats.items() if k.startswith("connections_")},
            "log_lines": len(log),
            "log_lines_accept_out_of_resources": sum("out of system resource" in line
                                                     for line in log),
            "goal_met": len(times) == handsets,
        }
    finally:
        for sock in kept:
            sock.close()
        daemon.stop()


# -- many handsets behind one address ----------------------------------------------------------

def shared(workdir: pathlib.Path, *, handsets: int) -> dict:
    daemon, ports = started(workdir, regstorm.site_of(handsets), transports=["udp"])
    try:
        time.sleep(0.3)
        result = regstorm.storm(("127.0.0.1", ports["udp"]), handsets, daemon.proc.pid,
                                address_of=lambda index: "127.10.0.1")
        result["goal_s"] = 1.0
        result["goal_met"] = result["registered"] == handsets and result["wall_s"] <= 1.0
        return result
    finally:
        daemon.stop()


# -- a distributed guesser against a phone that moves --------------------------------------------

class UdpPhone:
    def __init__(self, address: str, server: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(1.0)
        self.sock.connect(server)

    def exchange(self, data: bytes) -> sipua.Reply | None:
        self.sock.send(data)
        try:
            return sipua.parse_reply(self.sock.recv(65535))
        except TimeoutError:
            return None

    def register(self, user: str, password: str, call_id: str, cseq: int) -> int | None:
        """REGISTER, answer the challenge; the final status (None: no answer)."""
        local = self.sock.getsockname()
        first = self.exchange(sipua.register(user, "127.0.0.1", local=local, call_id=call_id,
                                             cseq=cseq))
        if first is None or first.status != 401:
            return None if first is None else first.status
        answer = sipua.digest_answer(sipua.pick_challenge(first), method="REGISTER",
                                     uri="sip:127.0.0.1", username=user, password=password)
        final = self.exchange(sipua.register(user, "127.0.0.1", local=local, call_id=call_id,
                                             cseq=cseq + 1, authorization=answer))
        return None if final is None else final.status

    def close(self) -> None:
        self.sock.close()


def guesser(workdir: pathlib.Path, *, addresses: int, guesses: int) -> dict:
    daemon, ports = started(workdir, SITE)
    server = ("127.0.0.1", ports["udp"])
    try:
        phone = UdpPhone("127.11.0.1", server)
        call_id = sipua.unique("phone-")
        assert phone.register("101", PASSWORDS["101"], call_id, 1) == 200
        phone.close()
        answered = silent = 0
        for index in range(addresses):
            attacker = UdpPhone(f"127.11.1.{index + 1}", server)
            for attempt in range(guesses):
                status = attacker.register("101", f"guess-{index}-{attempt}",
                                           sipua.unique("g-"), 1)
                answered += status is not None
                silent += status is None
            attacker.close()
        late = UdpPhone("127.11.2.1", server)  # the guesser finally tries the right password
        right_guess = late.register("101", PASSWORDS["101"], sipua.unique("g-"), 1)
        late.close()
        moved = UdpPhone("127.11.0.2", server)  # the real phone, new DHCP lease, same Call-ID
        begin = time.monotonic()
        moved_status = moved.register("101", PASSWORDS["101"], call_id, 3)
        moved_s = time.monotonic() - begin
        moved.close()
        journal = daemon.call("events", {"subsystem": "sip"})["events"]
        lockouts = [e["details"] for e in journal if e["kind"] == "lockout"]
        return {
            "guesser_addresses": addresses, "guesses_per_address": guesses,
            "guesses_answered": answered, "guesses_unanswered": silent,
            "right_password_from_guesser_status": right_guess,
            "moved_phone_status": moved_status, "moved_phone_s": round(moved_s, 3),
            "lockouts": {kind: sum(1 for lock in lockouts if lock["kind"] == kind)
                         for kind in sorted({lock["kind"] for lock in lockouts})},
            "goal_met": right_guess != 200 and moved_status == 200,
        }
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--settle", type=float, default=40.0,
                        help="seconds to wait after the flood before reading RSS again")
    args = parser.parse_args()
    results: dict = {"benchmark": "SIP abuse: challenge flood, idle TCP, shared address, "
                                  "distributed guesser",
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()},
                     "uptime_before": uptime()}
    with tempfile.TemporaryDirectory(prefix="jbc-bench-sip-abuse-") as tmp:
        root = pathlib.Path(tmp)
        if "flood" in args.only:
            results["flood"] = flood(root / "flood", messages=10_000, sources=50,
                                     header_bytes=60_000, settle_s=args.settle)
        if "idle-tcp" in args.only:
            results["idle_tcp"] = idle_tcp(root / "idle", idle=1100, idle_sources=110,
                                           handsets=20)
        if "shared" in args.only:
            results["shared_address"] = shared(root / "shared", handsets=500)
        if "guesser" in args.only:
            results["guesser"] = guesser(root / "guesser", addresses=30, guesses=12)
    results["uptime_after"] = uptime()
    results["goals_met"] = all(part.get("goal_met") for part in results.values()
                               if isinstance(part, dict) and "goal_met" in part)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
