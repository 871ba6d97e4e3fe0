"""How fast the simulated world moves.

``SimTiming()`` is real life: a modem answers a command in ~20 ms, reboots in ~10 s, the far
end rings every 4 s. Tests use :meth:`SimTiming.fast` (call progress and reboots compressed;
audio always stays real time, 20 ms per frame) and can add random jitter to every line the
modem sends and every audio frame it writes.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SimTiming:
    command_s: float = 0.02
    """Time to answer an ordinary command."""
    jitter_s: float = 0.0
    """Random extra delay (0..jitter) on each line sent and each audio frame written."""
    boot_s: float = 10.0
    """Power-on / CFUN=1,1 / USB reset until the ports are back (reference 1.2)."""
    unplug_s: float = 0.3
    """From CFUN=1,1's OK until the USB ports disappear."""
    sim_busy_s: float = 2.0
    """After boot, the SIM answers +CME ERROR: 14 (busy) this long."""
    search_s: float = 1.5
    """After boot, registration reads 'searching' this long."""
    dial_to_alerting_s: float = 1.5
    ring_period_s: float = 4.0
    """Far-end ring cadence (outgoing) and RING repetition (incoming)."""
    no_answer_s: float = 30.0
    """The network gives up on an unanswered outgoing call (NO ANSWER)."""
    answer_s: float = 0.3
    """ATA until the call is connected."""
    pcm_ready_s: float = 0.6
    """SIMCom: AT+CPCMREG=1 answers ERROR for this long after the call becomes active."""
    reject_s: float = 0.3
    """A rejected or IMS-less call ends this long after ATD."""

    @classmethod
    def fast(cls, *, jitter_s: float = 0.0, boot_s: float = 1.0) -> SimTiming:
        return cls(command_s=0.005, jitter_s=jitter_s, boot_s=boot_s, unplug_s=0.1,
                   sim_busy_s=0.3, search_s=0.2, dial_to_alerting_s=0.15, ring_period_s=0.25,
                   no_answer_s=1.2, answer_s=0.1, pcm_ready_s=0.15, reject_s=0.1)
