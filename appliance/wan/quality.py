"""What voice would get over the WAN: loss per probe packet, jitter and latency, turned into
an ITU-T G.107 E-model R-factor and MOS.

The probe rounds answer "is the cloud there?" and hide loss on purpose: a datagram probe
resends until answered, so a round that succeeds on its fourth attempt is a success. A voice
stream has no such luck; every one of those lost attempts would have been a lost voice
packet. So the datagram probes (ICMP echo, SIP OPTIONS over UDP) report the fate of every
attempt they counted (:attr:`ProbeResult.attempts`: the RTT of the answered one, ``None``
for each one lost), and this module keeps them per target in a sliding time window.

The estimate (pure, no clocks: ``now`` is passed in):

* **round-trip loss** ``L``: lost attempts / counted attempts. A voice packet crosses the
  link once, so the one-way loss is ``Ppl = 1 - sqrt(1 - L)`` (the same both ways).
* **latency**: one-way network delay = median RTT / 2.
* **jitter** ``J``: the mean absolute difference between consecutive RTTs of a target (RFC
  3550's interarrival jitter is built on the same differences of transit times).
* **jitter buffer**: an adaptive buffer ``B = clamp(2 J, 20 ms, jitter_buffer_max_ms)``
  absorbs jitter as delay; a packet whose RTT exceeds its target's minimum in the window by
  more than ``2 B`` (its one-way share more than ``B``) arrives too late for it and counts as
  lost.
* **mouth-to-ear delay** ``d`` = network delay + ``B`` + 20 ms (one G.711 frame).
* **E-model** (G.107, default values elsewhere, G.711 with packet-loss concealment):
  ``Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)``;
  ``Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)`` with ``Ie = 0``, ``Bpl = 25.1``,
  ``BurstR = 1`` (random loss), ``Ppl`` in percent;
  ``R = 93.2 - Id - Ie,eff``; ``MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6``.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

G711_IE = 0.0
G711_BPL_PLC = 25.1
"""Packet-loss robustness of G.711 with packet-loss concealment (G.113 Appendix I)."""
FRAME_MS = 20.0
MIN_JITTER_BUFFER_MS = 20.0


def r_factor(delay_ms: float, loss_pct: float, *, ie: float = G711_IE,
             bpl: float = G711_BPL_PLC, burst_r: float = 1.0) -> float:
    """The simplified E-model's R for a one-way mouth-to-ear delay and one-way packet loss."""
    over = delay_ms - 177.3
    delay_impairment = 0.024 * delay_ms + (0.11 * over if over > 0 else 0.0)
    loss = max(0.0, min(100.0, loss_pct))
    loss_impairment = ie + (95.0 - ie) * loss / (loss / burst_r + bpl) if loss else ie
    return 93.2 - delay_impairment - loss_impairment


def mos_of(r: float) -> float:
    """G.107's mapping from R to an estimated mean opinion score (1 .. 4.5)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6


def one_way_loss(round_trip_loss: float) -> float:
    """The loss each way (as a fraction) that makes ``round_trip_loss`` when both directions
    lose independently and alike."""
    return 1.0 - math.sqrt(max(0.0, 1.0 - min(1.0, round_trip_loss)))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QualityEstimate:
    packets: int
    lost: int
    round_trip_loss_pct: float
    loss_pct: float
    """One-way loss a voice packet would see, in percent, late arrivals included."""
    late_pct: float
    rtt_ms: float | None
    jitter_ms: float | None
    jitter_buffer_ms: float
    delay_ms: float
    """Mouth-to-ear delay the estimate assumes."""
    r: float
    mos: float

    def describe(self) -> str:
        parts = [f"{self.round_trip_loss_pct:.0f} % of {self.packets} probe packets lost"]
        if self.jitter_ms is not None:
            parts.append(f"jitter {self.jitter_ms:.0f} ms")
        if self.rtt_ms is not None:
            parts.append(f"RTT {self.rtt_ms:.0f} ms")
        return ", ".join(parts) + f": voice MOS {self.mos:.1f} (R {self.r:.0f})"

    def to_json(self) -> dict[str, Any]:
        return {name: (round(value, 2) if isinstance(value, float) else value)
                for name, value in dataclasses.asdict(self).items()}


def estimate(per_target: Iterable[Sequence[float | None]], *,
             jitter_buffer_max_ms: float) -> QualityEstimate | None:
    """The estimate for the probe attempts of one or more targets (RTT in seconds, None =
    lost), each target's in the order they were made. Jitter and lateness are measured
    within a target, never between two that are near and far."""
    targets = [list(attempts) for attempts in per_target if attempts]
    total = sum(len(attempts) for attempts in targets)
    if not total:
        return None
    lost = sum(1 for attempts in targets for rtt in attempts if rtt is None)
    series = [[rtt for rtt in attempts if rtt is not None] for attempts in targets]
    rtts = [rtt for answered in series for rtt in answered]
    differences = [abs(b - a) for answered in series for a, b in itertools.pairwise(answered)]
    jitter_ms = 1000.0 * statistics.fmean(differences) if differences else None
    buffer_ms = min(jitter_buffer_max_ms, max(MIN_JITTER_BUFFER_MS, 2.0 * (jitter_ms or 0.0)))
    late = sum(1 for answered in series if answered
               for rtt in answered if (rtt - min(answered)) * 1000.0 > 2.0 * buffer_ms)
    rtt_ms = 1000.0 * statistics.median(rtts) if rtts else None
    round_trip = lost / total
    late_share = late / total
    loss = 1.0 - (1.0 - one_way_loss(round_trip)) * (1.0 - late_share)
    delay_ms = (rtt_ms or 0.0) / 2.0 + buffer_ms + FRAME_MS
    r = r_factor(delay_ms, 100.0 * loss)
    return QualityEstimate(packets=total, lost=lost,
                           round_trip_loss_pct=100.0 * round_trip, loss_pct=100.0 * loss,
                           late_pct=100.0 * late_share, rtt_ms=rtt_ms, jitter_ms=jitter_ms,
                           jitter_buffer_ms=buffer_ms, delay_ms=delay_ms, r=r, mos=mos_of(r))


class PacketWindow:
    """One target's probe attempts over the last ``window_s`` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float | None]] = collections.deque()

    def add(self, attempts: Iterable[float | None], now: float) -> None:
        for rtt in attempts:
            self._samples.append((now, rtt))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()

    def attempts(self, now: float) -> list[float | None]:
        self._trim(now)
        return [rtt for _, rtt in self._samples]

    def clear(self) -> None:
        self._samples.clear()
