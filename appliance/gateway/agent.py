"""The gateway's SIP media user agent: everything that lives on the pjsua thread.

One pjsua2 account on a loopback-only SIP transport (UDP and TCP on the same port). The proxy
sends external and emergency calls to it; it sends calls from the trunks to the proxy
(loose route) as a trusted loopback peer. Every call leg is a :class:`Leg` known to the rest
of the gateway only by its number; what happens to legs is reported as the small event
objects below through ``report`` (which hands them to the event loop), and everything the
loop wants done is a method of :class:`MediaAgent` run on this thread through
:meth:`~appliance.gateway.pjthread.PjsuaThread.call`.

Media policy (see ``docs`` of the settings): null sound device (its clock drives the
conference bridge), conference at 8 kHz like the trunks, codecs in the configured order
(G.711 first), the pjmedia jitter buffer on handset RTP set for LTE-grade jitter, SRTP (SDES)
offered to every handset and answered whenever a handset offers it (``srtpUse`` optional,
no secure-signalling requirement on the loopback hop). SRTP is *required* on every leg toward
a handset on TLS: for a call the handset places, the call logic decides before answering
(the bottom Via); for a call the gateway places to a handset (a trunk call ringing it), the
agent learns it from the handset's answer (the proxy's Record-Route toward it says
transport=tls) and the call logic refuses that answer without SRTP. Either way it is checked
again here once media is up: a leg that must be SRTP and is not is ended, never carried as
plain RTP.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import pjsua2 as pj

from . import scheduling
from .bridge import TrunkAudioBridge
from .errors import GatewayError
from .leg_events import (
    AgentEvent,
    LegConfirmed,
    LegDtmf,
    LegEnded,
    LegMedia,
    LegOffered,
    LegProgress,
    MessageStatus,
)
from .media import TrunkMediaPort, tone_descriptions
from .pjthread import PjsuaThread
from .sipmsg import SipTextError, answered_over_tls, parse_invite

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Settings and events


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings:
    sip_address: str = "127.0.0.1"
    sip_port: int = 5070
    proxy_uri: str | None = None
    """Where calls to handsets go (loose route), e.g. 'sip:127.0.0.1:5060'."""
    domain: str = "127.0.0.1"
    """Host part of the URIs of calls the gateway places (the proxy's domain)."""
    media_address: str = "127.0.0.1"
    rtp_port: int = 40000
    rtp_port_range: int = 1000
    codecs: tuple[str, ...] = ("PCMU", "PCMA", "G722")
    jb_init_ms: int = 60
    jb_min_pre_ms: int = 40
    jb_max_pre_ms: int = 200
    jb_max_ms: int = 400
    max_calls: int = 16
    user_agent: str = "jbc-gateway"
    log_level: int = 3
    realtime_priority: int = 0
    """SCHED_RR priority of the pjsua and media clock threads (0: normal scheduling)."""


class AgentError(GatewayError, RuntimeError):
    """The SIP agent could not do what the loop asked (leg gone, not started)."""


# ---------------------------------------------------------------------------------------------
# pjsua2 subclasses (callbacks run on the pjsua thread, except DTMF: see Leg.onDtmfDigit)


class _LogWriter(pj.LogWriter):
    LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.DEBUG,
              4: logging.DEBUG, 5: logging.DEBUG, 6: logging.DEBUG}

    def write(self, entry: pj.LogEntry) -> None:
        with contextlib.suppress(Exception):
            logging.getLogger("pjsua2").log(self.LEVELS.get(entry.level, logging.DEBUG),
                                            "%s", entry.msg.rstrip())


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """pjsua2 calls these from C++: an exception must never travel back through SWIG (it
    would be printed and parked in sys.last_traceback, keeping pjsua2 objects alive until
    some other thread frees them). Logged as text: a log record holding the traceback would
    keep them alive just the same."""

    def guarded(*args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.error("pjsua2 callback %s failed:\n%s", callback.__qualname__,
                      traceback.format_exc().rstrip())

    guarded.__name__ = callback.__name__
    guarded.__qualname__ = callback.__qualname__
    return guarded


class Leg(pj.Call):
    def __init__(self, agent: MediaAgent, account: pj.Account,
                 call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.agent = agent
        self.number: int = -1
        self.port: TrunkMediaPort | None = None
        self.audio: pj.AudioMedia | None = None
        self.tone: pj.ToneGenerator | None = None
        self.srtp_required = False
        self.srtp = False
        self.codec = ""
        self.ended = False
        self.started = time.monotonic()
        self.connected_at: float | None = None
        self.tone_exclusive = False
        self.peer_tls = False
        self.srtp_refused = False
        """An outgoing leg answered (or ringing with early media) by a handset on TLS."""

    @_guarded
    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        self.agent._on_state(self, prm)

    @_guarded
    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.agent._on_media(self)

    @_guarded
    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        # RFC 4733 digits come from pjmedia's RTP thread: only report, touch nothing else.
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.agent.report(LegDtmf(leg=self.number, digit=prm.digit, method=method))


class _Account(pj.Account):
    def __init__(self, agent: MediaAgent) -> None:
        super().__init__()
        self.agent = agent

    @_guarded
    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self.agent._on_incoming(self, prm)

    @_guarded
    def onInstantMessageStatus(self, prm: pj.OnInstantMessageStatusParam) -> None:
        self.agent._on_message_status(prm)


class _Buddy(pj.Buddy):
    pass


# ---------------------------------------------------------------------------------------------
# The agent


class MediaAgent:
    """Created by :func:`start_agent` on the pjsua thread; its methods run there only."""

    def __init__(self, endpoint: pj.Endpoint, thread: PjsuaThread, settings: AgentSettings,
                 report: Callable[[AgentEvent], None]) -> None:
        self.endpoint = endpoint
        self.thread = thread
        self.settings = settings
        self._report = report
        self.legs: dict[int, Leg] = {}
        self._ports: list[TrunkMediaPort] = []
        self.media_threads: list[int] = []
        """pjsua's RTP worker threads raised to real-time priority (see ``scheduling``)."""
        self._idle_ports: list[TrunkMediaPort] = []
        self._idle_tones: list[pj.ToneGenerator] = []
        self._numbers = iter(range(1, 1 << 62))
        self._pending_messages: dict[str, collections.deque[tuple[str, _Buddy]]] = {}
        self.account: _Account | None = None
        self.transport_ids: list[int] = []
        self.sip_port = settings.sip_port

    def report(self, event: AgentEvent) -> None:
        """Hand an event to the event loop (safe from any thread)."""
        self.thread.to_loop(self._report, event)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        scheduling.raise_this_thread(s.realtime_priority, "pjsua")  # polls the RTP sockets
        TrunkMediaPort.realtime_priority = s.realtime_priority
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = s.max_calls
        cfg.uaConfig.userAgent = s.user_agent
        cfg.uaConfig.stunServer.clear()
        cfg.uaConfig.natTypeInSdp = 0
        cfg.logConfig.level = s.log_level
        # pjsua hands its writer only what is at or below consoleLevel (0 let nothing but
        # fatal errors through, whatever gateway.log_level said)
        cfg.logConfig.consoleLevel = s.log_level
        cfg.logConfig.msgLogging = 1 if s.log_level >= 4 else 0
        # pjsua2 logs until libDestroy has finished: the writer is kept by the thread, which
        # lets it go only after that (see PjsuaThread._destroy)
        cfg.logConfig.writer = self.thread.hold(_LogWriter())
        cfg.logConfig.decor = 0
        med = cfg.medConfig
        med.clockRate = 8000
        med.sndClockRate = 8000
        med.channelCount = 1
        med.audioFramePtime = 20
        med.ptime = 20
        med.noVad = True
        med.ecTailLen = 0  # the sound device is null; our canceller sits on the trunk side
        med.quality = 6
        med.jbInit = s.jb_init_ms
        med.jbMinPre = s.jb_min_pre_ms
        med.jbMaxPre = s.jb_max_pre_ms
        med.jbMax = s.jb_max_ms
        # jbDiscardAlgo stays at pjsua's default, progressive discard (the binding cannot set it)
        med.maxMediaPorts = max(64, 4 * s.max_calls)
        self.endpoint.libInit(cfg)
        self.endpoint.audDevManager().setNullDev()
        self._set_codec_priorities(s.codecs)
        for kind in (pj.PJSIP_TRANSPORT_UDP, pj.PJSIP_TRANSPORT_TCP):
            tcfg = pj.TransportConfig()
            tcfg.boundAddress = s.sip_address
            tcfg.publicAddress = s.sip_address
            tcfg.port = self.sip_port
            try:
                transport = self.endpoint.transportCreate(kind, tcfg)
            except pj.Error as error:
                if kind == pj.PJSIP_TRANSPORT_UDP:
                    raise AgentError(f"cannot listen on udp {s.sip_address}:{self.sip_port}: "
                                     f"{error.info()} (is another program using it?)") from None
                # UDP is what the proxy uses; TCP only takes requests too large for UDP
                log.warning("gateway SIP agent: no TCP on %s:%d (%s); UDP only",
                            s.sip_address, self.sip_port, error.info())
                continue
            self.transport_ids.append(transport)
            if self.sip_port == 0:  # bound to an ephemeral port: use the same for TCP
                name = self.endpoint.transportGetInfo(transport).localName
                self.sip_port = int(name.rsplit(":", 1)[1])
        self.endpoint.libStart()
        self._raise_media_threads()
        self.account = self.thread.hold(_Account(self))
        self.account.create(self._account_config(), True)
        log.info("gateway SIP agent on %s:%d (udp, tcp); proxy %s", s.sip_address,
                 self.sip_port, s.proxy_uri or "none")

    def _account_config(self) -> pj.AccountConfig:
        s = self.settings
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:gateway@{s.domain}"
        acfg.regConfig.registrarUri = ""
        # Always UDP from the listening port: the proxy trusts the gateway by address and
        # port, and pjsip would otherwise move large requests to TCP from an ephemeral port.
        acfg.sipConfig.transportId = self.transport_ids[0]
        if s.proxy_uri:
            acfg.sipConfig.proxies.append(_loose(s.proxy_uri))
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.turnEnabled = False
        acfg.natConfig.sdpNatRewriteUse = False
        acfg.natConfig.viaRewriteUse = False
        acfg.natConfig.contactRewriteUse = False
        acfg.natConfig.sipOutboundUse = False
        acfg.mediaConfig.transportConfig.boundAddress = s.media_address
        acfg.mediaConfig.transportConfig.publicAddress = s.media_address
        acfg.mediaConfig.transportConfig.port = s.rtp_port
        acfg.mediaConfig.transportConfig.portRange = s.rtp_port_range
        acfg.mediaConfig.srtpUse = pj.PJMEDIA_SRTP_OPTIONAL
        acfg.mediaConfig.srtpSecureSignaling = 0
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL
        return acfg

    def _set_codec_priorities(self, preferred: Sequence[str]) -> None:
        wanted = [c.upper() for c in preferred]
        for codec in self.endpoint.codecEnum2():
            name = codec.codecId.split("/", 1)[0].upper()
            priority = 255 - wanted.index(name) if name in wanted else 0
            self.endpoint.codecSetPriority(codec.codecId, priority)

    def reconfigure(self, settings: AgentSettings) -> None:
        """Apply what can change live: codecs, the proxy route, the media address."""
        self.settings = dataclasses.replace(settings, sip_port=self.sip_port)
        self._set_codec_priorities(settings.codecs)
        if self.account is not None:
            self.account.modify(self._account_config())

    def shutdown(self) -> None:
        for leg in list(self.legs.values()):
            if not leg.ended:
                try:
                    op = pj.CallOpParam()
                    op.statusCode = 503 if leg.connected_at is None else 0
                    leg.hangup(op)
                except pj.Error:
                    pass
        if self.legs:
            self.thread.pump(0.3)
        for leg in list(self.legs.values()):
            self._release(leg)
        self.legs.clear()
        # Trunk ports and tone generators are not destroyed here either (see _release_port):
        # they stay in the thread's keep for libDestroy (pjthread's teardown order).
        self._ports.clear()
        self._idle_ports.clear()
        self._idle_tones.clear()
        for pending in self._pending_messages.values():
            for _, buddy in pending:
                self.thread.drop(buddy)
        self._pending_messages.clear()
        # The account is not shut down here: a MESSAGE still awaiting its answer ends inside
        # libDestroy and reports to its account, which must still exist then. The thread
        # keeps it past libDestroy (see pjthread's teardown order).
        self.account = None
        self.endpoint = None  # the Endpoint must be destroyed by its thread, after libDestroy

    # -- requests from the loop ----------------------------------------------------------------

    def answer(self, number: int, status: int, *, reason: str = "",
               headers: Sequence[tuple[str, str]] = ()) -> None:
        leg = self._leg(number)
        op = pj.CallOpParam()
        op.statusCode = status
        if reason:
            op.reason = reason
        _add_headers(op.txOption, headers)
        leg.answer(op)

    def hangup(self, number: int, *, status: int = 0, reason: str = "",
               headers: Sequence[tuple[str, str]] = ()) -> None:
        """End a leg: a final response for an unanswered incoming leg (``status``), CANCEL for
        an unanswered outgoing one, BYE otherwise. Idempotent."""
        leg = self.legs.get(number)
        if leg is None or leg.ended:
            return
        op = pj.CallOpParam()
        if status:
            op.statusCode = status
        if reason:
            op.reason = reason
        _add_headers(op.txOption, headers)
        try:
            leg.hangup(op)
        except pj.Error as error:
            log.debug("hangup of leg %d: %s", number, error.info())

    def require_srtp(self, number: int) -> None:
        self._leg(number).srtp_required = True

    def make_call(self, target_uri: str, *, from_uri: str,
                  headers: Sequence[tuple[str, str]] = ()) -> int:
        if self.account is None:
            raise AgentError("agent not started")
        leg = Leg(self, self.account)
        op = pj.CallOpParam(True)
        op.txOption.localUri = from_uri
        _add_headers(op.txOption, headers)
        self._register(leg)
        try:
            leg.makeCall(target_uri, op)
        except pj.Error as error:
            self.legs.pop(leg.number, None)
            self.thread.drop(leg)
            raise AgentError(f"cannot call {target_uri}: {error.info()}") from None
        return leg.number

    def attach(self, number: int, bridge: TrunkAudioBridge, name: str) -> None:
        """Give a leg its trunk audio. The port starts being clocked at once (towards the null
        sound device), so the trunk's audio flows (and early media is noticed) before the leg
        has media; it is connected to the leg both ways as soon as the leg's media is up."""
        leg = self._leg(number)
        if leg.port is not None:
            raise AgentError(f"leg {number} already has trunk audio")
        if self._idle_ports:
            port = self._idle_ports.pop()
        else:
            port = self.thread.hold(TrunkMediaPort(f"trunk-audio-{len(self._ports) + 1}"))
            self._ports.append(port)
        port.bridge = bridge
        leg.port = port
        port.startTransmit(self.endpoint.audDevManager().getPlaybackDevMedia())
        if leg.audio is not None:
            self._connect(leg)

    def play(self, number: int, tones: list[tuple[int, int, int, int]], *,
             loop: bool = False, exclusive: bool = True) -> None:
        """Play tones to a leg; ``exclusive`` mutes the trunk audio towards it meanwhile."""
        leg = self._leg(number)
        if leg.tone is None:
            leg.tone = self._tone_generator()
        leg.tone.play(tone_descriptions(tones), loop)
        if leg.audio is not None:
            if exclusive and leg.port is not None:
                _quietly(leg.port.stopTransmit, leg.audio)
            leg.tone.startTransmit(leg.audio)
        leg.tone_exclusive = exclusive

    def _tone_generator(self) -> pj.ToneGenerator:
        """An idle tone generator, or a new one. Like trunk ports, tone generators are kept for
        the next leg rather than destroyed (see :meth:`_release_port`)."""
        if self._idle_tones:
            return self._idle_tones.pop()
        tone = self.thread.hold(pj.ToneGenerator())
        tone.createToneGenerator(8000, 1)
        return tone

    def stop_tone(self, number: int) -> None:
        leg = self.legs.get(number)
        if leg is None or leg.tone is None:
            return
        _quietly(leg.tone.stop)
        if leg.audio is not None:
            _quietly(leg.tone.stopTransmit, leg.audio)
            if leg.port is not None:
                _quietly(leg.port.startTransmit, leg.audio)

    def send_dtmf(self, number: int, digits: str) -> None:
        leg = self._leg(number)
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        leg.sendDtmf(prm)

    def send_message(self, uri: str, body: str, tag: str, *,
                     headers: Sequence[tuple[str, str]] = ()) -> None:
        if self.account is None:
            raise AgentError("agent not started")
        buddy_cfg = pj.BuddyConfig()
        buddy_cfg.uri = uri
        buddy_cfg.subscribe = False
        buddy = _Buddy()
        buddy.create(self.account, buddy_cfg)
        prm = pj.SendInstantMessageParam()
        prm.content = body
        prm.contentType = "text/plain;charset=UTF-8"
        _add_headers(prm.txOption, headers)
        try:
            buddy.sendInstantMessage(prm)
        except pj.Error as error:
            raise AgentError(f"cannot send MESSAGE to {uri}: {error.info()}") from None
        self.thread.hold(buddy)
        self._pending_messages.setdefault(_bare(uri), collections.deque()).append((tag, buddy))

    def leg_info(self, number: int) -> dict[str, Any] | None:
        leg = self.legs.get(number)
        if leg is None:
            return None
        info: dict[str, Any] = {"codec": leg.codec or None, "srtp": leg.srtp,
                                "connected_s": (time.monotonic() - leg.connected_at
                                                if leg.connected_at else None)}
        if leg.port is not None and leg.port.bridge is not None:
            info["audio"] = leg.port.bridge.snapshot()
        rtp = self.stream_stats(number)
        if rtp is not None:
            info["rtp"] = rtp
        return info

    def stream_stats(self, number: int) -> dict[str, Any] | None:
        leg = self.legs.get(number)
        if leg is None or leg.audio is None:
            return None
        try:
            stat = leg.getStreamStat(0)
        except pj.Error:
            return None
        rx = stat.rtcp.rxStat
        return {"rx_packets": rx.pkt, "rx_lost": rx.loss, "rx_discarded": rx.discard,
                "jitter_ms": rx.jitterUsec.mean / 1000.0,
                "jb_ms": stat.jbuf.avgDelayMsec, "jb_lost": stat.jbuf.lost,
                "jb_discarded": stat.jbuf.discard, "jb_empty": stat.jbuf.empty}

    # -- callbacks -----------------------------------------------------------------------------

    def _register(self, leg: Leg) -> None:
        leg.number = next(self._numbers)
        self.legs[leg.number] = leg
        self.thread.hold(leg)

    def _on_incoming(self, account: _Account, prm: pj.OnIncomingCallParam) -> None:
        leg = Leg(self, account, prm.callId)
        self._register(leg)
        try:
            invite = parse_invite(prm.rdata.wholeMsg)
        except SipTextError as error:
            self.report(LegOffered(leg=leg.number, invite=None, problem=str(error)))
            return
        self.report(LegOffered(leg=leg.number, invite=invite))

    def _on_state(self, leg: Leg, prm: pj.OnCallStateParam) -> None:
        try:
            info = leg.getInfo()
        except pj.Error:
            return
        state = info.state
        if info.role == pj.PJSIP_ROLE_UAC and state in (pj.PJSIP_INV_STATE_EARLY,
                                                        pj.PJSIP_INV_STATE_CONNECTING):
            self._note_callee_transport(leg, prm)
        if state == pj.PJSIP_INV_STATE_EARLY and info.role == pj.PJSIP_ROLE_UAC:
            self.report(LegProgress(leg=leg.number, status=info.lastStatusCode))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED:
            leg.connected_at = time.monotonic()
            self.report(LegConfirmed(leg=leg.number, srtp=leg.srtp,
                                     secure_signalling=leg.peer_tls))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED and not leg.ended:
            leg.ended = True
            self._release_port(leg)
            self.report(LegEnded(leg=leg.number, status=info.lastStatusCode,
                                 reason=info.lastReason, srtp_refused=leg.srtp_refused))
            # Let pjsua2 finish with the object before dropping our reference to it.
            self.thread.post(self._forget, leg.number)

    def _note_callee_transport(self, leg: Leg, prm: pj.OnCallStateParam) -> None:
        """A handset on TLS answering one of our calls must get SRTP: from now on, media that
        is not SRTP ends the leg (the call logic also refuses the answer; see callcore)."""
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE or \
                event.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG:
            return
        try:
            over_tls = answered_over_tls(event.body.tsxState.src.rdata.wholeMsg)
        except SipTextError:
            return
        if over_tls:
            leg.peer_tls = leg.srtp_required = True
            if leg.audio is not None and not leg.srtp and not leg.ended:
                # the answer's media came up before we knew (it precedes this state change)
                log.error("leg %d: the handset on TLS answered without SRTP; ending it rather "
                          "than carrying plain RTP", leg.number)
                leg.srtp_refused = True
                self.hangup(leg.number, headers=[
                    ("Reason", 'SIP;cause=488;text="SRTP required"')])

    def _forget(self, number: int) -> None:
        leg = self.legs.pop(number, None)
        if leg is not None:
            self._release(leg)

    def _on_media(self, leg: Leg) -> None:
        try:
            info = leg.getInfo()
        except pj.Error:
            return
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            leg.audio = leg.getAudioMedia(media.index)
            stream = leg.getStreamInfo(media.index)
            leg.codec = stream.codecName
            leg.srtp = _srtp_in_use(leg)
            if leg.srtp_required and not leg.srtp:
                log.error("leg %d: SRTP required (handset on TLS) but media is plain RTP; "
                          "ending it rather than downgrading", leg.number)
                leg.srtp_refused = True
                self.hangup(leg.number, status=488, reason="SRTP Required",
                            headers=[("Warning", '399 jbc "SRTP required for TLS handsets"')])
                return
            self._connect(leg)
            if leg.tone is not None and leg.tone.isBusy():
                _quietly(leg.tone.startTransmit, leg.audio)
                if getattr(leg, "tone_exclusive", False) and leg.port is not None:
                    _quietly(leg.port.stopTransmit, leg.audio)
            self.report(LegMedia(leg=leg.number, codec=stream.codecName,
                                 clock_rate=stream.codecClockRate, srtp=leg.srtp))
            return

    def _raise_media_threads(self) -> None:
        """pjsua's RTP worker thread receives the handsets' audio: raised like this one. It
        names itself "media" once running, which may be after libStart returns: looked for
        again as each call's audio is connected (a no-op once found)."""
        self.media_threads += scheduling.raise_named_threads(("media",),
                                                             self.settings.realtime_priority)

    def _connect(self, leg: Leg) -> None:
        if leg.port is None or leg.audio is None:
            return
        self._raise_media_threads()
        leg.port.startTransmit(leg.audio)
        leg.audio.startTransmit(leg.port)

    def _release_port(self, leg: Leg) -> None:
        port, leg.port = leg.port, None
        if port is None:
            return
        if leg.audio is not None:
            _quietly(port.stopTransmit, leg.audio)
            _quietly(leg.audio.stopTransmit, port)
        _quietly(port.stopTransmit, self.endpoint.audDevManager().getPlaybackDevMedia())
        # Ports are kept for the next call rather than destroyed: pjmedia's conference
        # bridge removes ports asynchronously (on its clock thread, since 2.15.1), and a
        # port's destructor frees it at once, so its removal would read freed memory on the
        # next tick (pjsip PR #4200). Idle ports are connected to nothing.
        port.bridge = None
        self._idle_ports.append(port)

    def _release(self, leg: Leg) -> None:
        self._release_port(leg)
        if leg.tone is not None:
            tone, leg.tone = leg.tone, None
            _quietly(tone.stop)
            if leg.audio is not None:
                _quietly(tone.stopTransmit, leg.audio)
            self._idle_tones.append(tone)  # kept, not destroyed: see _release_port
        leg.audio = None
        self.thread.drop(leg)

    def _on_message_status(self, prm: pj.OnInstantMessageStatusParam) -> None:
        pending = self._pending_messages.get(_bare(prm.toUri))
        if not pending:
            return
        tag, buddy = pending.popleft()
        if not pending:
            del self._pending_messages[_bare(prm.toUri)]
        self.thread.post(self.thread.drop, buddy)
        self.report(MessageStatus(tag=tag, status=prm.code, reason=prm.reason))

    def _leg(self, number: int) -> Leg:
        leg = self.legs.get(number)
        if leg is None or leg.ended:
            raise AgentError(f"leg {number} is gone")
        return leg


def _bare(uri: str) -> str:
    uri = uri.strip()
    if "<" in uri and ">" in uri:
        uri = uri[uri.index("<") + 1: uri.index(">")]
    return uri


def _srtp_in_use(leg: Leg) -> bool:
    """Whether the leg's audio goes over SRTP: pjsua's own media dump says so per stream."""
    try:
        dump = leg.dump(True, "")
    except pj.Error:
        return False
    return srtp_active_in_dump(dump)


def srtp_active_in_dump(dump: str) -> bool:
    """pjsua's call dump has, per stream, 'SRTP status: Active Crypto-suite: ...' or
    'SRTP status: Not active'."""
    for line in dump.splitlines():
        _, found, status = line.partition("SRTP status:")
        if found and status.strip().lower().startswith("active"):
            return True
    return False


def _loose(uri: str) -> str:
    return uri if ";lr" in uri else f"{uri};lr"


def _add_headers(option: pj.SipTxOption, headers: Sequence[tuple[str, str]]) -> None:
    for name, value in headers:
        header = pj.SipHeader()
        header.hName = name
        header.hValue = value
        option.headers.append(header)


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(pj.Error):
        fn(*args)


def start_agent(settings: AgentSettings, report: Callable[[AgentEvent], None]
                ) -> Callable[[pj.Endpoint, PjsuaThread], MediaAgent]:
    """The ``setup`` for :class:`PjsuaThread`: builds and starts the agent on its thread."""

    def setup(endpoint: pj.Endpoint, thread: PjsuaThread) -> MediaAgent:
        agent = MediaAgent(endpoint, thread, settings, report)
        agent.start()
        return agent

    return setup
