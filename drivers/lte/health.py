"""Can this LTE modem carry an outside call right now? Pure: the modem's last answers in,
a verdict out.

* No usable SIM, or no network registration: emergency calls only.
* Voice needs a voice path: VoLTE (IMS registered) or a 2G/3G circuit-switched registration.
  ``+CREG: ...,7`` is *not* one: on LTE the modem attaches for both domains at once
  ("combined attach"), and on a VoLTE-only network a call then fails at once when IMS is
  not registered (reference 1.9 and 1.11 #14; the EC25 that read 'IMS not-ready' yet
  'ready' and refused every call). A modem that reports no IMS state at all is given the
  benefit of the doubt.
* The first seconds after (re)registration are settling: the network accepts the modem
  before it accepts its calls (quirk 6: the first call after a replug fails for 2-4 s), so
  the trunk is nobody's first choice until ``settle_s`` after it registered.
"""

from __future__ import annotations

import dataclasses

from . import parse

LTE_ACCESS = frozenset({7, 9, 10, 11, 12, 13})
"""+CREG/+COPS access technologies that are LTE or newer: no circuit-switched voice there."""


@dataclasses.dataclass(slots=True)
class LteStatus:
    """What the modem last said about its SIM, network and voice service. Cleared whenever
    the modem leaves service: stale figures must not outlive the port (finding 8)."""

    sim: str | None = None
    """'ready', 'missing', 'pin-required', 'puk-required', 'busy', ..."""
    cs: parse.Registration | None = None
    ps: parse.Registration | None = None
    operator: str | None = None
    cops_act: int | None = None
    rssi: int | None = None
    ims: bool | None = None
    registered_at: float | None = None
    """When registration was first seen since the modem last (re)initialised."""

    @property
    def registered(self) -> bool:
        return bool((self.cs and self.cs.registered) or (self.ps and self.ps.registered))

    @property
    def registration(self) -> parse.Registration | None:
        cs, ps = self.cs, self.ps
        return cs if cs and cs.registered else ps if ps and ps.registered else (cs or ps)

    @property
    def access_technology(self) -> int | None:
        reg = self.registration
        return reg.act if reg and reg.act is not None else self.cops_act

    @property
    def circuit_switched_voice(self) -> bool:
        """Registered on 2G/3G, where a call goes circuit-switched without IMS."""
        cs = self.cs
        if not (cs and cs.registered):
            return False
        act = cs.act if cs.act is not None else self.cops_act
        return act is None or act not in LTE_ACCESS

    def note_time(self, now: float) -> None:
        if self.registered and self.registered_at is None:
            self.registered_at = now
        elif not self.registered:
            self.registered_at = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    limited: bool
    """True: emergency calls only (or none) for now."""
    reason: str = ""
    no_service: str | None = None
    """Why an outside call would fail, for the call tracker to explain a refused call."""


def voice_verdict(status: LteStatus, *, now: float, settle_s: float,
                  pin_configured: bool) -> Verdict:
    sim = status.sim
    if sim == "missing":
        return Verdict(limited=True, reason="no SIM card (or inserted the wrong way round): "
                       "emergency calls only")
    if sim in ("pin-required", "puk-required"):
        hint = ("the configured PIN was not accepted; enter it by hand" if pin_configured
                else "set 'pin' for this trunk")
        return Verdict(limited=True, reason=f"SIM is locked ({sim}): {hint}; emergency only")
    if sim != "ready":
        return Verdict(limited=True, reason=f"SIM not usable ({sim or 'unknown'}): emergency "
                       "calls only")
    if not status.registered:
        reg = status.registration
        return Verdict(limited=True, reason=f"not registered to a network "
                       f"({reg.name if reg else 'unknown'}): emergency calls only")
    if status.ims is False and not status.circuit_switched_voice:
        why = "VoLTE (IMS) not ready"
        return Verdict(limited=True, no_service=why, reason=f"{why} and no 2G/3G voice "
                       "registration (an LTE attach is not one): outside calls would fail; "
                       "emergency calls only")
    if status.registered_at is not None and now - status.registered_at < settle_s:
        left = settle_s - (now - status.registered_at)
        return Verdict(limited=True, reason=f"settling after registering (the first calls "
                       f"after a modem restart fail): ready in {left:.0f} s")
    return Verdict(limited=False)
