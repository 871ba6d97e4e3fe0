"""A simulated SIP handset: one pjsua2 endpoint in its own process, driven over stdin/stdout.

pjsua2 allows one Endpoint per process, so every handset is a child process running
``python -m jbcbench.handset``. It speaks JSON lines: commands in on stdin, events out on
stdout. Everything is bound to the address given on the command line (loopback, or a bench
namespace's LAN address); STUN, ICE and TURN are off; the audio device is the null device and
a tone (425 Hz unless ``--tone-hz`` says otherwise) is sent into every call so that RTP flows
both ways and can be counted -- and, with ``--listen``, heard: the handset then measures what
it receives frame by frame (``level`` answers with the Goertzel amplitude of a frequency).

With ``--backup`` the handset behaves like a desk phone with two servers: ``--server`` is its
primary (the cloud), ``--backup`` its backup (the appliance), and the server redundancy of
:mod:`jbcbench.deskphone` (``--profile factory|tuned``) decides where it registers and calls.

With ``--via`` it is set up for an in-path appliance instead: ``--server`` (the cloud) is its
registrar and ``--via`` (the appliance) its outbound proxy; without an answer through the
appliance it falls back to the cloud directly (the same redundancy logic: "primary" is the
route through the appliance, "backup" the direct one), and probes the appliance again every
``primary_probe_s``.

Commands: ``{"cmd": "call", "uri": ...}``, ``answer`` / ``ring`` / ``busy`` (for the
incoming call), ``hangup``, ``hold``, ``unhold``, ``stats``, ``level``, ``unregister``,
``quit``. Events: ``ready``, ``reg`` (with ``server`` and wall time ``t`` when there is a
backup), ``moved`` (working server changed), ``incoming``, ``call`` (state changes),
``media``, ``stats``, ``level``, ``error``.

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
from collections.abc import Callable, Sequence
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
    config.uaConfig.userAgent = args.user_agent or f"jbcbench-handset/{args.user}"
    config.logConfig.level = args.log_level
    config.logConfig.consoleLevel = args.log_level
    config.medConfig.noVad = True
    config.medConfig.threadCnt = 0
    if args.listen:
        # The conference bridge at the ear's rate: no resampling between call and ear.
        config.medConfig.clockRate = 8000
        config.medConfig.sndClockRate = 8000
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
    # G.711 only, as desk phones (and the trunk gateway) prefer: pjsua's default would pick
    # speex, whose coding changes a test tone's level.
    for codec in endpoint.codecEnum2():
        name = codec.codecId.split("/", 1)[0].upper()
        endpoint.codecSetPriority(codec.codecId, {"PCMU": 255, "PCMA": 254}.get(name, 0))

    tail = "" if args.transport == "udp" else f";transport={args.transport}"
    profile = None
    if args.backup:
        from jbcbench.deskphone import PROFILES

        profile = PROFILES[args.profile]
        _set_transaction_timeout(profile.attempt_timeout_s)

    def account_config(server_address: str, domain: str, *, expires: int,
                       register_on_add: bool, retry_s: int, proxy: str | None = None) -> Any:
        """``proxy``: the outbound proxy, ip:port (default: the registrar itself)."""
        server = f"sip:{server_address}{tail}"
        config = pj.AccountConfig()
        config.idUri = f"sip:{args.user}@{args.domain if args.via else domain}"
        config.regConfig.registrarUri = server
        config.regConfig.timeoutSec = expires
        config.regConfig.retryIntervalSec = retry_s
        config.regConfig.registerOnAdd = register_on_add
        if profile is not None:
            config.regConfig.firstRetryIntervalSec = 0
            config.regConfig.delayBeforeRefreshSec = profile.refresh_margin_s
            config.regConfig.dropCallsOnFail = False
        config.sipConfig.proxies.append(f"sip:{proxy}{tail};lr" if proxy else f"{server};lr")
        config.sipConfig.transportId = transport_id
        config.sipConfig.authCreds.append(
            pj.AuthCredInfo("digest", "*", args.auth_user or args.user, 0, args.password))
        nat = config.natConfig
        nat.iceEnabled = False
        nat.turnEnabled = False
        nat.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        nat.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        nat.contactRewriteUse = 0
        nat.viaRewriteUse = 0
        nat.sdpNatRewriteUse = 0
        media_transport = config.mediaConfig.transportConfig
        media_transport.boundAddress = args.bind
        media_transport.publicAddress = args.bind
        media_transport.port = args.rtp_port
        media_transport.portRange = 200
        return config

    if args.listen:
        # One port is the handset's mouth (the tone) and its ear (what the call sends us).
        tone = ear = _make_ear(pj, args.tone_hz)
    else:
        tone, ear = pj.ToneGenerator(), None
        tone.createToneGenerator(8000, 1)
        tone_frequencies = pj.ToneDescVector()
        description = pj.ToneDesc()
        description.freq1, description.freq2 = round(args.tone_hz), 0
        description.on_msec, description.off_msec, description.volume = 1000, 0, 0
        tone_frequencies.append(description)
        tone.play(tone_frequencies, True)

    def ear_level(hz: float, seconds: float) -> dict:
        """Mean Goertzel amplitude of ``hz`` over the last ``seconds`` heard, and how many of
        those 20 ms frames carried it at no less than a quarter of that mean."""
        from jbcbench.audio import goertzel, samples_of

        frames = ear.last(seconds) if ear is not None else []
        levels = [goertzel(samples_of(frame), hz) for frame in frames]
        mean = sum(levels) / len(levels) if levels else 0.0
        return {"level": mean, "frames": len(levels),
                "steady": sum(1 for level in levels if level >= mean / 4) if levels else 0}

    calls: dict[int, Any] = {}
    state = {"current": None, "quit": False}

    class HandsetCall(pj.Call):
        connected_slot: int | None = None

        def onCallState(self, prm):
            info = self.getInfo()
            _emit("call", id=info.id, state=info.stateText, code=info.lastStatusCode,
                  reason=info.lastReason, remote=info.remoteUri, t=time.time())
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
                    audio = self.getAudioMedia(index)
                    # Connect once per conference slot: every media update (re-INVITE, UPDATE)
                    # calls this again.
                    if audio.getPortId() != self.connected_slot:
                        self.connected_slot = audio.getPortId()
                        tone.startTransmit(audio)
                        if ear is not None:
                            audio.startTransmit(ear)
                codec = ""
                if media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    with contextlib.suppress(Exception):
                        stream = self.getStreamInfo(index)
                        codec = f"{stream.codecName}/{stream.codecClockRate}"
                _emit("media", id=info.id, status=status, codec=codec, t=time.time())

    accounts: dict[str, Any] = {}
    choice = None

    class HandsetAccount(pj.Account):
        def __init__(self, server: str | None = None) -> None:
            super().__init__()
            self.server = server

        def onRegState(self, prm):
            info = self.getInfo()
            fields = {"code": prm.code, "reason": prm.reason, "active": info.regIsActive,
                      "expires": info.regExpiresSec, "t": time.time()}
            if self.server is None:
                _emit("reg", **fields)
                return
            _emit("reg", server=self.server, **fields)
            if prm.expiration == 0 and prm.code // 100 == 2:
                return  # the answer to our own unregistration
            ok = prm.code // 100 == 2 and info.regIsActive
            act(choice.on_result(Server(self.server), ok, time.monotonic()))

        def onIncomingCall(self, prm):
            call = HandsetCall(self, prm.callId)
            info = call.getInfo()
            calls[info.id] = call
            state["current"] = call
            _emit("incoming", id=info.id, remote=info.remoteUri, t=time.time())
            if args.auto:
                answer = pj.CallOpParam()
                answer.statusCode = {"ring": 180, "answer": 200, "busy": 486}[args.auto]
                call.answer(answer)

    def act(actions) -> None:
        for action in actions:
            if isinstance(action, Moved):
                _emit("moved", server=action.server.value, reason=action.reason,
                      t=time.time())
                continue
            account = accounts[action.server.value]
            try:
                account.setRegistration(isinstance(action, Register))
            except Exception as error:  # e.g. a REGISTER still pending there: its answer comes
                _emit("error", message=f"{type(action).__name__} {action.server.value}: "
                      f"{error}")

    if profile is None:
        account = HandsetAccount()
        account.create(account_config(args.server, args.domain, expires=args.expires,
                                      register_on_add=not args.no_register, retry_s=2))
        accounts["only"] = account

        def working_account():
            return account
    else:
        from jbcbench.deskphone import Moved, Register, Server, ServerChoice

        choice = ServerChoice(profile)
        if args.via:
            # in-path: both routes register to the cloud; the primary goes through the
            # appliance (outbound proxy), the backup straight to the cloud (the registrar is
            # its own proxy: calls to sip:N@domain go there, no DNS)
            routes = (("primary", args.server, args.via), ("backup", args.server, None))
        else:
            routes = (("primary", args.server, None), ("backup", args.backup, None))
        for name, address, proxy in routes:
            accounts[name] = HandsetAccount(name)
            accounts[name].create(account_config(
                address, address.rsplit(":", 1)[0], expires=args.expires or profile.expires_s,
                register_on_add=False, retry_s=0, proxy=proxy))

        def working_account():
            return accounts[choice.working.value]

        if not args.no_register:
            act(choice.start(time.monotonic()))
    local = endpoint.transportGetInfo(transport_id).localName
    _emit("ready", pid=os.getpid(), local=local)

    def command(request: dict) -> None:
        name = request.get("cmd")
        current = state["current"]
        if name == "call":
            call = HandsetCall(working_account())
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
        elif name == "level":
            _emit("level", hz=request["hz"], tag=request.get("tag"), **(ear_level(request["hz"],
                                                          request.get("seconds", 1.0))))
        elif name == "unregister":
            working_account().setRegistration(False)
        elif name == "quit":
            state["quit"] = True
        else:
            _emit("error", message=f"unknown command {name!r}")

    buffer = b""
    stdin = sys.stdin.buffer.raw
    while not state["quit"]:
        endpoint.libHandleEvents(10)
        if choice is not None:
            deadline = choice.next_deadline()
            if deadline is not None and time.monotonic() >= deadline:
                act(choice.on_timer(time.monotonic()))
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
    for account in accounts.values():  # a handset switched off unregisters, as phones do
        with contextlib.suppress(Exception):
            if account.getInfo().regIsActive:
                account.setRegistration(False)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        endpoint.libHandleEvents(10)
        if not calls and not any(a.getInfo().regIsActive for a in accounts.values()):
            break
    sys.stdout.flush()
    os._exit(0)  # pjsua2's destructors at interpreter exit are not safe; leave at once


def _make_ear(pj, tone_hz: float) -> Any:
    """A media port that sends a sine of ``tone_hz`` into the call and keeps the last ten
    seconds of what the call sends us, 20 ms a frame."""
    import array
    import collections
    import math

    # Whole periods of the tone fit in this many samples: the frames repeat exactly.
    period = 8000 // math.gcd(8000, round(tone_hz))
    cycle = array.array("h", (round(12000 * math.sin(2 * math.pi * tone_hz * n / 8000))
                              for n in range(period * 160)))
    if sys.byteorder != "little":
        cycle.byteswap()
    cycle_bytes = cycle.tobytes()

    class Ear(pj.AudioMediaPort):
        def __init__(self) -> None:
            super().__init__()
            self.frames: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=500)
            self.offset = 0

        def onFrameReceived(self, frame) -> None:
            try:
                data = bytes(frame.buf) if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO else b""
                self.frames.append((time.monotonic(), data or bytes(320)))
            except Exception as error:  # never raise into the media clock
                print(f"ear: {error!r}", file=sys.stderr)

        def onFrameRequested(self, frame) -> None:
            try:
                start = self.offset
                self.offset = (start + 320) % len(cycle_bytes)
                frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
                frame.buf = pj.ByteVector(cycle_bytes[start:start + 320])
                frame.size = 320
            except Exception as error:
                print(f"mouth: {error!r}", file=sys.stderr)

        def last(self, seconds: float) -> list[bytes]:
            since = time.monotonic() - seconds
            return [data for at, data in list(self.frames) if at >= since]

    ear = Ear()
    audio_format = pj.MediaFormatAudio()
    audio_format.type = pj.PJMEDIA_TYPE_AUDIO
    audio_format.id = pj.PJMEDIA_FORMAT_PCM
    audio_format.clockRate = 8000
    audio_format.channelCount = 1
    audio_format.bitsPerSample = 16
    audio_format.frameTimeUsec = 20000
    audio_format.avgBps = audio_format.maxBps = 128000
    ear.createPort("ear", audio_format)
    return ear


def _set_transaction_timeout(seconds: float) -> None:
    """Make an unanswered request fail after ``seconds`` (pjsip uses its Timer D value as the
    transaction timeout, Timer B/F) through pjsip_tsx_set_timers, which the pjsua2 wheel
    exports but does not wrap. T1, T2 and T4 keep their RFC 3261 values."""
    import ctypes

    import pjsua2

    library = ctypes.CDLL(pjsua2._pjsua2.__file__)
    library.pjsip_tsx_set_timers.argtypes = [ctypes.c_uint] * 4
    library.pjsip_tsx_set_timers(500, 4000, 5000, round(seconds * 1000))


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
    parser.add_argument("--expires", type=int, default=None,
                        help="registration expiry asked for (default: 120, or the profile's)")
    parser.add_argument("--backup", help="backup server, ip:port (makes --server the primary)")
    parser.add_argument("--via", help="in-path: the appliance as outbound proxy, ip:port "
                        "(--server is the registrar, reached directly when the appliance "
                        "does not answer)")
    parser.add_argument("--user-agent", help="the User-Agent to present (e.g. a desk phone's, "
                        "for the appliance's readiness check)")
    parser.add_argument("--profile", choices=("factory", "tuned"), default="tuned",
                        help="desk-phone server redundancy timers (with --backup)")
    parser.add_argument("--tone-hz", type=float, default=425.0,
                        help="frequency of the tone sent into every call")
    parser.add_argument("--listen", action="store_true",
                        help="measure what calls send us ('level' command)")
    parser.add_argument("--rtp-port", type=int, default=0)
    parser.add_argument("--auto", choices=("ring", "answer", "busy"))
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--log-level", type=int, default=0)
    args = parser.parse_args(argv)
    if args.via and not args.backup:
        args.backup = args.server  # the fallback route's registrar is the same cloud
    if args.expires is None and not args.backup:
        args.expires = 120
    return run_handset(args)


# ---------------------------------------------------------------------------------------------
# The test side


class HandsetProcess:
    """Start a handset child process; send it commands; wait for its events."""

    def __init__(self, *, user: str, password: str, server: str, bind: str,
                 transport: str = "udp", exec_prefix: Sequence[str] = (),
                 on_event: Callable[[dict], None] | None = None, **options: Any) -> None:
        """``exec_prefix`` runs the handset inside something (``ip netns exec NS``);
        ``on_event`` sees every event as it arrives (from the reader thread), besides
        :meth:`expect`."""
        argv = [*exec_prefix, sys.executable, "-m", "jbcbench.handset", "--user", user,
                "--password", password, "--server", server, "--bind", bind,
                "--transport", transport]
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
        self.on_event = on_event
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
                event = json.loads(line)
            except ValueError:
                continue
            if self.on_event is not None:
                self.on_event(event)
            self.events.put(event)
        if self.on_event is not None:
            self.on_event({"event": "exited"})
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
