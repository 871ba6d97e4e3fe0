"""The WAN decision core with fake time: verdicts, causes, hysteresis, hold-down, damping."""

from __future__ import annotations

import dataclasses
import random

import pytest

from appliance.wan.decision import DecisionCore, DecisionParams, Role, TargetSpec
from appliance.wan.events import WanState
from appliance.wan.machine import InvalidInput
from tests.wan.wansim import TARGETS, FakeNetwork, FakeWan, link

S = WanState
PARAMS = DecisionParams()


def online() -> FakeWan:
    wan = FakeWan()
    assert wan.run_until_state(S.ONLINE, 2.0) is not None
    return wan


def test_first_verdict_comes_after_rise_rounds_good_rounds():
    wan = FakeWan()
    at = wan.run_until_state(S.ONLINE, 5.0)
    # the first round is answered at 0.02, the next ones on their schedule (rounds re-phase
    # only in an outage), each 20 ms after it starts
    assert at == pytest.approx(0.02 + (PARAMS.rise_rounds - 1) * PARAMS.interval_s)
    assert wan.states() == [S.ONLINE]
    assert "region east" in wan.transitions[0].cause and "region west" in wan.transitions[0].cause


def test_no_answer_at_start_is_an_outage_after_fall_rounds():
    wan = FakeWan(network=FakeNetwork(blackhole=True))
    at = wan.run_until_state(S.OUTAGE, 10.0)
    assert at == pytest.approx((PARAMS.fall_rounds - 1) * PARAMS.interval_s
                               + PARAMS.round_timeout_s)
    assert wan.transitions[-1].cause.startswith("upstream down")


@pytest.mark.parametrize("phase", [0.0, 0.1, 0.25, 0.4, 0.49])
def test_a_silent_blackhole_is_an_outage_within_the_detection_bound(phase):
    wan = online()
    wan.advance(10.0 + phase - wan.now)
    start = wan.now
    wan.network.blackhole = True
    at = wan.run_until_state(S.OUTAGE, 10.0)
    assert at is not None
    assert at - start <= PARAMS.detection_bound_s + 1e-9
    assert at - start >= (PARAMS.fall_rounds - 1) * PARAMS.interval_s + PARAMS.round_timeout_s \
        - PARAMS.interval_s
    transition = wan.transitions[-1]
    assert transition.previous is S.ONLINE
    assert transition.cause == "upstream down: no cloud region and no internet anchor answers" \
        "; DNS failing too" or transition.cause.startswith("upstream down")
    rounds = transition.evidence["rounds"]
    assert len(rounds) == PARAMS.fall_rounds
    assert all("timeout" in outcome for r in rounds for outcome in r["results"].values())


def test_cloud_down_with_anchors_answering_is_blamed_on_the_cloud():
    wan = online()
    wan.network.down |= {"east", "west"}
    assert wan.run_until_state(S.OUTAGE, 5.0) is not None
    assert wan.transitions[-1].cause == "cloud down: no cloud region answers, internet anchors do"
    assert wan.transitions[-1].evidence["verdict"] == "cloud down"


def test_without_anchors_the_cause_says_it_cannot_tell_isp_from_cloud():
    targets = [t for t in TARGETS if t.role is not Role.ANCHOR]
    wan = FakeWan(targets=targets)
    wan.run_until_state(S.ONLINE, 2.0)
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    assert "no internet anchors configured" in wan.transitions[-1].cause


def test_one_region_down_is_degraded_not_outage():
    wan = online()
    wan.network.down.add("west")
    assert wan.run_until_state(S.DEGRADED, 5.0) is not None
    wan.advance(30.0)
    assert wan.states() == [S.ONLINE, S.DEGRADED]
    assert "cloud region west unreachable" in wan.core.cause
    wan.network.down.clear()
    healed = wan.now
    # the region's window refills, then degraded clears only after degraded_clear_s clean
    at = wan.run_until_state(S.ONLINE, PARAMS.degraded_clear_s + 20.0)
    assert at is not None and at - healed >= PARAMS.degraded_clear_s - PARAMS.interval_s
    assert wan.states() == [S.ONLINE, S.DEGRADED, S.ONLINE]


def test_one_anchor_down_is_degraded_not_outage():
    wan = online()
    wan.network.down.add("anchor2")
    assert wan.run_until_state(S.DEGRADED, 5.0) is not None
    wan.advance(30.0)
    assert wan.state is S.DEGRADED and "internet anchor anchor2 unreachable" in wan.core.cause


