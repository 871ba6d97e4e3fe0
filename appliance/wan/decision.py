"""The WAN decision core: probe results and link states in, probe requests and transitions out.

Pure (no sockets, no clocks, no tasks): every call takes ``now`` (a monotonic time in seconds)
and the asyncio shell (:mod:`appliance.wan.service`) re-arms one timer at
:meth:`DecisionCore.next_deadline`. Tests drive it with fake time.

How a verdict is reached
------------------------
* A **round** starts every ``interval_s``; each target due in it (``every_rounds``) is asked for
  one probe (:meth:`take_requests`). A round is evaluated when all its probes have reported or
  ``round_timeout_s`` after it started (missing answers are timeouts). Rounds are evaluated in
  the order they started, so hysteresis counts real sequences.
* **Per target**, a sliding window keeps the last ``window`` results; a target is healthy while at
  least ``window_quorum`` of them answered (k of n) and, once unhealthy, again after
  ``rise_rounds`` answers in a row. Per target figures for the last minute feed ``jbc wan``.
* **Groups**: each cloud region, each internet anchor, and the DNS resolvers together. A group
  answers in a round when any of its targets does; it is down after ``fall_rounds`` silent rounds
  in a row and up again after ``rise_rounds`` answering ones. A region whose SIP or HTTPS edge
  answers 503 is reachable but not serving (the cloud says it is degraded).
* **The cloud** serves in a round when any region serves (N+1 datacenters: the cloud is down only
  when every region is). ``fall_rounds`` failed rounds in a row make an outage; carrier, address
  or default-route loss make one at once. While the appliance serves locally (outage,
  recovering) a single failed round counts, so phones are only handed back on clean evidence.
* **Rise and hold-down**: ``rise_rounds`` good rounds in a row, answered over at least
  ``rise_rounds - 1`` intervals, end an outage (state 'recovering'; in an outage the rounds
  re-phase on the first good answer so the rise completes as early as it can); the cloud
  must then stay good for the hold-down before phones go back, and the hand-back waits for
  every cloud round still out when the hold-down ends (a round sent into a fresh blackhole
  fails and ends the recovery instead).
* **Flap damping**: every fall after the cloud had been confirmed up adds 1 to a penalty that
  halves every ``flap_half_life_s``. The hold-down is ``hold_down_s`` times the penalty (at least
  once, at most ``max_hold_down_s``); while the penalty is above ``flap_suppress_above`` an
  outage does not end at all.
* **Cause**: the anchors tell an ISP outage from a cloud outage; 503s tell a degraded cloud
  from an unreachable one; DNS failing while the cloud answers by address is 'DNS only'.
* **Brownout**: the link carries probes but would not carry voice. Every datagram probe
  attempt of the targets whose group is reachable, over the last ``quality_window_s``, is
  pooled into one estimate of what a call would get (:mod:`appliance.wan.quality`: loss per
  packet, jitter, latency, E-model MOS). At ``brownout_loss_pct`` round-trip loss or a MOS
  under ``brownout_mos`` the link is 'degraded' with the brownout as its cause. With
  ``brownout_policy = "local-calls"`` a brownout lasting ``brownout_sustained_s`` also turns on
  :attr:`DecisionCore.local_calls` (new calls are served locally while the cloud is still
  reachable), reported through :meth:`DecisionCore.take_policy_changes`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import InvalidInput
from .events import WanState
from .machine import InputKind, MachineInput, WanMachine
from .observations import LinkStatus, ProbeOutcome, ProbeResult
from .quality import QualityEstimate, estimate
from .targets import GroupTrack, Role, TargetSpec, TargetTrack, group_key

__all__ = ["CallPolicyChange", "DecisionCore", "DecisionParams", "ProbeRequest", "Role",
           "TargetSpec", "Transition"]

QUALITY_KINDS = frozenset({"icmp", "sip/udp"})
"""Probe kinds that account for every attempt (see ProbeResult.attempts)."""
QUALITY_MIN_PACKETS = 40
"""Fewer attempts in the window than this make no estimate (and no brownout): about four
seconds of rounds; a couple of late answers among fewer would look like a brownout."""
BROWNOUT_CLEAR_MOS = 0.1
BROWNOUT_CLEAR_LOSS = 0.75
"""A brownout ends when the MOS is BROWNOUT_CLEAR_MOS above its threshold and the loss under
BROWNOUT_CLEAR_LOSS times its threshold: a link hovering at a threshold does not toggle."""

@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DecisionParams:
    interval_s: float = 0.5
    round_timeout_s: float = 1.0
    fall_rounds: int = 3
    rise_rounds: int = 2
    hold_down_s: float = 10.0
    max_hold_down_s: float = 300.0
    flap_half_life_s: float = 60.0
    flap_suppress_above: float = 3.0
    window: int = 8
    window_quorum: int = 5
    degraded_clear_s: float = 60.0
    quality_window_s: float = 8.0
    jitter_buffer_max_ms: float = 150.0
    brownout_mos: float = 3.6
    brownout_loss_pct: float = 12.0
    brownout_policy: str = "report"
    brownout_sustained_s: float = 30.0

    @classmethod
    def from_config(cls, wan: Any) -> DecisionParams:
        return cls(**{f.name: getattr(wan, f.name) for f in dataclasses.fields(cls)})

    @property
    def detection_bound_s(self) -> float:
        """Longest time from the start of a silent blackhole to the outage verdict, when the
        cloud targets are probed every round: up to one interval until the first round that
        fails, fall_rounds - 1 more intervals, and that last round's timeout."""
        return self.fall_rounds * self.interval_s + self.round_timeout_s

    def hold_down_for(self, penalty: float) -> float:
        return min(self.max_hold_down_s, self.hold_down_s * max(1.0, penalty))

    def max_falls_within(self, window_s: float) -> int:
        """Most outages (falls) flap damping lets happen within ``window_s`` seconds: every
        fall but the first needs a rise before it, a rise needs the penalty at or below the
        suppression threshold, and the penalty decays by at most 2**(window/half-life) within
        the window."""
        decay = 2.0 ** (window_s / self.flap_half_life_s)
        return math.floor(self.flap_suppress_above * decay) + 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRequest:
    round_id: int
    target: str
    deadline: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    previous: WanState
    state: WanState
    cause: str
    at: float
    evidence: Mapping[str, Any]
    actor: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallPolicyChange:
    """New calls are to be served locally (a sustained brownout under the 'local-calls'
    policy), or no longer."""

    local_calls: bool
    cause: str
    at: float


