"""A fake network and fake time for the WAN decision core (no sockets, no sleeps).

:class:`FakeWan` plays the monitor's shell: it calls ``handle_timer`` at the core's deadlines,
answers each probe request from a :class:`FakeNetwork` after a fixed RTT (or never, for a
loss), and collects the transitions. Time only moves when the test says so.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random

from appliance.wan.decision import DecisionCore, DecisionParams, Role, TargetSpec, Transition
from appliance.wan.events import WanState
from appliance.wan.observations import LinkStatus, ProbeOutcome, ProbeResult

TARGETS = (
    TargetSpec(name="east-icmp", role=Role.CLOUD, group="east", kind="icmp"),
    TargetSpec(name="east-sip", role=Role.CLOUD, group="east", kind="sip/udp", app_level=True,
               phase=1),
    TargetSpec(name="west-icmp", role=Role.CLOUD, group="west", kind="icmp"),
    TargetSpec(name="west-https", role=Role.CLOUD, group="west", kind="https", app_level=True,
               every_rounds=4, phase=3),
    TargetSpec(name="anchor1", role=Role.ANCHOR, group="anchor1", kind="icmp"),
    TargetSpec(name="anchor2", role=Role.ANCHOR, group="anchor2", kind="icmp"),
    TargetSpec(name="dns:10.0.0.53", role=Role.DNS, group="dns", kind="dns", every_rounds=4),
)


def link(*, carrier: bool = True, route: bool = True, present: bool = True,
         addresses: tuple[str, ...] = ("10.64.0.2",)) -> LinkStatus:
    return LinkStatus(interface="wan0", present=present, index=3, admin_up=True,
                      carrier=carrier, operstate="UP" if carrier else "LOWERLAYERDOWN",
                      addresses=addresses, default_route=route)


@dataclasses.dataclass
class FakeNetwork:
    """What answers: everything, unless told otherwise."""

    blackhole: bool = False
    down: set[str] = dataclasses.field(default_factory=set)
    """Targets (or groups, by name) that do not answer."""
    unavailable: set[str] = dataclasses.field(default_factory=set)
    """Targets or groups whose application-level probes answer 503."""
    dns_broken: bool = False
    loss: float = 0.0
    """Probability that one attempt (request or answer) is lost."""
    rtt_s: float = 0.02
    jitter_s: float = 0.0
    """Each answer's RTT is rtt_s plus up to this much more (uniform)."""
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(1))

    def answer(self, spec: TargetSpec) -> ProbeResult | None:
        if self.blackhole or spec.name in self.down or spec.group in self.down:
            return None
        if spec.role is Role.DNS and self.dns_broken:
            return None
        if self.loss and self.rng.random() < self.loss:
            return None
        rtt = self.rtt_s + (self.rng.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0)
        if spec.app_level and (spec.name in self.unavailable or spec.group in self.unavailable):
            return ProbeResult(outcome=ProbeOutcome.DEGRADED, rtt_s=rtt,
                               detail="SIP 503 Service Unavailable")
        return ProbeResult(outcome=ProbeOutcome.OK, rtt_s=rtt)


DATAGRAM_KINDS = ("icmp", "sip/udp", "dns")
ACCOUNTED_KINDS = ("icmp", "sip/udp")
"""Probes that report every attempt's fate (ProbeResult.attempts), as the real ones do."""


class FakeWan:
    """Datagram probes (ICMP, SIP over UDP, DNS) are re-sent every ``retry_s`` until answered or
    out of time, like the real ones; connection-based probes get one attempt."""

    def __init__(self, params: DecisionParams | None = None, *, targets=TARGETS,
                 network: FakeNetwork | None = None, link_up: bool = True,
                 initial: WanState = WanState.STARTING, penalty: float = 0.0,
                 rtt_s: float = 0.02, retry_s: float = 0.25) -> None:
        self.params = params or DecisionParams()
        self.specs = {spec.name: spec for spec in targets}
        self.network = network or FakeNetwork()
        self.rtt_s = rtt_s
        self.retry_s = retry_s
        self.now = 0.0
        self.core = DecisionCore(self.params, list(targets), now=0.0, interface="wan0",
                                 initial=initial, penalty=penalty)
        self.transitions: list[Transition] = []
        self.probes_sent = 0
        self._pending: list[tuple[float, int, int, str, ProbeResult | None, float]] = []
        """(time, seq, round, target, answer or None for an attempt to make, deadline)"""
        self._attempts: dict[tuple[int, str], int] = {}
        self._seq = itertools.count()
        if link_up:
            self.set_link(link())

    @property
    def state(self) -> WanState:
        return self.core.state

    def set_link(self, status: LinkStatus) -> None:
        self.core.link_changed(status, self.now)
        self._collect()

    def force(self, cause: str = "forced by test") -> Transition:
        transition = self.core.force(self.now, cause)
        self._collect()
        return transition

    def release(self, cause: str = "released by test") -> Transition:
        transition = self.core.release(self.now, cause)
        self._collect()
        return transition

    def advance(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float) -> None:
        while True:
            deadline = self.core.next_deadline()
            upcoming = min(deadline, self._pending[0][0]) if self._pending else deadline
            if upcoming > until:
                self.now = until
                return
            self.now = max(self.now, upcoming)
            while self._pending and self._pending[0][0] <= self.now:
                _, _, round_id, target, result, deadline = heapq.heappop(self._pending)
                if result is None:
                    self._attempt(round_id, target, deadline)
                else:
                    self.core.probe_done(round_id, target, result, self.now)
            if self.now >= self.core.next_deadline():
                self.core.handle_timer(self.now)
            self._collect()

    def run_until_state(self, state: WanState, limit_s: float) -> float | None:
        """Advance until ``state`` is entered (returns the time) or ``limit_s`` passes."""
        end = self.now + limit_s
        start_count = len(self.transitions)
        while self.now < end:
            self.run_until(min(end, self.now + 0.01))
            for transition in self.transitions[start_count:]:
                if transition.state is state:
                    return transition.at
        return None

    def _collect(self) -> None:
        for request in self.core.take_requests():
            self.probes_sent += 1
            self._attempt(request.round_id, request.target, request.deadline)
        self.transitions.extend(self.core.take_transitions())

    def _attempt(self, round_id: int, target: str, deadline: float) -> None:
        spec = self.specs[target]
        result = self.network.answer(spec)
        key = (round_id, target)
        made = self._attempts[key] = self._attempts.get(key, 0) + 1
        accounted = spec.kind in ACCOUNTED_KINDS
        if result is not None and self.now + result.rtt_s < deadline:
            if accounted:
                result = dataclasses.replace(result, attempts=(None,) * (made - 1)
                                             + (result.rtt_s,))
            heapq.heappush(self._pending, (self.now + result.rtt_s, next(self._seq),
                                           round_id, target, result, deadline))
            return
        if spec.kind in DATAGRAM_KINDS and self.now + self.retry_s < deadline:
            heapq.heappush(self._pending, (self.now + self.retry_s, next(self._seq), round_id,
                                           target, None, deadline))
        elif accounted:  # times out: the attempts it made, all lost but the last
            timed_out = ProbeResult(outcome=ProbeOutcome.TIMEOUT, attempts=(None,) * (made - 1))
            heapq.heappush(self._pending, (deadline - 1e-6, next(self._seq), round_id, target,
                                           timed_out, deadline))

    def states(self) -> list[WanState]:
        return [t.state for t in self.transitions]
