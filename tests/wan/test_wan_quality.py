"""Voice quality from probe packets: the E-model figures, the per-packet estimate, and the
decision core's brownout on fake time."""

from __future__ import annotations

import dataclasses
import random

import pytest

from appliance.wan.decision import DecisionParams
from appliance.wan.events import WanState
from appliance.wan.quality import estimate, mos_of, one_way_loss, r_factor
from tests.wan.wansim import FakeNetwork, FakeWan

S = WanState
PARAMS = DecisionParams()


# -- the E-model -------------------------------------------------------------------------------

@pytest.mark.parametrize(("r", "mos"), [(93.2, 4.41), (90.0, 4.34), (70.0, 3.60),
                                        (60.0, 3.10), (50.0, 2.58), (0.0, 1.0), (100.0, 4.5)])
def test_r_to_mos_follows_g107(r, mos):
    assert mos_of(r) == pytest.approx(mos, abs=0.01)


def test_no_delay_and_no_loss_is_the_default_r():
    assert r_factor(0.0, 0.0) == pytest.approx(93.2)


def test_delay_impairment_bends_at_177_ms():
    assert 93.2 - r_factor(100.0, 0.0) == pytest.approx(2.4)
    assert 93.2 - r_factor(277.3, 0.0) == pytest.approx(0.024 * 277.3 + 0.11 * 100.0)


def test_g711_with_concealment_loses_about_a_third_of_r_at_ten_percent():
    # Ie,eff = 95 * 10 / (10 + 25.1)
    assert 93.2 - r_factor(0.0, 10.0) == pytest.approx(95 * 10 / 35.1)


def test_round_trip_loss_is_shared_by_both_directions():
    assert one_way_loss(0.36) == pytest.approx(0.2)
    assert one_way_loss(0.0) == 0.0 and one_way_loss(1.0) == 1.0


# -- the estimate from attempts ----------------------------------------------------------------

def test_estimate_counts_every_lost_attempt():
    attempts = [0.010] * 80 + [None] * 20
    found = estimate([attempts], jitter_buffer_max_ms=150)
    assert found.round_trip_loss_pct == pytest.approx(20.0)
    assert found.loss_pct == pytest.approx(100 * one_way_loss(0.2))
    assert found.jitter_ms == 0.0 and found.rtt_ms == pytest.approx(10.0)
    assert found.mos < 3.6


def test_jitter_becomes_buffer_delay_and_late_packets_become_loss():
    steady = [0.010, 0.012] * 50
    jittery = [0.010, 0.210] * 50  # 200 ms swings every packet
    calm = estimate([steady], jitter_buffer_max_ms=150)
    rough = estimate([jittery], jitter_buffer_max_ms=150)
    assert calm.jitter_ms == pytest.approx(2.0) and calm.late_pct == 0.0
    assert rough.jitter_ms == pytest.approx(200.0)
    assert rough.jitter_buffer_ms == 150.0, "the buffer stops at its deepest"
    assert rough.late_pct == 0.0, "a 200 ms round-trip swing is 100 ms each way: in the buffer"
    late = [0.010] * 50 + [0.400] * 50
    worse = estimate([late], jitter_buffer_max_ms=150)
    assert worse.late_pct > 0 and worse.mos < rough.mos < calm.mos


def test_no_attempts_no_estimate():
    assert estimate([], jitter_buffer_max_ms=150) is None
    assert estimate([[], []], jitter_buffer_max_ms=150) is None


def test_a_far_target_is_not_late_next_to_a_near_one():
    near = [0.001] * 50
    far = [0.120] * 50  # another region, steady at 120 ms
    found = estimate([near, far], jitter_buffer_max_ms=150)
    assert found.late_pct == 0.0 and found.jitter_ms == 0.0 and found.packets == 100


# -- brownouts in the decision core ------------------------------------------------------------

def lossy_wan(loss: float, seed: int, params: DecisionParams = PARAMS) -> FakeWan:
    wan = FakeWan(params, network=FakeNetwork(rng=random.Random(seed)))
    assert wan.run_until_state(S.ONLINE, 2.0) is not None
    wan.advance(20.0)
    wan.network.loss = loss
    return wan


def brownout_at(wan: FakeWan, limit_s: float) -> float | None:
    start = wan.now
    while wan.now < start + limit_s:
        wan.advance(0.05)
        if wan.state is S.DEGRADED and wan.core.cause.startswith("brownout"):
            return wan.now - start
    return None