@dataclasses.dataclass(slots=True)
class _Round:
    id: int
    started_at: float
    deadline: float
    expected: frozenset[str]
    has_cloud: bool
    results: dict[str, ProbeResult] = dataclasses.field(default_factory=dict)
    cloud_serving: tuple[str, ...] | None = None
    """Settled cloud verdict: the regions that served (empty: the round failed); None while
    not settled. Settled at the first serving answer, or when the round is evaluated."""

    @property
    def complete(self) -> bool:
        return len(self.results) >= len(self.expected)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _RoundSummary:
    id: int
    anchors: bool | None
    dns: bool | None
    serving_regions: tuple[str, ...]
    unavailable_regions: tuple[str, ...]
    results: Mapping[str, str]


class DecisionCore:
    def __init__(self, params: DecisionParams, targets: Sequence[TargetSpec], *, now: float,
                 interface: str = "", initial: WanState = WanState.STARTING,
                 cause: str = "", penalty: float = 0.0) -> None:
        if not targets:
            raise ValueError("the decision core needs at least one target")
        if initial not in (WanState.STARTING, WanState.OUTAGE, WanState.FORCED):
            raise ValueError(f"cannot resume in state {initial}")
        self.params = params
        self.interface = interface
        self.machine = WanMachine(initial)
        self.since = now
        self.cause = cause or "waiting for the first probe rounds"
        self.problems: list[str] = []
        self.verdict = "no verdict yet"
        self._targets = {spec.name: TargetTrack(spec, params) for spec in targets}
        self._groups: dict[str, GroupTrack] = {}
        for spec in targets:
            self._groups.setdefault(group_key(spec), GroupTrack(spec.group, spec.role, params))
        self._link: LinkStatus | None = None
        self._rounds: collections.OrderedDict[int, _Round] = collections.OrderedDict()
        self._cloud_rounds: collections.deque[_Round] = collections.deque()
        self._round_counter = 0
        self._next_round_at = now
        self._failed_in_row = 0
        self._good_in_row = 0
        self._clean_since: float | None = None
        """Since when every confirmed round has been free of problems (None: it is not)."""
        self._degraded_from_online = False
        """The link went from online to degraded: it must stay clean for degraded_clear_s
        before it is online again. (Degraded right after a hand-back or at start only means
        the windows still hold the outage's losses; that clears as soon as they refill.)"""
        self._good_since = 0.0
        self._up_evidence = False
        self._penalty = penalty
        self._penalty_at = now
        self._hold_down_until: float | None = None
        self._hand_back_waiting = False
        """The hold-down has run out; the hand-back waits for the cloud rounds still out."""
        self._hold_down_s: float | None = None
        self._history: collections.deque[_RoundSummary] = collections.deque(
            maxlen=max(params.fall_rounds, params.rise_rounds) + 1)
        self._requests: list[ProbeRequest] = []
        self._transitions: list[Transition] = []
        self.rounds_evaluated = 0
        self.quality: QualityEstimate | None = None
        """What voice would get over the WAN now (None: too few datagram probes yet)."""
        self.brownout_since: float | None = None
        self.local_calls = False
        """A sustained brownout under the 'local-calls' policy: serve new calls locally."""
        self._policy_changes: list[CallPolicyChange] = []

    # -- read side ------------------------------------------------------------------------------

    @property
    def state(self) -> WanState:
        return self.machine.state

    @property
    def link(self) -> LinkStatus | None:
        return self._link

    def penalty(self, now: float) -> float:
        elapsed = max(0.0, now - self._penalty_at)
        return self._penalty * 2.0 ** (-elapsed / self.params.flap_half_life_s)

    @property
    def hold_down_until(self) -> float | None:
        return self._hold_down_until if self.state is WanState.RECOVERING else None

    def next_deadline(self) -> float:
        deadline = self._next_round_at
        if self._rounds:
            deadline = min(deadline, next(iter(self._rounds.values())).deadline)
        if self.hold_down_until is not None and not self._hand_back_waiting:
            deadline = min(deadline, self.hold_down_until)
        return deadline

    def take_requests(self) -> list[ProbeRequest]:
        requests, self._requests = self._requests, []
        return requests

    def take_transitions(self) -> list[Transition]:
        transitions, self._transitions = self._transitions, []
        return transitions

    def take_policy_changes(self) -> list[CallPolicyChange]:
        changes, self._policy_changes = self._policy_changes, []
        return changes

    def report(self, now: float) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "cause": self.cause,
            "verdict": self.verdict,
            "problems": list(self.problems),
            "link": self._link.to_json() if self._link else None,
            "penalty": round(self.penalty(now), 3),
            "suppressed": self.penalty(now) > self.params.flap_suppress_above,
            "hold_down_s": self.params.hold_down_for(self.penalty(now)),
            "hold_down_left_s": (None if self.hold_down_until is None
                                 else max(0.0, self.hold_down_until - now)),
            "rounds_evaluated": self.rounds_evaluated,
            "quality": None if self.quality is None else self.quality.to_json(),
            "brownout": self.brownout_since is not None,
            "brownout_for_s": (None if self.brownout_since is None
                               else max(0.0, now - self.brownout_since)),
            "brownout_policy": self.params.brownout_policy,
            "local_calls": self.local_calls,
            "groups": [{"name": g.name, "role": str(g.role), "down": g.down,
                        "service_unavailable": g.service_unavailable}
                       for g in self._groups.values()],
            "targets": [track.report(now) for track in self._targets.values()],
        }

    # -- inputs ---------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if now >= self._next_round_at:
            self._start_round(now)
            self._next_round_at += self.params.interval_s
            if self._next_round_at <= now:  # the shell fell behind (a stalled loop): no burst
                self._next_round_at = now + self.params.interval_s
        self._evaluate_ready(now)
        self._process_cloud_verdicts(now)
        self._hand_back_if_due(now)

    def probe_done(self, round_id: int, target: str, result: ProbeResult, now: float) -> None:
        pending = self._rounds.get(round_id)
        if pending is not None and target in pending.expected and target not in pending.results:
            pending.results[target] = result
            if pending.cloud_serving is None and self._targets[target].spec.role is Role.CLOUD:
                serving = self._serving_regions(pending.results)
                if serving:
                    # Good news settles a round at once; rounds are still counted in order.
                    pending.cloud_serving = serving
        self._evaluate_ready(now)
        self._process_cloud_verdicts(now)
        self._hand_back_if_due(now)

    def link_changed(self, status: LinkStatus, now: float) -> None:
        previous = self._link
        self._link = status
        problem = status.problem
        was_bad = previous is not None and previous.problem is not None
        if problem is not None and not was_bad:
            self._good_in_row = 0
            self._note_fall(now)
            self.verdict = "link down"
            self._feed(MachineInput(kind=InputKind.LINK_LOST, cause=problem,
                                    evidence=self._evidence([problem], "link down")), now)
        elif problem is None and was_bad:
            # Carrier or route is back: probe at once rather than at the next tick. Netlink
            # never declares the WAN healthy; only answered probes do. Cloud rounds still out
            # were sent over the dead link and say nothing about the returned one: they no
            # longer hold back the rounds sent from now on.
            self._next_round_at = min(self._next_round_at, now)
            self._cloud_rounds = collections.deque(
                pending for pending in self._cloud_rounds if pending.cloud_serving is not None)

    def force(self, now: float, cause: str, actor: str | None = None) -> Transition:
        if self.state is WanState.FORCED:
            raise InvalidInput("failover is already forced")
        self._feed(MachineInput(kind=InputKind.FORCE, cause=cause,
                                evidence=self._evidence([])), now, actor=actor)
        return self._transitions[-1]

    def release(self, now: float, cause: str, actor: str | None = None) -> Transition:
        if self.state is not WanState.FORCED:
            raise InvalidInput("failover is not forced")
        # Back to automatic decisions: straight to the hold-down only when fresh probes say the
        # cloud is up and flap damping does not hold the outage.
        cloud_up = self.cloud_confirmed_up(now) and (
            self.penalty(now) <= self.params.flap_suppress_above)
        self._feed(MachineInput(kind=InputKind.RELEASE, cloud_up=cloud_up,
                                cause=cause + ("; cloud reachable, holding down" if cloud_up
                                               else "; cloud not confirmed reachable yet"),
                                evidence=self._evidence([])), now, actor=actor)
        return self._transitions[-1]

    def _hand_back_if_due(self, now: float) -> None:
        """End the hold-down: hand the phones back, but never while a cloud round is still
        out. A round sent just before the hold-down ran out may be going into a fresh
        blackhole; its verdict (a failure ends the recovery) comes first."""
        if self.hold_down_until is None or now < self.hold_down_until:
            return
        if any(pending.cloud_serving is None for pending in self._cloud_rounds):
            self._hand_back_waiting = True  # woken by the round's answer or its deadline
            return
        self._hand_back_waiting = False
        problems = self._partial_problems()
        self._feed(MachineInput(
            kind=InputKind.HOLD_DOWN_DONE, partial=bool(problems),
            cause=self._summarise(problems) if problems else
            f"cloud stayed reachable for the {round(self._hold_down_s, 1):g} s hold-down",
            evidence=self._evidence(problems)), now)

    # -- rounds ---------------------------------------------------------------------------------

    def _start_round(self, now: float) -> None:
        round_id = self._round_counter
        self._round_counter += 1
        due = frozenset(name for name, track in self._targets.items()
                        if (round_id + track.spec.phase) % track.spec.every_rounds == 0)
        if not due:
            return
        deadline = now + self.params.round_timeout_s
        has_cloud = any(self._targets[name].spec.role is Role.CLOUD for name in due)
        started = _Round(id=round_id, started_at=now, deadline=deadline, expected=due,
                         has_cloud=has_cloud)
        self._rounds[round_id] = started
        if has_cloud:
            self._cloud_rounds.append(started)
        self._requests.extend(ProbeRequest(round_id=round_id, target=name, deadline=deadline)
                              for name in sorted(due))

    def _evaluate_ready(self, now: float) -> None:
        while self._rounds:
            head = next(iter(self._rounds.values()))
            if not head.complete and now < head.deadline:
                return
            del self._rounds[head.id]
            self._evaluate(head, now)

    def _evaluate(self, done: _Round, now: float) -> None:
        self.rounds_evaluated += 1
        results = {name: done.results.get(name) or ProbeResult(outcome=ProbeOutcome.TIMEOUT)
            for name in sorted(done.expected)}
        for name, result in results.items():
            self._targets[name].add(result, now)
        summary = self._summarise_round(done.id, results)
        self._history.append(summary)
        self._assess_quality(now)
        if done.has_cloud and done.cloud_serving is None:
            done.cloud_serving = summary.serving_regions

    def _process_cloud_verdicts(self, now: float) -> None:
        """Feed settled cloud verdicts to the hysteresis, strictly in the order the rounds
        started."""
        while self._cloud_rounds and self._cloud_rounds[0].cloud_serving is not None:
            settled = self._cloud_rounds.popleft()
            if settled.cloud_serving:
                self._cloud_good(settled.cloud_serving, now)
            else:
                self._cloud_failed(now)

    def _serving_regions(self, results: Mapping[str, ProbeResult]) -> tuple[str, ...]:
        """Regions with an answer in ``results`` and no 503 from their SIP/HTTPS edges (in
        these results, or else as last seen)."""
        answered: set[str] = set()
        unavailable: dict[str, bool] = {}
        for name, result in results.items():
            spec = self._targets[name].spec
            if spec.role is not Role.CLOUD or not result.outcome.answered:
                continue
            answered.add(spec.group)
            if spec.app_level:
                unavailable[spec.group] = unavailable.get(spec.group, False) or (
                    result.outcome is ProbeOutcome.DEGRADED)
        return tuple(sorted(
            region for region in answered
            if not unavailable.get(region,
                                   self._groups[f"{Role.CLOUD}:{region}"].service_unavailable)))

    def _summarise_round(self, round_id: int,
                         results: Mapping[str, ProbeResult]) -> _RoundSummary:
        answered_groups: dict[str, bool] = {}
        app_answers: dict[str, list[ProbeOutcome]] = {}
        for name, result in results.items():
            spec = self._targets[name].spec
            key = group_key(spec)
            answered_groups[key] = answered_groups.get(key, False) or (
                result.outcome is ProbeOutcome.OK if spec.role is Role.DNS
                else result.outcome.answered)
            if spec.app_level and result.outcome.answered:
                app_answers.setdefault(key, []).append(result.outcome)
        for key, outcomes in app_answers.items():
            # one edge of a region saying 503 is the region saying it cannot serve
            self._groups[key].service_unavailable = ProbeOutcome.DEGRADED in outcomes
        for group_name, answered in answered_groups.items():
            group = self._groups[group_name]
            was_down = group.down
            group.add_round(answered)
            if was_down and not group.down:
                self._forget_packets(lambda spec, key=group_name: group_key(spec) == key)

        def role_answered(role: Role) -> bool | None:
            seen = [answered for name, answered in answered_groups.items()
                    if self._groups[name].role is role]
            return any(seen) if seen else None

        regions = [self._groups[key] for key, answered in answered_groups.items()
                   if answered and self._groups[key].role is Role.CLOUD]
        serving = tuple(sorted(g.name for g in regions if not g.service_unavailable))
        unavailable = tuple(sorted(g.name for g in regions if g.service_unavailable))
        return _RoundSummary(
            id=round_id,
            anchors=role_answered(Role.ANCHOR), dns=role_answered(Role.DNS),
            serving_regions=serving, unavailable_regions=unavailable,
            results={name: result.describe() for name, result in results.items()})

    def _assess_quality(self, now: float) -> None:
        """Pool the datagram attempts of every reachable target into the link's voice
        estimate; start or end a brownout; apply the brownout policy."""
        per_target = [track.packets.attempts(now) for track in self._targets.values()
                      if track.spec.kind in QUALITY_KINDS
                      # an unreachable region or anchor is an outage of its own
                      and not self._groups[group_key(track.spec)].down]
        params = self.params
        found = estimate(per_target, jitter_buffer_max_ms=params.jitter_buffer_max_ms) \
            if sum(map(len, per_target)) >= QUALITY_MIN_PACKETS else None
        self.quality = found
        cloud_up = self.state not in (WanState.OUTAGE, WanState.FORCED)
        if found is None or not cloud_up:
            self.brownout_since = None
        elif self.brownout_since is None:
            if found.mos < params.brownout_mos or \
                    found.round_trip_loss_pct >= params.brownout_loss_pct:
                self.brownout_since = now
        elif found.mos >= params.brownout_mos + BROWNOUT_CLEAR_MOS and \
                found.round_trip_loss_pct < params.brownout_loss_pct * BROWNOUT_CLEAR_LOSS:
            self.brownout_since = None
        wanted = (params.brownout_policy == "local-calls" and self.brownout_since is not None
                  and now - self.brownout_since >= params.brownout_sustained_s
                  and self.state in (WanState.ONLINE, WanState.DEGRADED))
        if wanted != self.local_calls:
            self.local_calls = wanted
            cause = (f"brownout for {now - self.brownout_since:.0f} s "
                     f"({found.describe()}): new calls are served locally"
                     if wanted else "new calls go to the cloud again: "
                     + ("the brownout is over" if self.brownout_since is None or not cloud_up
                        else f"the WAN is {self.state}"))
            self._policy_changes.append(CallPolicyChange(local_calls=wanted, cause=cause,
                                                         at=now))

    def _forget_packets(self, which) -> None:
        """Probe packets lost while a group (or the whole WAN) was down tell of that outage,
        not of the link voice would use now: forget them when it is back."""
        for track in self._targets.values():
            if which(track.spec):
                track.packets.clear()

    def _cloud_good(self, serving_regions: tuple[str, ...], now: float) -> None:
        self._failed_in_row = 0
        if self._link is not None and self._link.problem is not None:
            self._good_in_row = 0
            return
        self._good_in_row += 1
        if self._good_in_row == 1:
            self._good_since = now
            if self.state in (WanState.OUTAGE, WanState.FORCED):
                # Re-phase the rounds on the first good answer after an outage: the next
                # round's answer then completes the rise span as early as possible. Never
                # while the cloud is taken to be there (or not known yet): a good answer
                # that was in flight (or settled behind a slower round) when a blackhole
                # began would push every later round back and the outage past the
                # detection bound.
                self._next_round_at = now + self.params.interval_s
        if not self._rise_confirmed(now):
            self._feed(MachineInput(kind=InputKind.GOOD_UNCONFIRMED, cause=self.cause), now)
            return
        self._up_evidence = True
        problems = self._partial_problems()
        suppressed = self.penalty(now) > self.params.flap_suppress_above
        self.problems = problems
        if problems:
            self._clean_since = None
        elif self._clean_since is None:
            self._clean_since = now
        clean_for = 0.0 if self._clean_since is None else now - self._clean_since
        # Hysteresis for 'degraded': a lossy link whose targets hover at the health quorum
        # would otherwise chatter between online and degraded every few rounds.
        clearing = (not problems and self.state is WanState.DEGRADED
                    and self._degraded_from_online
                    and clean_for < self.params.degraded_clear_s)
        if problems:
            verdict = ("dns only" if problems[0].startswith("DNS only") else
                       "brownout" if problems[0].startswith("brownout") else "degraded")
            cause = self._summarise(problems)
        elif clearing:
            verdict = "degraded"
            cause = (f"no problems for {clean_for:.0f} s; online again after "
                     f"{round(self.params.degraded_clear_s, 1):g} s without any")
        else:
            verdict = "healthy"
            regions = sorted(set(serving_regions) | {
                g.name for g in self._groups.values()
                if g.role is Role.CLOUD and not g.down and not g.service_unavailable})
            cause = "cloud reachable: " + ", ".join(f"region {r}" for r in regions) + " answer"
        if self.state is WanState.OUTAGE:
            if suppressed:
                cause = (f"cloud answers again, but the link is flapping (penalty "
                         f"{self.penalty(now):.1f} > {self.params.flap_suppress_above:g}): "
                         "staying in failover until it is stable")
            else:
                hold = self.params.hold_down_for(self.penalty(now))
                cause = f"cloud reachable again ({cause}); holding down {round(hold, 1):g} s"
        self.verdict = verdict
        evidence = self._evidence(problems, verdict)
        evidence["good_for_s"] = now - self._good_since
        self._feed(MachineInput(kind=InputKind.GOOD, cause=cause,
                                partial=bool(problems) or clearing,
                                suppressed=suppressed, evidence=evidence), now)

    def _cloud_failed(self, now: float) -> None:
        self._good_in_row = 0
        self._clean_since = None
        self._failed_in_row += 1
        serving_locally = self.state in (WanState.OUTAGE, WanState.RECOVERING, WanState.FORCED)
        verdict, cause = self._outage_cause()
        if self._failed_in_row == self.params.fall_rounds:
            self._note_fall(now)
            kind = InputKind.FALL
        else:
            if serving_locally:
                # While phones are served locally, one failed round already ends a recovery.
                self._note_fall(now)
            kind = InputKind.FAILED_ROUND
        if self._feed(MachineInput(kind=kind, cause=cause,
                                   evidence=self._evidence([cause], verdict)), now):
            self.verdict = verdict

    # -- verdicts -------------------------------------------------------------------------------

    def _rise_confirmed(self, now: float) -> bool:
        """rise_rounds good rounds in a row, whose answers span at least rise_rounds - 1
        intervals: rounds overlap, and two answered in the same instant (retries of two rounds
        sent into a blackhole) are one moment of evidence, not two."""
        span = (self.params.rise_rounds - 1) * self.params.interval_s
        return (self._good_in_row >= self.params.rise_rounds
                and now - self._good_since >= span - 1e-9)

    def cloud_confirmed_up(self, now: float) -> bool:
        """Fresh probes say the cloud is there (what releasing a forced failover needs)."""
        link_ok = self._link is None or self._link.problem is None
        return link_ok and self._rise_confirmed(now)

    def _outage_cause(self) -> tuple[str, str]:
        """(verdict, cause) for the rounds that just failed."""
        recent = list(self._history)[-self.params.fall_rounds:]
        # Only the failed rounds tell why: after a recovery a single one ends it, and the
        # good rounds before it would make a blackhole look like a cloud-only outage.
        while len(recent) > 1 and recent[0].serving_regions:
            recent.pop(0)
        unavailable = sorted({r for s in recent for r in s.unavailable_regions})
        anchor_rounds = [s.anchors for s in recent if s.anchors is not None]
        dns_rounds = [s.dns for s in recent if s.dns is not None]
        dns_note = "; DNS failing too" if dns_rounds and not any(dns_rounds) else ""
        if unavailable and recent and not recent[-1].serving_regions:
            unreachable = sorted(g.name for g in self._groups.values()
                                 if g.role is Role.CLOUD and g.name not in unavailable)
            tail = f"; {', '.join(unreachable)} unreachable" if unreachable else ""
            return "cloud degraded", (f"cloud degraded: {', '.join(unavailable)} answer 503 "
                                      f"Service Unavailable{tail}")
        if not anchor_rounds:
            return "cloud down", ("cloud unreachable: no region answers (no internet anchors "
                                  "configured to tell an ISP outage from a cloud outage)"
                                  + dns_note)
        if not any(anchor_rounds):
            return "upstream down", ("upstream down: no cloud region and no internet anchor "
                                     "answers" + dns_note)
        return "cloud down", "cloud down: no cloud region answers, internet anchors do" + dns_note

    def _partial_problems(self) -> list[str]:
        problems: list[str] = []
        quality = self.quality
        if self.brownout_since is not None and quality is not None:
            why = (f"under {self.params.brownout_mos:g}" if quality.mos < self.params.brownout_mos
                   else f"{self.params.brownout_loss_pct:g} % or more lost")
            problems.append(f"brownout: {quality.describe()}; {why}")
        dns = [g for g in self._groups.values() if g.role is Role.DNS and g.down]
        cloud_and_anchors: list[str] = []
        for group in self._groups.values():
            if group.role is Role.DNS:
                continue
            if group.down:
                cloud_and_anchors.append(f"{group.label} unreachable")
            elif group.role is Role.CLOUD and group.service_unavailable:
                cloud_and_anchors.append(f"{group.label} answers 503: cloud degraded")
        unhealthy = [
            f"{track.spec.name} failing ({track.lost_in_window()} of its last "
            f"{len(track.window)} probes lost; last: "
            f"{track.last.describe() if track.last else '-'})"
            for track in self._targets.values()
            if not track.healthy and not self._groups[group_key(track.spec)].down]
        if dns:
            resolvers = "; ".join(f"{t.spec.name}: {t.last.describe()}"
                                  for t in self._targets.values()
                                  if t.spec.role is Role.DNS and t.last is not None)
            answering = any(t.spec.role is Role.DNS and t.last is not None
                            and t.last.outcome is ProbeOutcome.OK
                            for t in self._targets.values())
            if answering:  # down by hysteresis only: it has not answered rise_rounds yet
                problems.append(f"DNS answering again, not yet steadily ({resolvers})")
            elif self.state in (WanState.OUTAGE, WanState.RECOVERING, WanState.FORCED):
                # the outage took DNS down too; the cloud is back first (DNS is probed less
                # often): not a DNS-only problem
                problems.append(f"DNS not back yet since the outage ({resolvers})")
            elif cloud_and_anchors:
                problems.append(f"DNS failing ({resolvers})")
            else:
                problems.append(f"DNS only: no resolver answers ({resolvers}); the cloud "
                                "answers by address")
        problems.extend(cloud_and_anchors)
        problems.extend(unhealthy)
        return problems

    @staticmethod
    def _summarise(problems: Sequence[str]) -> str:
        if len(problems) <= 2:
            return "; ".join(problems)
        return f"{problems[0]}; {problems[1]}; and {len(problems) - 2} more"

    def _evidence(self, problems: Iterable[str], verdict: str | None = None) -> dict[str, Any]:
        return {
            "verdict": verdict or self.verdict,
            "problems": list(problems),
            "link": self._link.to_json() if self._link else None,
            "rounds": [{"round": s.id, "results": dict(s.results)}
                       for s in list(self._history)[-self.params.fall_rounds:]],
            "failed_rounds_in_row": self._failed_in_row,
            "good_rounds_in_row": self._good_in_row,
        }

    # -- the machine ----------------------------------------------------------------------------

    def _note_fall(self, now: float) -> None:
        if self._up_evidence:
            self._penalty = self.penalty(now) + 1.0
            self._penalty_at = now
            self._up_evidence = False

    def _feed(self, given: MachineInput, now: float, actor: str | None = None) -> bool:
        """Apply one input; True when it changed the state."""
        change = self.machine.feed(given)
        if change is None:
            if self.state is WanState.DEGRADED and given.kind is InputKind.GOOD:
                self.cause = given.cause  # still degraded; say why as it is now
            return False
        evidence = dict(given.evidence)
        evidence["penalty"] = self.penalty(now)
        if change.state is WanState.RECOVERING or change.previous is WanState.STARTING:
            # The outage's losses, or the answers timed while jbcd was busy starting, say
            # nothing about the voice path from now on.
            self._forget_packets(lambda spec: True)
            self._hold_down_s = self.params.hold_down_for(self.penalty(now))
            self._hold_down_until = now + self._hold_down_s
            self._hand_back_waiting = False
            evidence["hold_down_s"] = self._hold_down_s
        if change.state is WanState.DEGRADED:
            self._degraded_from_online = change.previous is WanState.ONLINE
        self.since = now
        self.cause = given.cause
        self._transitions.append(Transition(previous=change.previous, state=change.state,
                                            cause=given.cause, at=now, evidence=evidence,
                                            actor=actor))
        return True