def test_every_region_answering_503_is_a_degraded_cloud_outage():
    wan = online()
    wan.network.unavailable |= {"east", "west"}
    assert wan.run_until_state(S.OUTAGE, 10.0) is not None
    assert wan.transitions[-1].cause.startswith("cloud degraded: east, west answer 503")
    assert wan.core.verdict == "cloud degraded"


def test_one_region_answering_503_is_degraded():
    wan = online()
    wan.network.unavailable.add("east")
    assert wan.run_until_state(S.DEGRADED, 5.0) is not None
    assert "cloud region east answers 503" in wan.core.cause
    wan.advance(20.0)
    assert wan.state is S.DEGRADED


def test_dns_failing_while_the_cloud_answers_by_address_is_dns_only():
    wan = online()
    wan.network.dns_broken = True
    assert wan.run_until_state(S.DEGRADED, 15.0) is not None
    assert wan.core.cause.startswith("DNS only")
    assert wan.core.verdict == "dns only"
    wan.advance(30.0)
    assert wan.state is S.DEGRADED
    wan.network.dns_broken = False
    assert wan.run_until_state(S.ONLINE, PARAMS.degraded_clear_s + 15.0) is not None


def test_recovery_does_not_call_a_resolver_that_answers_again_silent():
    # The resolver is probed every 4th round: when the cloud rises it has not answered
    # rise_rounds times yet (or not been asked since the outage). The recovery's cause says
    # so, not "DNS only: no resolver answers" (next to its own "ok", in the bench).
    wan = online()
    wan.network.blackhole = True
    assert wan.run_until_state(S.OUTAGE, 5.0) is not None
    wan.advance(10.0)
    wan.network.blackhole = False
    assert wan.run_until_state(S.RECOVERING, 10.0) is not None
    cause = wan.transitions[-1].cause
    assert "DNS only" not in cause, cause
    assert "DNS not back yet since the outage (dns:10.0.0.53: timeout)" in cause, cause
    assert wan.core.verdict != "dns only"
    wan.advance(2.0)  # the resolver answered a round since, not rise_rounds yet
    assert any(p.startswith("DNS answering again, not yet steadily (dns:10.0.0.53: ok")
               for p in wan.core.problems), wan.core.problems
    assert wan.run_until_state(S.ONLINE, 30.0) is not None


def test_carrier_loss_is_an_outage_at_once_and_its_return_probes_at_once():
    wan = online()
    wan.advance(3.21)
    wan.set_link(link(carrier=False))
    assert wan.state is S.OUTAGE and wan.transitions[-1].at == wan.now
    assert wan.transitions[-1].cause == "carrier lost on wan0"
    wan.advance(5.0)
    before = wan.probes_sent
    wan.set_link(link())
    wan.advance(0.0)
    assert wan.probes_sent > before, "a probe round starts as soon as the link is back"
    assert wan.state is S.OUTAGE, "netlink alone never declares the WAN healthy"


@pytest.mark.parametrize(("status", "cause"), [
    (link(route=False), "default route via wan0 lost"),
    (link(addresses=()), "wan0 has no IP address"),
    (link(present=False), "wan0 is gone (no such interface)"),
])
def test_route_address_or_device_loss_is_an_outage_at_once(status, cause):
    wan = online()
    wan.set_link(status)
    assert wan.state is S.OUTAGE and wan.core.cause == cause


def test_recovery_goes_through_recovering_and_the_hold_down():
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.advance(4.0)
    wan.network.blackhole = False
    back = wan.now
    recovering = wan.run_until_state(S.RECOVERING, 5.0)
    # the next retry is answered (<= 0.25 s), then one more round an interval later
    assert recovering is not None and recovering - back <= 0.25 + PARAMS.interval_s + 0.05
    assert wan.transitions[-1].evidence["hold_down_s"] == pytest.approx(PARAMS.hold_down_s)
    done = wan.run_until_state(S.ONLINE, 60.0)
    assert done == pytest.approx(recovering + PARAMS.hold_down_s)
    assert wan.states()[-3:] == [S.OUTAGE, S.RECOVERING, S.ONLINE]


