"""The LTE call-state machine: modem reports in, trunk call events out. Pure (time is passed in).

Modems report calls in several ways and lose some of the reports (reference 1.4, 1.11 #13
and #19): Quectel's ``+QIND: "ccinfo"`` URCs, SIMCom's ``+CLCC`` URCs, the plain result codes
``NO CARRIER``/``BUSY``/``NO ANSWER``, ``VOICE CALL: END``, ``RING`` and ``+CLIP``. The
tracker takes all of them and an ``AT+CLCC`` listing now and then, and keeps one truth:

* a call missing from a listing taken after we first saw it has ended (ModemManager's rule);
* a call the listing shows that we do not know is a zombie (an MO call we hung up that never
  went away) or a call waiting (an MT call while another is up): the trunk releases both;
* an end without any report still happens: the listing catches it;
* an incoming call is announced once the modem confirms it and its caller ID is known: at
  the +CLIP after RING, or when a report carries the number, or ``clip_wait`` after RING
  once a report (a URC or the ``AT+CLCC`` listing RING asks for) shows the call. A RING
  that no report confirms, and that a listing taken after it contradicts, is a stray: it
  is dropped without a trace (it used to become a phantom missed call);
* repeated RINGs for a call already ringing are ignored (oFono does the same).

Transitions, for a call already bound to a modem index:

    report stat  2 dialing   -> DIALING
                 3 alerting  -> ALERTING   (CallAlerting, once)
                 0/1 active  -> ACTIVE     (CallAnswered, once)
                 4 incoming  -> RINGING
                -1 released  -> ENDED      (CallEnded with the cause worked out below)
"""

from __future__ import annotations

import dataclasses
import enum

from drivers.trunk import (
    CallAlerting,
    CallAnswered,
    CallDirection,
    CallEnded,
    CallerId,
    CallState,
    EndCause,
    IncomingCall,
    Presentation,
    TrunkCall,
    TrunkEvent,
)

from .parse import CallReport, Clip


class ResultCode(enum.StrEnum):
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    VOICE_END = "VOICE CALL: END"
    MISSED = "MISSED_CALL"


@dataclasses.dataclass(slots=True)
class _Meta:
    call: TrunkCall
    idx: int | None
    first_seen: float
    announced: bool = False
    hangup_requested: bool = False
    result: ResultCode | None = None
    last_ring: float = 0.0
    clip: Clip | None = None
    released_at: float | None = None
    bound_at: float = 0.0
    """When the modem first reported this call (a listing older than that proves nothing)."""
    listing_asked: bool = False
    """A timer asked for an AT+CLCC listing to settle this call (its deadline is spent)."""


