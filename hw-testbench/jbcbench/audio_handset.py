"""A simulated handset that speaks and listens: a real pjsua2 user agent in its own process.

The gateway's tests need a handset with a mouth and an ear: send a tone or speech-like noise,
measure what comes back, send DTMF both ways (RFC 4733, SIP INFO), receive MESSAGEs, report
SRTP. (``jbcbench.handset`` is the SIP tests' handset: registration, hold, call states.)

pjsua2 allows one Endpoint per process, so each handset is a child process
(``python -m jbcbench.audio_handset``) that reads JSON commands on stdin and writes JSON
lines (command results and events) on stdout. :class:`AudioHandset` is the parent side.

The handset binds 127.0.0.1 only, has STUN/ICE off and a null sound device. Its "ear and
mouth" is a media port at 8 kHz: it can send a tone (recording the monotonic time of the
first tone frame it sent) and measures what it hears frame by frame with Goertzel filters
(level of any frequency over a time window, and the monotonic time of a tone's onset).
``time.monotonic()`` is system-wide on Linux, so onsets compare across processes.

Events: ``registered``, ``incoming`` (with From, P-Asserted-Identity and other headers),
``state`` (pjsua2 call state and last status code), ``media`` (codec, SRTP in use),
``dtmf`` (digit, method), ``message`` (SIP MESSAGE received).

A handset can also leak part of what it hears into what it sends (``speaker_leak``), the
way a desk phone on speaker does; the echo canceller's double-talk case needs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
RATE = 8000
FRAME_SAMPLES = 160


class HandsetError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Parent side


class AudioHandset:
    """Start with :meth:`start`; every method talks to the child and waits for its answer."""

    def __init__(self, name: str = "handset", *, user: str | None = None,
                 password: str | None = None, domain: str = "127.0.0.1",
                 proxy: str | None = None, transport: str = "udp", srtp: str = "off",
                 codecs: Sequence[str] = ("PCMU", "PCMA"), register: bool = False,
                 tls_ca_file: str | None = None, display: str | None = None,
                 log_level: int = 1, sips: bool | None = None) -> None:
        """``sips``: the account's URIs (and so its registered Contact) are sips: ones; by
        default on TLS. A desk phone on TLS usually registers a sip: Contact with
        ;transport=tls instead (``sips=False``)."""
        self.name = name
        self.options = {"user": user, "password": password, "domain": domain, "proxy": proxy,
                        "transport": transport, "srtp": srtp, "codecs": list(codecs),
                        "register": register, "tls_ca_file": tls_ca_file, "display": display,
                        "log_level": log_level,
                        "sips": transport == "tls" if sips is None else sips}
        self.proc: subprocess.Popen | None = None
        self.events: list[dict[str, Any]] = []
        self._results: queue.Queue[dict[str, Any]] = queue.Queue()
        self._event_cv = threading.Condition()
        self._reader: threading.Thread | None = None
        self.sip_port: int | None = None
        self.stderr_lines: list[str] = []

    def start(self, timeout_s: float = 10.0) -> AudioHandset:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(REPO_ROOT), str(REPO_ROOT / "hw-testbench"), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jbcbench.audio_handset", json.dumps(self.options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, cwd=REPO_ROOT, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"{self.name}-reader")
        self._reader.start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        ready = self.wait_event("ready", timeout_s=timeout_s)
        self.sip_port = ready["port"]
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "result" in message or "error" in message:
                self._results.put(message)
            else:
                with self._event_cv:
                    self.events.append(message)
                    self._event_cv.notify_all()
        with self._event_cv:
            self.events.append({"event": "exited"})
            self._event_cv.notify_all()
        self._results.put({"error": "handset process exited"})

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-500]

    def command(self, name: str, timeout_s: float = 10.0, **args: Any) -> Any:
        if self.proc is None or self.proc.poll() is not None:
            raise HandsetError(f"{self.name} is not running")
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": name, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            reply = self._results.get(timeout=timeout_s)
        except queue.Empty:
            raise HandsetError(f"{self.name}: no answer to {name} in {timeout_s} s") from None
        if "error" in reply:
            raise HandsetError(f"{self.name}: {name}: {reply['error']}")
        return reply["result"]

    def wait_event(self, kind: str, predicate: Callable[[dict], bool] | None = None, *,
                   timeout_s: float = 10.0, after: int = 0) -> dict[str, Any]:
        """The first event of ``kind`` (index >= ``after``) matching ``predicate``."""
        deadline = time.monotonic() + timeout_s
        with self._event_cv:
            while True:
                for event in self.events[after:]:
                    if event.get("event") == kind and (predicate is None or predicate(event)):
                        return event
                    if event.get("event") == "exited" and kind != "exited":
                        raise HandsetError(f"{self.name} exited while waiting for {kind}:\n"
                                           + "\n".join(self.stderr_lines[-30:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HandsetError(f"{self.name}: no {kind} event in {timeout_s} s; "
                                       f"events: {self.events[-8:]}")
                self._event_cv.wait(remaining)

    def wait_state(self, state: str, *, timeout_s: float = 10.0, after: int = 0,
                   call: int | None = None) -> dict[str, Any]:
        return self.wait_event(
            "state", lambda e: e["state"] == state and (call is None or e["call"] == call),
            timeout_s=timeout_s, after=after)

    def mark(self) -> int:
        """An index into the event list: wait for events after this point."""
        with self._event_cv:
            return len(self.events)

    # conveniences ---------------------------------------------------------------------------

    def call(self, uri: str, headers: Mapping[str, str] | None = None) -> int:
        return self.command("call", uri=uri, headers=dict(headers or {}))

    def answer(self, code: int = 200, call: int | None = None) -> None:
        self.command("answer", code=code, call=call)

    def hangup(self, call: int | None = None, code: int | None = None) -> None:
        self.command("hangup", call=call, code=code)

    def dtmf(self, digits: str, method: str = "rfc4733", call: int | None = None) -> None:
        self.command("dtmf", digits=digits, method=method, call=call)

    def tone(self, frequency: float | str | None, amplitude: int = 8000) -> float | None:
        """Start sending a tone (None stops it; "noise" sends speech-like bursts of coloured
        noise); returns when the first frame went out (monotonic seconds), or None if no
        frame went out within 2 s (no media yet)."""
        return self.command("tone", frequency=frequency, amplitude=amplitude)

    def speaker_leak(self, share: float) -> None:
        """Mix ``share`` of what the handset hears into what it sends (0: none), as a desk
        phone on speaker does when its own echo control is weak."""
        self.command("speaker_leak", share=share)

    def level(self, frequency: float, seconds: float = 1.0, *,
              expected: float | None = None) -> dict[str, float]:
        """Goertzel amplitude of ``frequency`` (0: plain RMS) over the last ``seconds``
        heard: mean, min, max, frames, frames below half of ``expected`` (default: the mean)
        as gaps, and frames more than 10 % off ``expected``."""
        return self.command("level", frequency=frequency, seconds=seconds, expected=expected,
                            timeout_s=30.0)

    def listen(self, frequency: float, frames: int = 50, *,
               timeout_s: float = 10.0) -> dict[str, float]:
        """:meth:`level` over the next ``frames`` frames heard from now (50: one second),
        once they have been heard. ``time.monotonic`` is the system's monotonic clock, the
        same in the handset's process."""
        since = time.monotonic()
        deadline = since + timeout_s
        while True:
            heard = self.command("level", frequency=frequency, since=since, frames=frames,
                                 timeout_s=timeout_s)
            if heard["frames"] >= frames:
                return heard
            if time.monotonic() > deadline:
                raise HandsetError(f"{self.name}: heard {heard['frames']} of {frames} frames "
                                   f"in {timeout_s} s")
            time.sleep(0.02)  # one frame

    def onset(self, frequency: float, *, threshold: float, after: float) -> float | None:
        """Monotonic time of the first heard frame at or after ``after`` where the tone's
        amplitude reached ``threshold``."""
        return self.command("onset", frequency=frequency, threshold=threshold, after=after)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.command("quit", timeout_s=timeout_s)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                stream.close()

    def __enter__(self) -> AudioHandset:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Child side (runs in the handset process)


