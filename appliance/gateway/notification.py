"""The on-site emergency notification as a pure call core: rings one extension about an
emergency call and plays an alert when answered.
"""

from __future__ import annotations

from .callcore import (
    NOTIFY_ALERT_S,
    Action,
    Begin,
    CallCore,
    HangupLeg,
    LegPlaced,
    LegPlaceFailed,
    Phase,
    PlayTone,
    RingTarget,
    Shutdown,
    StartRecord,
    Timeout,
    journal,
    rows,
)
from .config import GatewayConfig
from .leg_events import LegConfirmed, LegDtmf, LegEnded, LegMedia, LegProgress
from .policy import CallKind
from .sipmsg import header_text, sip_quote
from .tones import NOTIFY_ALERT_TONE


class NotificationCore(CallCore):
    """Rings one on-site extension to tell them of an emergency call; plays an alert tone
    when answered. Not a trunk call: it holds no trunk and is never pre-empted.

    ``routing -Begin-> placing -LegPlaced-> ringing -LegConfirmed-> active -Timeout-> ended``;
    a LegEnded, a Timeout while ringing, a failed placing or Shutdown end it at any point."""

    kind = CallKind.TEST
    direction = "notification"
    TABLE = {
        (Phase.ROUTING, Begin): "_begin",
        (Phase.PLACING, LegPlaced): "_placed",
        (Phase.PLACING, LegPlaceFailed): "_place_failed",
        (Phase.RINGING, LegConfirmed): "_answered",
        **rows((Phase.RINGING, Phase.ACTIVE), [Timeout, Shutdown], "_over"),
        **rows((Phase.RINGING, Phase.ACTIVE), [LegEnded], "_leg_ended"),
        (Phase.ACTIVE, LegConfirmed): "_noted",
        **rows((Phase.RINGING, Phase.ACTIVE), [LegMedia, LegProgress, LegDtmf], "_noted"),
        **rows((Phase.ROUTING, Phase.PLACING), [Shutdown], "_stopping"),
    }

    def __init__(self, key: str, config: GatewayConfig, *, extension: str, text: str,
                 caller_display: str) -> None:
        super().__init__(key, config)
        self.extension = extension
        self.text = text
        self.caller_display = caller_display
        self.to_party = extension
        self.from_party = "emergency-notify"
        self.leg: int | None = None

    def _begin(self, event: Begin, now: float) -> tuple[Phase, list[Action]]:
        domain = self.config.domain
        return Phase.PLACING, [StartRecord(), RingTarget(
            self.extension,
            f"{sip_quote(self.caller_display)} <sip:emergency-notify@{domain}>",
            (("Subject", header_text(self.text)), ("Priority", "emergency"),
             ("Alert-Info", "<urn:alert:service:emergency>")))]

    def _placed(self, event: LegPlaced, now: float) -> tuple[Phase, list[Action]]:
        self.leg = event.leg
        self.legs.add(event.leg)
        self.deadline = now + self.config.emergency_notify_ring_s
        return Phase.RINGING, []

    def _place_failed(self, event: LegPlaceFailed, now: float) -> tuple[Phase, list[Action]]:
        return self._end("failed", event.message, [])

    def _answered(self, event: LegConfirmed, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        if event.secure_signalling and not event.srtp:
            # never a downgrade, not even for the alert tone (the MESSAGE still went)
            return self._srtp_refused([
                HangupLeg(self.leg, (("Reason", 'SIP;cause=488;text="SRTP required"'),))])
        self.answered = True
        self.deadline = now + NOTIFY_ALERT_S
        return Phase.ACTIVE, [PlayTone(self.leg, tuple(NOTIFY_ALERT_TONE))]

    def _over(self, event: object, now: float) -> tuple[Phase, list[Action]]:
        assert self.leg is not None
        return self._end("answered" if self.answered else "no-answer", self.cause,
                         [HangupLeg(self.leg)])

    def _srtp_refused(self, actions: list[Action]) -> tuple[Phase, list[Action]]:
        return self._end("failed", "the extension on TLS answered without SRTP", [
            *actions,
            journal("emergency-notify-failed", f"{self.key}: {self.extension} answered the "
                    "notification over TLS without SRTP; not carried in plain RTP",
                    call=self.key, extension=self.extension)])

    def _leg_ended(self, event: LegEnded, now: float) -> tuple[Phase, list[Action]]:
        self.legs.discard(event.leg)
        if event.srtp_refused:
            return self._srtp_refused([])
        return self._end("answered" if self.answered else "no-answer",
                         f"{event.status} {event.reason}", [])