def test_one_failed_round_while_recovering_goes_back_to_outage():
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.network.blackhole = False
    wan.run_until_state(S.RECOVERING, 5.0)
    wan.advance(3.0)
    wan.network.blackhole = True
    assert wan.run_until_state(S.OUTAGE, PARAMS.interval_s + PARAMS.round_timeout_s + 0.01)


def test_flapping_grows_the_hold_down_then_suppresses_recovery():
    wan = online()
    hold_downs = []
    for _ in range(4):
        wan.network.blackhole = True
        assert wan.run_until_state(S.OUTAGE, 5.0)
        wan.network.blackhole = False
        if wan.run_until_state(S.RECOVERING, 3.0) is None:
            break
        hold_downs.append(wan.transitions[-1].evidence["hold_down_s"])
        wan.advance(2.0)
    assert hold_downs == sorted(hold_downs) and hold_downs[-1] > hold_downs[0]
    assert wan.state is S.OUTAGE and wan.core.penalty(wan.now) > PARAMS.flap_suppress_above
    assert "flapping" in wan.core.cause or "flapping" in wan.core.report(wan.now)["problems"] \
        or wan.core.report(wan.now)["suppressed"]
    # Stable from now on: the penalty decays below the threshold and the outage ends.
    at = wan.run_until_state(S.RECOVERING, 120.0)
    assert at is not None and wan.core.penalty(at) <= PARAMS.flap_suppress_above


def test_a_failover_can_be_forced_and_released():
    wan = online()
    wan.force("failover forced by alice")
    assert wan.state is S.FORCED
    with pytest.raises(InvalidInput):
        wan.force()
    wan.network.blackhole = True
    wan.advance(5.0)
    assert wan.state is S.FORCED, "probe results do not end a forced failover"
    wan.release()
    assert wan.state is S.OUTAGE, "released while the cloud is down: outage"
    wan.network.blackhole = False
    assert wan.run_until_state(S.RECOVERING, 3.0)


def test_release_with_the_cloud_up_starts_the_hold_down():
    wan = online()
    wan.force()
    wan.advance(3.0)
    transition = wan.release()
    assert transition.state is S.RECOVERING and transition.evidence["hold_down_s"] > 0
    with pytest.raises(InvalidInput):
        wan.release()


def test_a_resumed_outage_needs_fresh_good_rounds_and_a_hold_down():
    wan = FakeWan(initial=S.OUTAGE)
    assert wan.state is S.OUTAGE
    assert wan.run_until_state(S.RECOVERING, 2.0) is not None
    assert wan.run_until_state(S.ONLINE, PARAMS.hold_down_s + 1) is not None


def test_twenty_percent_loss_each_way_for_ten_minutes_never_fails_over():
    # 20 % of packets lost in each direction: an exchange fails 1 - 0.8**2 = 36 % of the time
    network = FakeNetwork(loss=0.36, rng=random.Random(20))
    wan = FakeWan(network=network)
    wan.run_until(600.0)
    assert S.OUTAGE not in wan.states()


def lossy_for_ten_minutes(params: DecisionParams) -> FakeWan:
    # 36 % of exchanges lost: the stream probes hover at the 5-of-8 health quorum
    wan = FakeWan(params, network=FakeNetwork(rng=random.Random(7)))
    wan.run_until_state(S.ONLINE, 2.0)
    wan.network.loss = 0.36
    wan.advance(600.0)
    return wan


NO_BROWNOUT = dataclasses.replace(PARAMS, brownout_mos=1.0, brownout_loss_pct=100.0)
"""Brownouts off: what the health windows alone make of a lossy link."""


def test_a_lossy_link_is_degraded_steadily_not_chattering():
    without_hysteresis = lossy_for_ten_minutes(dataclasses.replace(NO_BROWNOUT,
                                                                   degraded_clear_s=0.0))
    wan = lossy_for_ten_minutes(NO_BROWNOUT)
    assert S.OUTAGE not in wan.states()
    assert len(wan.transitions) * 3 <= len(without_hysteresis.transitions), \
        (len(wan.transitions), len(without_hysteresis.transitions))
    for entered, left in zip(wan.transitions, wan.transitions[1:], strict=False):
        if entered.state is S.DEGRADED and left.state is S.ONLINE:
            assert left.at - entered.at >= PARAMS.degraded_clear_s
    # a clean link is online again once it has stayed clean for degraded_clear_s
    wan.network.loss = 0.0
    healed = wan.now
    at = wan.run_until_state(S.ONLINE, PARAMS.degraded_clear_s + 10.0)
    assert at is not None and at - healed >= PARAMS.degraded_clear_s - PARAMS.interval_s