def _child(options: dict[str, Any]) -> int:
    import numpy as np
    import pjsua2 as pj

    out_lock = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    class Ear:
        """What the handset heard: per-frame monotonic times and 16-bit samples, for the
        last 400 s (a five-minute benchmark call fits)."""

        KEEP = 20000

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.times: list[float] = []
            self.frames: list[bytes] = []

        def add(self, raw: bytes) -> None:
            now = time.monotonic()
            with self.lock:
                self.times.append(now)
                self.frames.append(raw)
                if len(self.times) > self.KEEP + 1000:
                    del self.times[:1000]
                    del self.frames[:1000]

        def window(self, since: float) -> tuple[list[float], list[Any]]:
            with self.lock:
                start = next((i for i, t in enumerate(self.times) if t >= since),
                             len(self.times))
                times, frames = self.times[start:], self.frames[start:]
            return times, [np.frombuffer(f, dtype="<i2").astype(np.float64) for f in frames]

    def goertzel(block: Any, frequency: float) -> float:
        n = len(block)
        phase = np.exp(-2j * np.pi * frequency / RATE * np.arange(n))
        return float(2 * abs(np.dot(block, phase)) / n)

    ear = Ear()
    noise_rng = np.random.default_rng(1234)
    mouth = {"frequency": None, "amplitude": 8000, "n": 0, "first_sent": None, "leak": 0.0}
    mouth_lock = threading.Lock()

    # A desk phone has a CPU of its own; this one shares the bench's. Its audio threads run
    # at real-time priority where permitted (as the gateway's do), so that a busy host does
    # not make the measuring instrument itself stall and hear gaps the gateway never sent.
    from appliance.gateway import scheduling

    realtime_priority = 10  # as the gateway's default (gateway.realtime_priority)
    clock_thread = [None]

    class ProbePort(pj.AudioMediaPort):
        def onFrameRequested(self, frame: Any) -> None:
            if clock_thread[0] != threading.get_native_id():
                clock_thread[0] = threading.get_native_id()
                scheduling.raise_this_thread(realtime_priority, "handset media clock")
            try:
                with mouth_lock:
                    freq = mouth["frequency"]
                    if freq == "noise":  # speech-like: coloured noise in 300 ms bursts
                        n0 = mouth["n"]
                        mouth["n"] = n0 + FRAME_SAMPLES
                        burst = (n0 // 2400) % 4 != 3
                        white = noise_rng.standard_normal(FRAME_SAMPLES + 3)
                        shaped = np.convolve(white, [1.0, 0.8, 0.5, 0.2], mode="valid")
                        data = (shaped[:FRAME_SAMPLES] * mouth["amplitude"] / 2 * burst
                                ).clip(-32768, 32767).astype("<i2")
                        if mouth["first_sent"] is None:
                            mouth["first_sent"] = time.monotonic()
                    elif freq:
                        n0 = mouth["n"]
                        t = (np.arange(FRAME_SAMPLES) + n0) / RATE
                        data = (mouth["amplitude"] * np.sin(2 * np.pi * freq * t)).astype("<i2")
                        mouth["n"] = n0 + FRAME_SAMPLES
                        if mouth["first_sent"] is None:
                            mouth["first_sent"] = time.monotonic()
                    else:
                        data = np.zeros(FRAME_SAMPLES, dtype="<i2")
                    leak = mouth["leak"]
                if leak:  # a loudspeaker heard by the microphone (a desk phone on speaker)
                    with ear.lock:
                        last = ear.frames[-1] if ear.frames else None
                    if last is not None:
                        heard = np.frombuffer(last, dtype="<i2").astype(np.float64)
                        data = (data + leak * heard[:FRAME_SAMPLES]).clip(
                            -32768, 32767).astype("<i2")
                frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
                frame.buf = pj.ByteVector(data.tobytes())
                frame.size = FRAME_SAMPLES * 2
            except Exception as error:  # never let an exception into the media clock
                print(f"probe tx failed: {error!r}", file=sys.stderr)

        def onFrameReceived(self, frame: Any) -> None:
            try:
                if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO and frame.size:
                    ear.add(_vector_bytes(frame.buf))
                else:
                    ear.add(bytes(FRAME_SAMPLES * 2))
            except Exception as error:
                print(f"probe rx failed: {error!r}", file=sys.stderr)

    import ctypes

    pair = ctypes.POINTER(ctypes.c_void_p * 2)

    def _vector_bytes(vector: Any) -> bytes:
        begin, end = ctypes.cast(int(vector.this), pair).contents
        return ctypes.string_at(begin, end - begin) if begin and end else b""

    probe_check = pj.ByteVector(bytes(range(200)))
    if _vector_bytes(probe_check) != bytes(range(200)):
        def _vector_bytes(vector: Any) -> bytes:
            return bytes(vector)

    calls: dict[int, Any] = {}
    keep: list[Any] = []

    def headers_of(text: str) -> dict[str, list[str]]:
        head = text.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")[1:]
        out: dict[str, list[str]] = {}
        for line in head:
            if ":" in line:
                name, value = line.split(":", 1)
                out.setdefault(name.strip().lower(), []).append(value.strip())
        return out

    class HCall(pj.Call):
        def __init__(self, account: Any, call_id: int = pj.PJSUA_INVALID_ID) -> None:
            super().__init__(account, call_id)
            self.port_connected = False
            self.sdp_local = ""
            self.sdp_remote = ""

        def onCallState(self, prm: Any) -> None:
            info = self.getInfo()
            emit({"event": "state", "call": info.id, "state": info.stateText,
                   "code": info.lastStatusCode, "reason": info.lastReason,
                   "t": time.monotonic()})
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                with contextlib.suppress(Exception):
                    text = prm.e.body.tsxState.src.rdata.wholeMsg
                    if text.startswith("SIP/2.0"):
                        emit({"event": "final", "call": info.id,
                              "code": int(text.split()[1]), "headers": headers_of(text)})
            if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                calls.pop(info.id, None)
                pending_drop.append(self)

        def onCallSdpCreated(self, prm: Any) -> None:
            self.sdp_local = prm.sdp.wholeSdp
            self.sdp_remote = prm.remSdp.wholeSdp

        def onCallTsxState(self, prm: Any) -> None:
            with contextlib.suppress(Exception):
                body = prm.e.body.tsxState.src.rdata.wholeMsg
                if body and "\r\n\r\nv=0" in body:
                    self.sdp_remote = body.split("\r\n\r\n", 1)[1]

        def onCallMediaState(self, prm: Any) -> None:
            info = self.getInfo()
            for media in info.media:
                if (media.type == pj.PJMEDIA_TYPE_AUDIO
                        and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE):
                    audio = self.getAudioMedia(media.index)
                    if not self.port_connected:
                        audio.startTransmit(probe)
                        probe.startTransmit(audio)
                        self.port_connected = True
                    stream = self.getStreamInfo(media.index)
                    dump = self.dump(True, "")
                    emit({"event": "media", "call": info.id, "codec": stream.codecName,
                          "clock_rate": stream.codecClockRate,
                          "srtp": _srtp_active(dump),
                          "local_crypto": "a=crypto" in self.sdp_local,
                          "remote_crypto": "a=crypto" in self.sdp_remote,
                          "remote_rtp": stream.remoteRtpAddress})

        def onDtmfDigit(self, prm: Any) -> None:
            emit({"event": "dtmf", "digit": prm.digit, "method": int(prm.method)})

    pending_drop: list[Any] = []

    def _srtp_active(dump: str) -> bool:
        for line in dump.splitlines():
            _, found, status = line.partition("SRTP status:")
            if found and status.strip().lower().startswith("active"):
                return True
        return False

    class HAccount(pj.Account):
        def onRegState(self, prm: Any) -> None:
            info = self.getInfo()
            emit({"event": "registered" if info.regIsActive else "unregistered",
                  "code": prm.code, "expires": info.regExpiresSec})

        def onIncomingCall(self, prm: Any) -> None:
            call = HCall(self, prm.callId)
            info = call.getInfo()
            calls[info.id] = call
            hdrs = headers_of(prm.rdata.wholeMsg)
            emit({"event": "incoming", "call": info.id, "from": info.remoteUri,
                  "headers": hdrs, "t": time.monotonic()})
            op = pj.CallOpParam()
            op.statusCode = 180
            call.answer(op)

        def onInstantMessage(self, prm: Any) -> None:
            emit({"event": "message", "from": prm.fromUri, "body": prm.msgBody,
                  "content_type": prm.contentType})

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.userAgent = f"jbcbench-handset/{options.get('user') or 'anon'}"
    cfg.logConfig.level = int(options.get("log_level", 1))
    cfg.logConfig.consoleLevel = int(options.get("log_level", 1))
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.ecTailLen = 0
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        name = codec.codecId.split("/", 1)[0].upper()
        wanted = [c.upper() for c in options["codecs"]]
        priority = 255 - wanted.index(name) if name in wanted else 0
        ep.codecSetPriority(codec.codecId, priority)
    transport_kind = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP,
                      "tls": pj.PJSIP_TRANSPORT_TLS}[options["transport"]]
    tcfg = pj.TransportConfig()
    tcfg.port = 0
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    if options["transport"] == "tls":
        if options.get("tls_ca_file"):
            tcfg.tlsConfig.CaListFile = options["tls_ca_file"]
            tcfg.tlsConfig.verifyServer = True
        tcfg.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
    transport_id = ep.transportCreate(transport_kind, tcfg)
    port = ep.transportGetInfo(transport_id).localName.rsplit(":", 1)[1]
    ep.libStart()
    scheduling.raise_this_thread(realtime_priority, "handset SIP")
    scheduling.raise_named_threads(("media",), realtime_priority)

    probe = ProbePort()
    from pjsua2 import MediaFormatAudio
    fmt = MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.id = pj.PJMEDIA_FORMAT_PCM
    fmt.clockRate = RATE
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    fmt.avgBps = fmt.maxBps = RATE * 16
    probe.createPort("probe", fmt)

    acfg = pj.AccountConfig()
    user = options.get("user") or "handset"
    scheme = "sips" if options.get("sips") else "sip"
    display = options.get("display")
    acfg.idUri = (f'"{display}" ' if display else "") + f"<{scheme}:{user}@{options['domain']}>"
    acfg.sipConfig.transportId = transport_id
    if options.get("proxy"):
        acfg.sipConfig.proxies.append(options["proxy"])
    if options.get("register"):
        acfg.regConfig.registrarUri = f"{scheme}:{options['domain']}"
        acfg.regConfig.timeoutSec = 300
    else:
        acfg.regConfig.registrarUri = ""
    if options.get("password") is not None:
        acfg.sipConfig.authCreds.append(
            pj.AuthCredInfo("digest", "*", user, 0, options["password"]))
    acfg.natConfig.iceEnabled = False
    acfg.natConfig.sdpNatRewriteUse = False
    acfg.natConfig.viaRewriteUse = False
    acfg.natConfig.contactRewriteUse = False
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
    acfg.mediaConfig.transportConfig.port = int(options.get("rtp_port", 0))
    acfg.mediaConfig.srtpUse = {"off": pj.PJMEDIA_SRTP_DISABLED,
                                "optional": pj.PJMEDIA_SRTP_OPTIONAL,
                                "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[options["srtp"]]
    acfg.mediaConfig.srtpSecureSignaling = 0
    account = HAccount()
    account.create(acfg)
    keep.append(account)

    commands: queue.Queue[dict[str, Any]] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            with contextlib.suppress(ValueError):
                commands.put(json.loads(line))
        commands.put({"cmd": "quit"})

    threading.Thread(target=read_stdin, daemon=True).start()
    emit({"event": "ready", "port": int(port)})

    def the_call(args: dict[str, Any]) -> Any:
        if args.get("call") is not None:
            call = calls.get(args["call"])
        else:
            call = next(reversed(calls.values()), None) if calls else None
        if call is None:
            raise HandsetError("no such call")
        return call

    def handle(args: dict[str, Any]) -> Any:
        cmd = args["cmd"]
        if cmd == "call":
            call = HCall(account)
            op = pj.CallOpParam(True)
            for name, value in args.get("headers", {}).items():
                header = pj.SipHeader()
                header.hName = name
                header.hValue = value
                op.txOption.headers.append(header)
            call.makeCall(args["uri"], op)
            call_id = call.getId()
            calls[call_id] = call
            return call_id
        if cmd == "answer":
            op = pj.CallOpParam()
            op.statusCode = args.get("code", 200)
            the_call(args).answer(op)
            return None
        if cmd == "hangup":
            op = pj.CallOpParam()
            if args.get("code"):
                op.statusCode = args["code"]
            the_call(args).hangup(op)
            return None
        if cmd == "dtmf":
            prm = pj.CallSendDtmfParam()
            prm.digits = args["digits"]
            prm.method = (pj.PJSUA_DTMF_METHOD_SIP_INFO if args.get("method") == "info"
                          else pj.PJSUA_DTMF_METHOD_RFC2833)
            the_call(args).sendDtmf(prm)
            return None
        if cmd == "speaker_leak":
            with mouth_lock:
                mouth["leak"] = float(args.get("share", 0.0))
            return None
        if cmd == "tone":
            with mouth_lock:
                mouth["frequency"] = args.get("frequency")
                mouth["amplitude"] = args.get("amplitude", 8000)
                mouth["first_sent"] = None
                mouth["n"] = 0
            if not args.get("frequency"):
                return None
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                ep.libHandleEvents(5)
                with mouth_lock:
                    if mouth["first_sent"] is not None:
                        return mouth["first_sent"]
            return None
        if cmd == "level":
            since = args.get("since")
            if since is None:
                since = time.monotonic() - float(args.get("seconds", 1.0))
            _, frames = ear.window(float(since))
            if args.get("frames"):
                frames = frames[:int(args["frames"])]
            if not args["frequency"]:  # 0: the RMS of everything heard
                levels = [float(np.sqrt(np.mean(f * f))) for f in frames]
            else:
                levels = [goertzel(f, float(args["frequency"])) for f in frames]
            if not levels:
                return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0, "frames": 0,
                        "gaps": 0, "off_by_10pct": 0}
            mean = sum(levels) / len(levels)
            expected = float(args.get("expected") or mean)
            ordered = sorted(levels)
            return {"mean": mean, "median": ordered[len(ordered) // 2], "min": ordered[0],
                    "max": ordered[-1], "frames": len(levels),
                    "gaps": sum(1 for level in levels if level < expected / 2),
                    "off_by_10pct": sum(1 for level in levels
                                        if abs(level - expected) > 0.1 * expected)}
        if cmd == "onset":
            times, frames = ear.window(float(args["after"]))
            for t, f in zip(times, frames, strict=True):
                if goertzel(f, float(args["frequency"])) >= float(args["threshold"]):
                    return t
            return None
        if cmd == "message":
            buddy_cfg = pj.BuddyConfig()
            buddy_cfg.uri = args["uri"]
            buddy_cfg.subscribe = False
            buddy = pj.Buddy()
            buddy.create(account, buddy_cfg)
            keep.append(buddy)
            prm = pj.SendInstantMessageParam()
            prm.content = args["body"]
            buddy.sendInstantMessage(prm)
            return None
        if cmd == "calls":
            return sorted(calls)
        raise HandsetError(f"unknown command {cmd!r}")

    running = True
    while running:
        ep.libHandleEvents(10)
        while pending_drop:
            pending_drop.pop()
        while True:
            try:
                args = commands.get_nowait()
            except queue.Empty:
                break
            if args.get("cmd") == "quit":
                running = False
                emit({"result": None})
                break
            try:
                emit({"result": handle(args)})
            except Exception as error:
                emit({"error": f"{type(error).__name__}: {error}"})
    with contextlib.suppress(Exception):
        ep.hangupAllCalls()
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            ep.libHandleEvents(10)
    calls.clear()
    pending_drop.clear()
    keep.clear()
    account = probe = None
    import gc

    gc.collect()
    ep.libDestroy(pj.PJSUA_DESTROY_NO_NETWORK)  # BYEs went out above; skip pjsua's 1 s wait
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
