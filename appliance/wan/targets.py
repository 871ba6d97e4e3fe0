"""What the decision core keeps per probe target and per independent group of targets.

A target's sliding window of its last ``window`` results decides its health (k of n), and
its last minute of results gives the figures 'jbc wan' shows; the attempts of its datagram
probes (:mod:`appliance.wan.quality`) give what voice would get over it. A group (a cloud region, an
internet anchor, the resolvers) answers in a round when any of its targets does, and has its
own fall/rise hysteresis. Pure: times are passed in.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from typing import TYPE_CHECKING, Any

from .observations import ProbeResult
from .quality import PacketWindow, QualityEstimate, estimate

if TYPE_CHECKING:
    from .decision import DecisionParams

STATS_WINDOW_S = 60.0
"""'jbc wan' shows each target's RTT and loss over this much recent time."""


class Role(enum.StrEnum):
    CLOUD = "cloud"
    ANCHOR = "anchor"
    DNS = "dns"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TargetSpec:
    name: str
    role: Role
    group: str
    """The cloud region, the anchor's own name, or 'dns'."""
    kind: str = "icmp"
    every_rounds: int = 1
    phase: int = 0
    app_level: bool = False
    """SIP OPTIONS / HTTPS: a 503 from it says the cloud (region) is degraded."""


class TargetTrack:
    """One target's sliding window (k of n health) and its last minute of figures."""

    def __init__(self, spec: TargetSpec, params: DecisionParams) -> None:
        self.spec = spec
        self.params = params
        self.window: collections.deque[bool] = collections.deque(maxlen=params.window)
        self.recent: collections.deque[tuple[float, bool, float | None]] = collections.deque()
        self.last: ProbeResult | None = None
        self.last_at: float | None = None
        self.healthy = True
        self.answers_in_row = 0
        self.packets = PacketWindow(params.quality_window_s)

    def add(self, result: ProbeResult, now: float) -> None:
        answered = result.outcome.answered
        self.packets.add(result.attempts, now)
        self.window.append(answered)
        self.last = result
        self.last_at = now
        self.recent.append((now, answered, result.rtt_s if answered else None))
        self._trim(now)
        self.answers_in_row = self.answers_in_row + 1 if answered else 0
        lost = sum(1 for ok in self.window if not ok)
        too_many_lost = lost > self.params.window - self.params.window_quorum
        if self.healthy and too_many_lost:
            self.healthy = False
        elif not self.healthy and not too_many_lost and (
                self.answers_in_row >= self.params.rise_rounds):
            self.healthy = True

    def _trim(self, now: float) -> None:
        while self.recent and self.recent[0][0] < now - STATS_WINDOW_S:
            self.recent.popleft()

    def lost_in_window(self) -> int:
        return sum(1 for ok in self.window if not ok)

    def quality(self, now: float) -> QualityEstimate | None:
        return estimate([self.packets.attempts(now)],
                        jitter_buffer_max_ms=self.params.jitter_buffer_max_ms)

    def report(self, now: float) -> dict[str, Any]:
        self._trim(now)
        sent = len(self.recent)
        rtts = [rtt for _, ok, rtt in self.recent if ok and rtt is not None]
        lost = sum(1 for _, ok, _ in self.recent if not ok)
        return {
            "name": self.spec.name, "role": str(self.spec.role), "group": self.spec.group,
            "kind": self.spec.kind, "healthy": self.healthy,
            "last": self.last.describe() if self.last else None,
            "last_outcome": str(self.last.outcome) if self.last else None,
            "last_age_s": None if self.last_at is None else now - self.last_at,
            "probes_last_minute": sent,
            "loss_pct": None if sent == 0 else 100.0 * lost / sent,
            "rtt_ms": None if not rtts else {
                "last": rtts[-1] * 1000, "avg": 1000 * sum(rtts) / len(rtts),
                "min": min(rtts) * 1000, "max": max(rtts) * 1000},
            "quality": None if (q := self.quality(now)) is None else q.to_json(),
        }


class GroupTrack:
    """Fall/rise hysteresis for one independent group (a region, an anchor, the resolvers)."""

    def __init__(self, name: str, role: Role, params: DecisionParams) -> None:
        self.name = name
        self.role = role
        self.params = params
        self.failed_in_row = 0
        self.good_in_row = 0
        self.down = False
        self.service_unavailable = False

    def add_round(self, answered: bool) -> None:
        if answered:
            self.good_in_row += 1
            self.failed_in_row = 0
            if self.good_in_row >= self.params.rise_rounds:
                self.down = False
        else:
            self.failed_in_row += 1
            self.good_in_row = 0
            if self.failed_in_row >= self.params.fall_rounds:
                self.down = True

    @property
    def label(self) -> str:
        if self.role is Role.CLOUD:
            return f"cloud region {self.name}"
        if self.role is Role.ANCHOR:
            return f"internet anchor {self.name}"
        return "DNS"


def group_key(spec: TargetSpec) -> str:
    return f"{spec.role}:{spec.group}"
