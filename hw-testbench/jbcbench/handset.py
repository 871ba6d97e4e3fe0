"""A simulated SIP handset: one pjsua2 endpoint in its own process, driven over stdin/stdout.

pjsua2 allows one Endpoint per process, so every handset is a child process running
``python -m jbcbench.handset``. It speaks JSON lines: commands in on stdin, events out on
stdout. Everything is bound to a loopback address given on the command line; STUN, ICE and
TURN are off; the audio device is the null device and a 425 Hz tone is sent into every call
so that RTP flows both ways and can be counted.

Commands: ``{"cmd": "call", "uri": ...}``, ``answer`` / ``ring`` / ``busy`` (for the
incoming call), ``hangup``, ``hold``, ``unhold``, ``stats``, ``unregister``, ``quit``.
Events: ``ready``, ``reg``, ``incoming``, ``call`` (state changes), ``media``, ``stats``,
``error``.

:class:`HandsetProcess` is the test side: start one, send commands, wait for events.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# ---------------------------------------------------------------------------------------------
# The child process (imports pjsua2 only here)


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def run_handset(args: argparse.Namespace) -> int:
    import pjsua2 as pj

    transport_types = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP,
                       "tls": pj.PJSIP_TRANSPORT_TLS}
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.uaConfig.userAgent = f"jbcbench-handset/{args.user}"
    config.logConfig.level = args.log_level
    config.logConfig.consoleLevel = args.log_level
    config.medConfig.noVad = True
    config.medConfig.threadCnt = 0
    endpoint.libInit(config)

    transport_config = pj.TransportConfig()
    transport_config.boundAddress = args.bind
    transport_config.publicAddress = args.bind
    transport_config.port = 0
    if args.transport == "tls":
        transport_config.tlsConfig.CaListFile = args.ca or ""
        transport_config.tlsConfig.verifyServer = bool(args.ca)
        transport_config.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
    transport_id = endpoint.transportCreate(transport_types[args.transport], transport_config)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()

    tail = "" if args.transport == "udp" else f";transport={args.transport}"
    server = f"sip:{args.server}{tail}"
    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{args.user}@{args.domain}"
    account_config.regConfig.registrarUri = server
    account_config.regConfig.timeoutSec = args.expires
    account_config.regConfig.retryIntervalSec = 2
    account_config.regConfig.registerOnAdd = not args.no_register
    account_config.sipConfig.proxies.append(f"{server};lr")
    account_config.sipConfig.transportId = transport_id
    account_config.sipConfig.authCreds.append(
        pj.AuthCredInfo("digest", "*", args.auth_user or args.user, 0, args.password))
    nat = account_config.natConfig
    nat.iceEnabled = False
    nat.turnEnabled = False
    nat.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    nat.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
    nat.contactRewriteUse = 0
    nat.viaRewriteUse = 0
    nat.sdpNatRewriteUse = 0
    media_transport = account_config.mediaConfig.transportConfig
    media_transport.boundAddress = args.bind
    media_transport.publicAddress = args.bind
    media_transport.port = args.rtp_port
    media_transport.portRange = 200

    tone = pj.ToneGenerator()
    tone.createToneGenerator(8000, 1)
    tone_frequencies = pj.ToneDescVector()
    description = pj.ToneDesc()
    description.freq1, description.freq2 = 425, 0
    description.on_msec, description.off_msec, description.volume = 1000, 0, 0
    tone_frequencies.append(description)
    tone.play(tone_frequencies, True)

    calls: dict[int, Any] = {}
    state = {"current": None, "quit": False}

    class HandsetCall(pj.Call):
        def onCallState(self, prm):
            info = self.getInfo()
            _emit("call", id=info.id, state=info.stateText, code=info.lastStatusCode,
                  reason=info.lastReason, remote=info.remoteUri)
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                calls.pop(info.id, None)
                if state["current"] is self:
                    state["current"] = None

        def onCallMediaState(self, prm):
            info = self.getInfo()
            for index, media in enumerate(info.media):
                if media.type != pj.PJMEDIA_TYPE_AUDIO:
                    continue
                status = {pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
                          pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local-hold",
                          pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote-hold",
                          pj.PJSUA_CALL_MEDIA_NONE: "none"}.get(media.status, "error")
                if media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    tone.startTransmit(self.getAudioMedia(index))
                _emit("media", id=info.id, status=status)

    class HandsetAccount(pj.Account):
        def onRegState(self, prm):
            info = self.getInfo()
            _emit("reg", code=prm.code, reason=prm.reason, active=info.regIsActive,
                  expires=info.regExpiresSec)

        def onIncomingCall(self, prm):
            call = HandsetCall(self, prm.callId)
            info = call.getInfo()
            calls[info.id] = call
            state["current"] = call
            _emit("incoming", id=info.id, remote=info.remoteUri)
            if args.auto:
                answer = pj.CallOpParam()
                answer.statusCode = {"ring": 180, "answer": 200, "busy": 486}[args.auto]
                call.answer(answer)

    account = HandsetAccount()
    account.create(account_config)
    local = endpoint.transportGetInfo(transport_id).localName
    _emit("ready", pid=os.getpid(), local=local)

    def command(request: dict) -> None:
        name = request.get("cmd")
        current = state["current"]
        if name == "call":
            call = HandsetCall(account)
            parameters = pj.CallOpParam(True)
            call.makeCall(request["uri"], parameters)
            calls[call.getInfo().id] = call
            state["current"] = call
        elif name in ("answer", "ring", "busy"):
            parameters = pj.CallOpParam()
            parameters.statusCode = {"answer": 200, "ring": 180, "busy": 486}[name]
            current.answer(parameters)
        elif name == "hangup":
            current.hangup(pj.CallOpParam())
        elif name == "hold":
            current.setHold(pj.CallOpParam())
        elif name == "unhold":
            parameters = pj.CallOpParam()
            parameters.opt.flag = pj.PJSUA_CALL_UNHOLD
            current.reinvite(parameters)
        elif name == "stats":
            if current is None or not current.hasMedia():
                _emit("stats", rx=0, tx=0, remote_rtp="")
            else:
                stat = current.getStreamStat(0)
                info = current.getStreamInfo(0)
                _emit("stats", rx=stat.rtcp.rxStat.pkt, tx=stat.rtcp.txStat.pkt,
                      remote_rtp=info.remoteRtpAddress)
        elif name == "unregister":
            account.setRegistration(False)
        elif name == "quit":
            state["quit"] = True
        else:
            _emit("error", message=f"unknown command {name!r}")

    buffer = b""
    stdin = sys.stdin.buffer.raw
    while not state["quit"]:
        endpoint.libHandleEvents(10)
        readable, _, _ = select.select([stdin], [], [], 0)
        if not readable:
            continue
        chunk = os.read(stdin.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                try:
                    command(json.loads(line))
                except Exception as error:  # report and keep the handset alive
                    _emit("error", message=f"{type(error).__name__}: {error}")
    for call in list(calls.values()):
        with contextlib.suppress(Exception):
            call.hangup(pj.CallOpParam())
    with contextlib.suppress(Exception):  # a handset switched off unregisters, as phones do
        if account.getInfo().regIsActive:
            account.setRegistration(False)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        endpoint.libHandleEvents(10)
        if not calls and not account.getInfo().regIsActive:
            break
    sys.stdout.flush()
    os._exit(0)  # pjsua2's destructors at interpreter exit are not safe; leave at once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jbcbench.handset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--auth-user")
    parser.add_argument("--server", required=True, help="registrar and proxy, ip:port")
    parser.add_argument("--domain", default="127.0.0.1")
    parser.add_argument("--bind", default="127.0.0.1", help="local loopback address")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    parser.add_argument("--ca", help="CA certificate file to verify the server (TLS)")
    parser.add_argument("--expires", type=int, default=120)
    parser.add_argument("--rtp-port", type=int, default=0)
    parser.add_argument("--auto", choices=("ring", "answer", "busy"))
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--log-level", type=int, default=0)
    return run_handset(parser.parse_args(argv))


# ---------------------------------------------------------------------------------------------
# The test side


class HandsetProcess:
    """Start a handset child process; send it commands; wait for its events."""

    def __init__(self, *, user: str, password: str, server: str, bind: str,
                 transport: str = "udp", **options: Any) -> None:
        argv = [sys.executable, "-m", "jbcbench.handset", "--user", user, "--password",
                password, "--server", server, "--bind", bind, "--transport", transport]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [here, os.environ.get("PYTHONPATH", "")]), "PYTHONUNBUFFERED": "1"}
        self.user = user
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.events: queue.Queue[dict] = queue.Queue()
        self.history: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.local = self.expect("ready", timeout=20)["local"]

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue
        self.events.put({"event": "exited"})

    def send(self, cmd: str, **fields: Any) -> None:
        self.proc.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        self.proc.stdin.flush()

    def expect(self, event: str, predicate: Callable[[dict], bool] = lambda e: True, *,
               timeout: float = 10.0) -> dict:
        """Wait for the next ``event`` matching ``predicate`` (earlier ones seen are kept)."""
        for seen in self.history:
            if seen["event"] == event and predicate(seen):
                self.history.remove(seen)
                return seen
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"handset {self.user}: no {event!r} event in {timeout} s; "
                                   f"saw {self.history[-8:]}\n{self.stderr_tail()}")
            try:
                item = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if item["event"] == "exited":
                raise RuntimeError(f"handset {self.user} exited\n{self.stderr_tail()}")
            if item["event"] == event and predicate(item):
                return item
            self.history.append(item)

    def registered(self, timeout: float = 10.0) -> dict:
        return self.expect("reg", lambda e: e["code"] == 200 and e["active"], timeout=timeout)

    def call_state(self, state: str, timeout: float = 10.0) -> dict:
        return self.expect("call", lambda e: e["state"] == state, timeout=timeout)

    def stats(self) -> dict:
        self.send("stats")
        return self.expect("stats")

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self) -> HandsetProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