@pytest.mark.parametrize("loss", [0.20, 0.35, 0.50])
def test_twenty_percent_round_trip_loss_or_more_is_a_brownout_within_ten_seconds(loss):
    for seed in range(10):
        wan = lossy_wan(loss, seed)
        took = brownout_at(wan, 10.0)
        assert took is not None, f"seed {seed}: {wan.core.cause} {wan.core.quality}"
        assert wan.core.verdict == "brownout"
        assert "probe packets lost" in wan.core.cause and "MOS" in wan.core.cause
        assert S.OUTAGE not in wan.states(), "a brownout is no outage"


def test_two_percent_loss_for_ten_minutes_is_never_a_brownout():
    wan = lossy_wan(0.02, 3)
    for _ in range(600 * 4):
        wan.advance(0.25)
        assert wan.core.brownout_since is None, wan.core.quality
    assert wan.core.quality.round_trip_loss_pct < 10


def test_a_brownout_clears_once_the_loss_is_gone():
    wan = lossy_wan(0.35, 1)
    assert brownout_at(wan, 10.0) is not None
    wan.network.loss = 0.0
    # the window forgets the lossy packets; the degraded state then clears after its own
    # hysteresis (degraded_clear_s)
    wan.advance(PARAMS.quality_window_s + 1.0)
    assert wan.core.brownout_since is None
    assert wan.run_until_state(S.ONLINE, PARAMS.degraded_clear_s + 5.0) is not None


def test_the_local_calls_policy_acts_on_a_sustained_brownout_only():
    params = dataclasses.replace(PARAMS, brownout_policy="local-calls", brownout_sustained_s=30.0)
    wan = lossy_wan(0.35, 2, params)
    began = brownout_at(wan, 10.0)
    assert began is not None and not wan.core.local_calls
    assert wan.core.take_policy_changes() == []
    wan.advance(31.0)
    assert wan.core.local_calls
    changes = wan.core.take_policy_changes()
    assert [c.local_calls for c in changes] == [True]
    assert "new calls are served locally" in changes[0].cause
    wan.network.loss = 0.0
    wan.advance(PARAMS.quality_window_s + 1.0)
    assert not wan.core.local_calls
    assert [c.local_calls for c in wan.core.take_policy_changes()] == [False]


def test_the_report_policy_never_turns_calls_local():
    wan = lossy_wan(0.5, 4)
    wan.advance(60.0)
    assert wan.core.brownout_since is not None and not wan.core.local_calls
    assert wan.core.take_policy_changes() == []


def test_jitter_alone_is_reported_with_its_figures():
    wan = FakeWan(network=FakeNetwork(jitter_s=0.3, rng=random.Random(5)))
    wan.run_until_state(S.ONLINE, 3.0)
    wan.advance(20.0)
    quality = wan.core.quality
    assert quality is not None and quality.jitter_ms > 50
    assert quality.round_trip_loss_pct == 0.0
    assert quality.mos < 4.3, "jitter costs buffer delay"
    report = wan.core.report(wan.now)
    assert report["quality"]["jitter_ms"] == pytest.approx(quality.jitter_ms, abs=0.01)
    assert all(t["quality"] for t in report["targets"] if t["kind"] in ("icmp", "sip/udp"))


def test_packets_lost_in_an_outage_are_no_brownout_after_it():
    wan = FakeWan()
    wan.run_until_state(S.ONLINE, 2.0)
    wan.advance(10.0)
    wan.network.blackhole = True
    wan.run_until_state(S.OUTAGE, 5.0)
    wan.advance(6.0)
    wan.network.blackhole = False
    recovering = wan.run_until_state(S.RECOVERING, 3.0)
    assert wan.run_until_state(S.ONLINE, PARAMS.hold_down_s + 1.0) == pytest.approx(
        recovering + PARAMS.hold_down_s, abs=0.05)
    assert wan.core.brownout_since is None


def test_a_region_back_from_an_outage_of_its_own_brings_no_brownout():
    wan = FakeWan()
    wan.run_until_state(S.ONLINE, 2.0)
    wan.network.down.add("west")
    wan.run_until_state(S.DEGRADED, 5.0)
    wan.advance(6.0)
    wan.network.down.clear()
    wan.advance(3.0)
    assert wan.core.brownout_since is None, wan.core.quality
