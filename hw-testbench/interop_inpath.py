"""Interop: a real SIP client that is not pjsua -- Debian's baresip -- through an in-path
appliance (issue 11, "Must show").

The bench's site (network namespaces: LAN, appliance, WAN router, cloud), jbcd in in-path
mode, two pjsua desk phones (ext 101 and 102) and baresip as ext 103, configured the way a
desk phone is: registrar the cloud's domain, outbound proxy the appliance. Then:

1. **online**: baresip registers through the relay to the cloud stand-in (the cloud's 401 and
   baresip's answer pass through untouched; the appliance mirrors the binding), and calls
   ext 101 *through the cloud* (the cloud's 407 answered, the call routed back to the site
   over the Path the appliance inserted); ext 101 answers, baresip hangs up;
2. a call between two pjsua phones (ext 101 -> 104) is set up through the cloud and kept up;
3. **outage** (a silent blackhole on the WAN): without re-registering, baresip calls ext 102;
   the appliance serves it locally (its own 407 in the cloud's realm, answered by baresip
   with the same credentials); ext 102 answers. The call set up through the cloud before
   the cut keeps its media (phone to phone; the stand-in does not anchor it), and when ext
   101 hangs up its BYE reaches ext 104 through the appliance instead of the dead cloud;
4. prints the evidence: jbcd's log and journal lines, the cloud's view, baresip's own lines,
   and one JSON object with the outcome.

    python hw-testbench/interop_inpath.py          (root: namespaces; about a minute)

Exit status 0 when both calls were answered as described, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from jbcbench.sitelab import LabSettings, SiteLab
from jbcbench.topology import can_build_namespaces
from jbcbench.wanlab import CLOUD_DOMAIN

BARESIP_EXTENSION = "103"
EVIDENCE = re.compile(r"relay|mirror|serving handsets|cloud-link|cloud edge|in-path", re.I)
BARESIP_EVIDENCE = re.compile(
    r"REGISTER|INVITE|ACK|BYE|SIP/2.0 [1-6]\d\d|Record-Route|Path:|Route:|established|"
    r"closed|terminated|error|registered|audio|call|stream|rtp|codec", re.I)


class Baresip:
    """baresip in the LAN namespace, driven over its ctrl_tcp module (netstring JSON)."""

    def __init__(self, lab: SiteLab, workdir: pathlib.Path, *, address: str,
                 password: str) -> None:
        self.lab = lab
        workdir.mkdir(parents=True, exist_ok=True)
        appliance = f"{lab.site.appliance_lan}:{lab.site.sip_port}"
        _write_tone(workdir / "tone.wav")  # ausine wants 48 kHz; G.711 is 8 kHz
        (workdir / "config").write_text(
            "poll_method epoll\n"
            f"sip_listen {address}:5070\n"
            f"net_interface {address}\n"
            f"audio_player aufile,{workdir / 'heard.wav'}\n"
            f"audio_source aufile,{workdir / 'tone.wav'}\n"
            "module_path /usr/lib/baresip/modules\n"
            "module g711.so\nmodule aufile.so\n"
            "module_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n"
            f"ctrl_tcp_listen {address}:4444\n")
        # A desk phone's in-path settings: the AOR and registrar are the cloud's, the
        # outbound proxy is the appliance.
        (workdir / "accounts").write_text(
            f"<sip:{BARESIP_EXTENSION}@{CLOUD_DOMAIN}>;auth_pass={password};"
            f'outbound="sip:{appliance}";regint=60\n')
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*lab.site.handset_prefix(), "baresip", "-s", "-f", str(workdir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace")
        threading.Thread(target=self._read, daemon=True).start()
        self.address = address
        self.events: list[dict] = []
        self._sock = None
        self._buffer = b""

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def connect(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        ns = self.lab.site.bed.lan
        while True:
            sock = ns.open_socket()
            sock.settimeout(1.0)
            try:
                sock.connect((self.address, 4444))
                self._sock = sock
                return
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body + b",")

    def wait_event(self, kind: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event.get("type") == kind:
                    self.events.remove(event)
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"baresip: no {kind} in {timeout_s:g} s; saw "
                                   f"{[e.get('type') for e in self.events][-10:]}")
            try:
                self._buffer += self._sock.recv(65536)
            except TimeoutError:
                continue
            while b":" in self._buffer:
                length, _, rest = self._buffer.partition(b":")
                if not length.isdigit() or len(rest) < int(length) + 1:
                    break
                payload, self._buffer = rest[:int(length)], rest[int(length) + 1:]
                message = json.loads(payload)
                if message.get("event"):
                    self.events.append(message)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _write_tone(path: pathlib.Path, hz: float = 440.0, seconds: float = 30.0) -> None:
    import math
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(
            int(8000 * math.sin(2 * math.pi * hz * n / 8000)).to_bytes(2, "little", signed=True)
            for n in range(int(8000 * seconds))))


def run(workdir: pathlib.Path) -> dict:
    settings = LabSettings(mode="in-path", handsets=4, modems=(), gateway=False,
                           wan={"hold_down_s": 3.0})
    lab = SiteLab(workdir / "site", settings)
    steps: dict[str, object] = {}
    baresip = None
    try:
        lab.start(progress=lambda text: print(f"interop: {text}", file=sys.stderr))
        # ext 103 is baresip's: switch the pjsua phone that had it off (it unregisters).
        lab.handsets.pop(BARESIP_EXTENSION).close()
        alice, bob = lab.handsets["101"], lab.handsets["102"]
        baresip = Baresip(lab, workdir / "baresip", address=lab.site.bed.handset_address(20),
                          password=lab.passwords[BARESIP_EXTENSION])
        baresip.connect()
        lab.wait_for(lambda: BARESIP_EXTENSION in lab.mirrored(), 20,
                     "baresip's registration mirrored by the appliance")
        cloud = lab.site.edges["east"].sip
        steps["registered_through_relay"] = {
            "cloud_path": list(cloud.reach[BARESIP_EXTENSION].path),
            "cloud_sees_source": list(cloud.reach[BARESIP_EXTENSION].source)}
        # 1. online: through the relay and the cloud
        routed_before = cloud.calls_routed
        baresip.command("dial", f"sip:101@{CLOUD_DOMAIN}")
        alice.expect("incoming", timeout=15)
        alice.send("answer")
        baresip.wait_event("CALL_ESTABLISHED", 15)
        steps["online_call_to_101"] = {"answered": True,
                                       "routed_by_the_cloud": cloud.calls_routed - routed_before}
        baresip.command("hangup")
        alice.call_state("DISCONNECTED", timeout=10)
        # 2. a call up through the cloud when the WAN goes
        dave = lab.handsets["104"]
        alice.send("call", uri=f"sip:104@{CLOUD_DOMAIN}")
        dave.expect("incoming", timeout=15)
        dave.send("answer")
        alice.call_state("CONFIRMED", timeout=10)
        # "up" means the ACK got through the cloud and media flows both ways: a call answered
        # in the instant of the cut, whose end-to-end ACK dies in the dead cloud before the
        # outage is declared, is another case (its answerer never starts media; see README)
        lab.wait_for(lambda: alice.stats()["rx"] > 0 and dave.stats()["rx"] > 0, 10,
                     "the call 101 -> 104 carrying media both ways before the cut")
        # 3. outage: served locally at once, from the mirrored bindings
        cut = time.time()
        lab.site.cut("blackhole")
        lab.wait_for(lambda: lab.daemon.call("sip.phones")["serving"], 15,
                     "the appliance serving locally")
        steps["outage_detected_s"] = round(time.time() - cut, 2)
        baresip.command("dial", f"sip:102@{CLOUD_DOMAIN}")
        bob.expect("incoming", timeout=15)
        bob.send("answer")
        baresip.wait_event("CALL_ESTABLISHED", 15)
        calls = lab.daemon.call("sip.calls")["calls"]
        steps["outage_call_to_102"] = {
            "answered": True, "through_the_local_proxy": [
                (c["caller"], c["callee"], c["state"]) for c in calls]}
        baresip.command("hangup")
        bob.call_state("DISCONNECTED", timeout=10)
        before = (alice.stats()["rx"], dave.stats()["rx"])
        time.sleep(1.0)
        after = (alice.stats()["rx"], dave.stats()["rx"])
        hung_up = time.time()
        alice.send("hangup")
        ended = dave.call_state("DISCONNECTED", timeout=10)
        steps["call_through_the_cloud_across_the_cut"] = {
            "media_still_flowing_both_ways": after[0] > before[0] and after[1] > before[1],
            "rtp_packets_in_1s_after_the_cut": [after[0] - before[0], after[1] - before[1]],
            "hang_up_reached_the_other_phone_s": round(ended["t"] - hung_up, 3)}
        lab.site.restore("blackhole")
        ok = True
    except Exception as error:  # report what happened
        steps["error"] = f"{type(error).__name__}: {error}"
        ok = False
    finally:
        log = lab.daemon.log_path.read_text() if lab.daemon and lab.daemon.log_path.exists() \
            else ""
        journal = [f"{e['subsystem']} {e['kind']}: {e['reason']}"
                   for e in lab.daemon.call("events", {"subsystem": "sip"})["events"]] \
            if lab.daemon and ok is not None else []
        bare = list(baresip.lines) if baresip else []
        if baresip:
            baresip.close()
        lab.close()
    return {"ok": ok, "steps": steps,
            "jbcd_log": [line for line in log.splitlines() if EVIDENCE.search(line)][-40:],
            "jbcd_journal_sip": journal[-20:],
            "baresip": [line for line in bare if BARESIP_EVIDENCE.search(line)][-120:]}


def main() -> int:
    ok, why = can_build_namespaces()
    if not ok:
        print(json.dumps({"error": why}))
        return 2
    if shutil.which("baresip") is None:
        print(json.dumps({"error": "baresip is not installed (apt-get install baresip)"}))
        return 2
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="interop-inpath-"))
    try:
        result = run(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result["command"] = "python hw-testbench/interop_inpath.py"
    result["load_avg"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