def test_degraded_at_hand_back_clears_as_soon_as_the_problem_does():
    # only a link that slid from online to degraded has to prove itself for degraded_clear_s
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.network.blackhole = False
    wan.network.down.add("anchor2")
    assert wan.run_until_state(S.DEGRADED, PARAMS.hold_down_s + 5.0) is not None
    assert wan.transitions[-1].previous is S.RECOVERING
    wan.network.down.clear()
    healed = wan.now
    at = wan.run_until_state(S.ONLINE, PARAMS.degraded_clear_s)
    assert at is not None and at - healed < 15.0


def test_per_target_figures_cover_the_last_minute():
    wan = online()
    wan.network.down.add("anchor2")
    wan.advance(70.0)
    report = {t["name"]: t for t in wan.core.report(wan.now)["targets"]}
    assert report["anchor2"]["loss_pct"] == 100.0 and report["anchor2"]["healthy"] is False
    assert report["east-icmp"]["loss_pct"] == 0.0
    assert report["east-icmp"]["rtt_ms"]["avg"] == pytest.approx(20.0)
    # one round per interval within the last minute
    assert abs(report["east-icmp"]["probes_last_minute"] - 60 / PARAMS.interval_s) <= 2


def test_the_core_needs_targets_and_a_resumable_state():
    with pytest.raises(ValueError):
        DecisionCore(PARAMS, [], now=0.0)
    with pytest.raises(ValueError):
        DecisionCore(PARAMS, [TargetSpec(name="x", role=Role.CLOUD, group="r")], now=0.0,
                     initial=S.ONLINE)


@pytest.mark.parametrize("before_end", [0.05, 0.3, 0.52, 0.9])
def test_no_hand_back_while_a_probe_round_is_still_out(before_end):
    # Issue 14 item 9: a blackhole that starts shortly before the hold-down ends leaves probe
    # rounds out that have not timed out yet; the hold-down must wait for them, and their
    # failure ends the recovery instead of handing the phones back into a dead cloud.
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.network.blackhole = False
    recovering = wan.run_until_state(S.RECOVERING, 5.0)
    hold_down_end = recovering + PARAMS.hold_down_s
    wan.run_until(hold_down_end - before_end)
    wan.network.blackhole = True
    back_in_outage = wan.run_until_state(S.OUTAGE, PARAMS.interval_s + PARAMS.round_timeout_s
                                         + 0.01)
    assert back_in_outage is not None
    assert S.ONLINE not in wan.states()[-2:], wan.states()


def test_hand_back_waits_only_for_the_round_in_flight_when_the_cloud_answers():
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.network.blackhole = False
    recovering = wan.run_until_state(S.RECOVERING, 5.0)
    done = wan.run_until_state(S.ONLINE, PARAMS.hold_down_s + 2.0)
    assert done is not None
    # a round started before the end and answered within its RTT: at most that long late
    assert recovering + PARAMS.hold_down_s <= done <= recovering + PARAMS.hold_down_s + 0.03


def test_after_carrier_returns_rounds_sent_over_the_dead_link_do_not_delay_recovery():
    # Issue 14 item 9: recovery after a carrier loss must not wait for rounds sent while the
    # cable was out (their packets died with the link); the round sent at once when the
    # carrier returns starts the rise.
    wan = online()
    wan.set_link(link(carrier=False))
    wan.network.blackhole = True  # nothing crosses a link without carrier
    wan.advance(3.0 + 0.1)
    assert wan.state is S.OUTAGE
    wan.network.blackhole = False
    back = wan.now
    wan.set_link(link())
    recovering = wan.run_until_state(S.RECOVERING, 5.0)
    assert recovering is not None
    # the immediate round is answered after one RTT; one more round an interval later
    assert recovering - back <= (PARAMS.rise_rounds - 1) * PARAMS.interval_s + 2 * 0.02 + 1e-6


def test_a_blackhole_ending_a_recovery_is_blamed_on_the_upstream():
    wan = online()
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.network.blackhole = False
    wan.run_until_state(S.RECOVERING, 5.0)
    wan.advance(2.0)
    wan.network.blackhole = True
    assert wan.run_until_state(S.OUTAGE, 3.0) is not None
    assert wan.transitions[-1].cause.startswith("upstream down"), wan.transitions[-1].cause