class CallTracker:
    def __init__(self, trunk: str, *, clip_wait: float = 0.3, bind_grace: float = 3.0,
                 ring_timeout: float = 10.0, end_settle: float = 0.3) -> None:
        self.trunk = trunk
        self.end_settle = end_settle
        self.clip_wait = clip_wait
        self.bind_grace = bind_grace
        self.ring_timeout = ring_timeout
        self._metas: list[_Meta] = []
        self._events: list[TrunkEvent] = []
        self._poll_wanted = False
        self._release: list[int] = []
        """Modem call indexes the trunk should release (zombies, waiting calls)."""
        self.no_service_reason: str | None = None
        """Set by the trunk while calls are expected to fail (IMS not ready...)."""
        self._clock = 0.0
        """The latest time any modem line or timer told us about."""
        self._ended_at: dict[int, float] = {}
        """Modem call index -> when we last ended a call that had it. A listing sent before
        that moment still shows the call; it must not bring it back as a new one. (A handful
        of indexes at most; an old entry never matches a newer listing.)"""

    # -- queries ---------------------------------------------------------------------------

    def calls(self) -> list[TrunkCall]:
        return [m.call for m in self._metas if m.announced or m.call.direction is
                CallDirection.OUTGOING]

    def live(self) -> list[TrunkCall]:
        return [m.call for m in self._metas]

    def idx_of(self, call: TrunkCall) -> int | None:
        meta = self._meta(call)
        return meta.idx if meta else None

    def take_events(self) -> list[TrunkEvent]:
        events, self._events = self._events, []
        return events

    def take_releases(self) -> list[int]:
        """Modem call indexes to release now (zombies, waiting calls); taken."""
        release, self._release = self._release, []
        return release

    @property
    def releases_pending(self) -> bool:
        return bool(self._release)

    @property
    def poll_wanted(self) -> bool:
        """An AT+CLCC listing would settle something (cleared by the next snapshot)."""
        return self._poll_wanted

    def want_poll(self) -> None:
        """The trunk did something a listing should confirm (ATD, ATA, a hang-up...)."""
        self._poll_wanted = True

    def get_timer(self) -> float | None:
        deadlines = []
        for meta in self._metas:
            call = meta.call
            if meta.released_at is not None:
                deadlines.append(meta.released_at + self.end_settle)
            elif call.direction is CallDirection.INCOMING and call.state is CallState.RINGING:
                if not meta.announced and not meta.listing_asked:
                    deadlines.append(meta.last_ring + self.clip_wait)
                deadlines.append(meta.last_ring + self.ring_timeout)
            elif (meta.idx is None and call.direction is CallDirection.OUTGOING
                  and not meta.listing_asked):
                deadlines.append(meta.first_seen + self.bind_grace)
        return min(deadlines) if deadlines else None

    # -- what we do ------------------------------------------------------------------------

    def dial_started(self, number: str, *, emergency: bool, now: float) -> TrunkCall:
        call = TrunkCall(trunk=self.trunk, direction=CallDirection.OUTGOING, number=number,
                         emergency=emergency)
        self._metas.append(_Meta(call=call, idx=None, first_seen=now))
        return call

    def dial_failed(self, call: TrunkCall) -> None:
        """ATD was refused: the call never existed for anyone but us."""
        meta = self._meta(call)
        if meta is not None:
            self._metas.remove(meta)
            call.state = CallState.ENDED

    def answered(self, call: TrunkCall) -> None:
        meta = self._meta(call)
        if meta is not None:
            self._set_state(meta, CallState.ACTIVE)

    def hangup_requested(self, call: TrunkCall) -> None:
        meta = self._meta(call)
        if meta is not None:
            meta.hangup_requested = True

    def end(self, call: TrunkCall, cause: EndCause, detail: str = "") -> None:
        meta = self._meta(call)
        if meta is not None:
            self._finish(meta, cause, detail)

    def fail_all(self, detail: str) -> None:
        for meta in list(self._metas):
            self._finish(meta, EndCause.FAILED, detail)

    # -- what the modem says ---------------------------------------------------------------

    def report(self, report: CallReport, now: float) -> None:
        self._tick(now)
        if not report.voice:
            return
        meta = self._by_idx(report.idx)
        if report.stat == -1:
            if meta is not None:
                self._released(meta, now)
            return
        if meta is None:
            meta = self._bind(report, now)
            if meta is None:
                return
        if report.number and not meta.call.number:
            meta.call.number = report.number
        stat = report.stat
        if stat == 2:
            self._set_state(meta, CallState.DIALING)
        elif stat == 3:
            self._set_state(meta, CallState.ALERTING)
        elif stat in (0, 1):
            self._set_state(meta, CallState.ACTIVE)
        elif stat == 4:
            meta.last_ring = max(meta.last_ring, now)
            if not meta.announced and (report.number or meta.listing_asked):
                self._announce(meta)

    def snapshot(self, reports: list[CallReport], taken_at: float) -> None:
        """An ``AT+CLCC`` listing; ``taken_at`` is when the command was sent."""
        self._tick(taken_at)
        listed = set()
        for report in reports:
            if report.stat == -1:
                continue
            ended_at = self._ended_at.get(report.idx)
            if ended_at is not None and ended_at >= taken_at and self._by_idx(report.idx) is None:
                continue  # the call ended while the listing was on its way
            listed.add(report.idx)
            self.report(report, taken_at)
        for meta in list(self._metas):
            if meta.idx is not None and meta.idx not in listed and meta.bound_at < taken_at:
                if meta.released_at is None:
                    self._released(meta, taken_at)
            elif (meta.idx is None and meta.call.direction is CallDirection.OUTGOING
                  and taken_at - meta.first_seen > self.bind_grace):
                self._finish(meta, EndCause.FAILED, "the modem never listed the dialled call")
            elif (meta.idx is None and meta.call.direction is CallDirection.INCOMING
                  and not meta.announced and meta.clip is None
                  and meta.first_seen < taken_at):
                self._metas.remove(meta)  # a stray RING: the modem has no such call
                meta.call.state = CallState.ENDED
        self._poll_wanted = False

    def result_code(self, code: ResultCode, now: float) -> None:
        """NO CARRIER, BUSY, ... as URCs. They name no call: they end the one call the modem
        has reported; a call it has not listed yet is left alone (a left-over result of the
        previous call must not end or explain a call being dialled)."""
        self._tick(now)
        live = [m for m in self._metas if m.call.state is not CallState.ENDED]
        reported = [m for m in live if m.idx is not None]
        for meta in reported:
            if code is not ResultCode.VOICE_END:
                meta.result = code
        if len(reported) == 1 and len(live) == 1:
            meta = reported[0]
            if code is ResultCode.MISSED and meta.call.state is not CallState.RINGING:
                return
            self._finish(meta, self._cause(meta), self._detail(meta))
        elif live:
            self._poll_wanted = True

    def _released(self, meta: _Meta, now: float) -> None:
        """The modem says the call is gone. An outgoing call that never connected waits a
        moment for the result code (BUSY, NO ANSWER) that says why; it can come either side
        of the release report."""
        call = meta.call
        if (call.direction is CallDirection.OUTGOING and call.state is not CallState.ACTIVE
                and meta.result is None and not meta.hangup_requested):
            meta.released_at = now
            return
        self._finish(meta, self._cause(meta), self._detail(meta))

    def ring(self, now: float) -> None:
        self._tick(now)
        if any(m.call.state in (CallState.ACTIVE, CallState.DIALING, CallState.ALERTING)
               for m in self._metas):
            # RING announces a call to an idle line; with a call up, a second caller shows as
            # +CCWA (waiting). A RING now is the tail of the ringing we just answered.
            return
        for meta in self._metas:
            if (meta.call.direction is CallDirection.INCOMING
                    and meta.call.state is CallState.RINGING):
                meta.last_ring = now  # a repeat (or duplicate) RING for the ringing call
                return
        call = TrunkCall(trunk=self.trunk, direction=CallDirection.INCOMING, number=None,
                         state=CallState.RINGING)
        self._metas.append(_Meta(call=call, idx=None, first_seen=now, last_ring=now))
        self._poll_wanted = True

    def clip(self, clip: Clip, now: float) -> None:
        self._tick(now)
        for meta in self._metas:
            if (meta.call.direction is CallDirection.INCOMING
                    and meta.call.state is CallState.RINGING):
                meta.clip = clip
                if clip.number:
                    meta.call.number = clip.number
                if not meta.announced:
                    self._announce(meta)
                return

    def handle_timer(self, now: float) -> None:
        self._tick(now)
        for meta in list(self._metas):
            call = meta.call
            if meta.released_at is not None:
                if now >= meta.released_at + self.end_settle:
                    self._finish(meta, self._cause(meta), self._detail(meta))
            elif call.direction is CallDirection.INCOMING and call.state is CallState.RINGING:
                if now >= meta.last_ring + self.ring_timeout:
                    self._finish(meta, EndCause.MISSED, "the caller gave up (ringing stopped)")
                elif (not meta.announced and not meta.listing_asked
                      and now >= meta.last_ring + self.clip_wait):
                    if meta.idx is not None:
                        self._announce(meta)
                    else:
                        meta.listing_asked = True  # a RING alone proves nothing: ask the list
                        self._poll_wanted = True
            elif (meta.idx is None and call.direction is CallDirection.OUTGOING
                  and not meta.listing_asked and now >= meta.first_seen + self.bind_grace):
                meta.listing_asked = True
                self._poll_wanted = True

    # -- internals -------------------------------------------------------------------------

    def _meta(self, call: TrunkCall) -> _Meta | None:
        return next((m for m in self._metas if m.call is call), None)

    def _by_idx(self, idx: int) -> _Meta | None:
        return next((m for m in self._metas if m.idx == idx), None)

    def _bind(self, report: CallReport, now: float) -> _Meta | None:
        if report.direction == 0:
            pending = next((m for m in self._metas if m.idx is None
                            and m.call.direction is CallDirection.OUTGOING), None)
            if pending is None:
                # An outgoing call we do not own: a zombie we hung up, or left from before.
                if report.idx not in self._release:
                    self._release.append(report.idx)
                return None
            pending.idx = report.idx
            pending.bound_at = now
            return pending
        if report.stat == 5 or any(m.call.state in (CallState.ACTIVE, CallState.DIALING,
                                                    CallState.ALERTING) for m in self._metas):
            if report.idx not in self._release:
                self._release.append(report.idx)  # call waiting: one call at a time
            return None
        pending = next((m for m in self._metas if m.idx is None
                        and m.call.direction is CallDirection.INCOMING), None)
        if pending is None:
            call = TrunkCall(trunk=self.trunk, direction=CallDirection.INCOMING,
                             number=report.number or None, state=CallState.RINGING)
            pending = _Meta(call=call, idx=report.idx, first_seen=now, last_ring=now)
            self._metas.append(pending)
        pending.idx = report.idx
        pending.bound_at = now
        return pending

    def _announce(self, meta: _Meta) -> None:
        meta.announced = True
        clip = meta.clip
        number = meta.call.number or None
        if clip is not None and clip.validity == 1:
            caller = CallerId(number=None, presentation=Presentation.WITHHELD)
        elif number is None:
            caller = CallerId(number=None, presentation=Presentation.UNAVAILABLE)
        else:
            caller = CallerId(number=number)
        meta.call.caller = caller
        self._events.append(IncomingCall(call=meta.call))

    def _set_state(self, meta: _Meta, state: CallState) -> None:
        call = meta.call
        if call.state is state or call.state is CallState.ENDED:
            return
        if call.state is CallState.ACTIVE and state is not CallState.ENDED:
            return  # never back from answered
        call.state = state
        if state is CallState.ALERTING:
            self._events.append(CallAlerting(call=call))
        elif state is CallState.ACTIVE:
            self._events.append(CallAnswered(call=call))

    def _cause(self, meta: _Meta) -> EndCause:
        call = meta.call
        if meta.hangup_requested:
            return EndCause.LOCAL_HANGUP
        if meta.result is ResultCode.BUSY:
            return EndCause.BUSY
        if meta.result is ResultCode.NO_ANSWER:
            return EndCause.NO_ANSWER
        if call.state is CallState.ACTIVE:
            return EndCause.NORMAL
        if call.direction is CallDirection.INCOMING:
            return EndCause.MISSED
        if self.no_service_reason:
            return EndCause.NO_SERVICE
        if call.state is CallState.ALERTING:
            return EndCause.NO_ANSWER if meta.result is None else EndCause.REJECTED
        return EndCause.REJECTED

    def _detail(self, meta: _Meta) -> str:
        if self.no_service_reason and meta.call.state in (CallState.DIALING,):
            return self.no_service_reason
        return meta.result.value if meta.result else ""

    def _tick(self, now: float) -> None:
        self._clock = max(self._clock, now)

    def _finish(self, meta: _Meta, cause: EndCause, detail: str) -> None:
        if meta in self._metas:
            self._metas.remove(meta)
        if meta.idx is not None:
            self._ended_at[meta.idx] = self._clock
        call = meta.call
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        call.end_cause = cause
        if call.direction is CallDirection.INCOMING and not meta.announced:
            return  # nobody ever heard of it
        self._events.append(CallEnded(call=call, cause=cause, detail=detail))
