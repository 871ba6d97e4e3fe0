"""One trunk call's audio path between the conference bridge and the trunk's frame queues."""

from __future__ import annotations

import collections

import numpy as np

from appliance.gateway.bridge import BridgeSettings, TrunkAudioBridge
from drivers.trunk import FRAME_BYTES, FrameQueue

RATE = 8000


def tone(freq: float, n0: int, amplitude: float = 8000.0) -> bytes:
    t = (np.arange(160) + n0) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def level(data: bytes, freq: float) -> float:
    x = np.frombuffer(data, dtype="<i2").astype(float)
    phase = np.exp(-2j * np.pi * freq / RATE * np.arange(len(x)))
    return float(2 * abs(np.dot(x, phase)) / len(x))


def test_uplink_latency_is_bounded_when_the_trunk_consumes_slowly():
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(uplink_max_ms=100))
    for n in range(50):
        bridge.uplink_frame(tone(400, n * 160))
    assert len(uplink) == 5
    assert bridge.stats.uplink_dropped == 45
    kept = [uplink.get() for _ in range(5)]
    assert kept[-1] == tone(400, 49 * 160)  # the newest audio, not the oldest


def test_no_frame_from_the_conference_sends_nothing_up_the_trunk():
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings())
    bridge.uplink_frame(None)
    assert len(uplink) == 0


def test_first_audible_downlink_frame_is_reported_once():
    uplink, downlink = FrameQueue(), FrameQueue()
    heard = []
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(echo_canceller=False),
                              on_first_audio=lambda: heard.append(1))
    for _ in range(5):
        downlink.put(bytes(FRAME_BYTES))
        bridge.downlink_frame()
    assert heard == []
    for n in range(5):
        downlink.put(tone(425, n * 160))
        bridge.downlink_frame()
    assert heard == [1]
    assert bridge.heard_audio


def test_echo_returned_by_the_line_is_cancelled_through_the_queues():
    """The handset speaks all along; the 'line' returns the uplink audio 6 frames later at
    -3 dB. The far party answers in bursts (a 1 kHz tone, 1 s on, 1 s off) once the call has
    run 3 s. In the last silent second the handset hears its own voice more than 20 dB down;
    in the last burst it hears the far party at its level."""
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(echo_canceller=True,
                                                               echo_tail_ms=240))
    rng = np.random.default_rng(11)
    line_delay: collections.deque[bytes] = collections.deque([bytes(FRAME_BYTES)] * 6)
    heard, far_talking = [], []
    for n in range(350):  # 7 s
        handset = (np.convolve(rng.standard_normal(160), [1, 0.6, 0.3], mode="same")
                   * 3000).astype("<i2").tobytes()
        sent = uplink.get() if len(uplink) else bytes(FRAME_BYTES)
        line_delay.append(sent)
        echoed = np.frombuffer(line_delay.popleft(), dtype="<i2").astype(float) * 0.7
        talking = n >= 150 and (n // 50) % 2 == 1
        far = np.frombuffer(tone(1000, n * 160, 2000 if talking else 0), dtype="<i2")
        downlink.put(np.clip(echoed + far.astype(float), -32768, 32767).astype("<i2")
                     .tobytes())
        heard.append(bridge.downlink_frame())
        far_talking.append(talking)
        bridge.uplink_frame(handset)
    burst = b"".join(heard[255:300])     # far party talking (frames 250-299)
    silent = b"".join(heard[305:350])    # far party silent (frames 300-349)
    assert abs(level(burst, 1000) - 2000) < 200
    echo_rms = 0.7 * 3000 * np.sqrt(1 + 0.36 + 0.09)
    residual = np.sqrt(np.mean(np.frombuffer(silent, dtype="<i2").astype(float) ** 2))
    assert 20 * np.log10(echo_rms / residual) > 20.0


def test_echo_stays_cancelled_when_the_playout_buffer_moves_the_delay():
    """After convergence the trunk stalls for 60 ms: the playout buffer conceals, waits to
    refill and so delays everything after by a few frames. The canceller moves its filter by
    the same number of frames and keeps cancelling at once instead of learning again."""
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(echo_canceller=True))
    rng = np.random.default_rng(5)
    line: collections.deque[bytes] = collections.deque([bytes(FRAME_BYTES)] * 4)
    stalled: list[bytes] = []
    heard, echoes = [], []
    for n in range(400):
        handset = (np.convolve(rng.standard_normal(160), [1, 0.6, 0.3], mode="same")
                   * 3000).astype("<i2").tobytes()
        sent = uplink.get() if len(uplink) else bytes(FRAME_BYTES)
        line.append(sent)
        echo = (np.frombuffer(line.popleft(), dtype="<i2").astype(float) * 0.7).astype("<i2")
        if 250 <= n < 253:
            stalled.append(echo.tobytes())  # USB hiccup: three frames arrive late, together
        else:
            for frame in stalled:
                downlink.put(frame)
            stalled.clear()
            downlink.put(echo.tobytes())
        heard.append(bridge.downlink_frame())
        echoes.append(echo)
        bridge.uplink_frame(handset)
    assert bridge.playout.stats.underruns >= 1
    after = np.frombuffer(b"".join(heard[262:300]), dtype="<i2").astype(float)
    echo_level = np.sqrt(np.mean(np.concatenate(echoes[262:300]).astype(float) ** 2))
    residual = np.sqrt(np.mean(after ** 2))
    assert 20 * np.log10(echo_level / residual) > 15.0


def test_the_caller_hears_a_notice_while_the_trunk_says_the_line_is_dead():
    """Issue 13 finding 6: a dead-silent downlink (or none) is told to the caller: a quiet
    double beep every 5 s over what plays, for as long as the driver flags it, and nothing
    once the line carries sound again."""
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(echo_canceller=False))
    for _ in range(20):
        downlink.put(bytes(FRAME_BYTES))
        assert level(bridge.downlink_frame(), 950) < 1.0
    downlink.problem = "silent-downlink"
    heard = []
    for _ in range(600):
        downlink.put(bytes(FRAME_BYTES))
        heard.append(level(bridge.downlink_frame(), 950))
    beeping = [i for i, value in enumerate(heard) if value > 1000]
    assert beeping[:12] == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]
    assert 250 in beeping and 500 in beeping and 100 not in beeping
    assert bridge.notices == 3 and bridge.snapshot()["dead_air_notices"] == 3
    assert 2400 < max(heard) < 2800  # about -22 dBFS
    downlink.problem = None
    for n in range(100):
        downlink.put(tone(1000, n * 160))
        assert level(bridge.downlink_frame(), 950) < 200  # the line's own sound, no beep


def test_the_notice_can_be_turned_off():
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink,
                              BridgeSettings(echo_canceller=False, dead_air_notice=False))
    downlink.problem = "no-downlink"
    assert all(level(bridge.downlink_frame(), 950) < 1.0 for _ in range(50))


def test_echo_stays_cancelled_when_frames_come_bunched():
    """The e2e echo test failed under load: frames from the conference came two at a time
    and then none, so the uplink queue overflowed (a frame dropped) and then ran dry (the
    driver sent silence). The echo never moved, but the canceller's reference lost frames
    and was shifted for the drops only. Here a modem plays one frame per tick from the
    uplink queue (silence when it is empty) and returns half of it 160 ms later."""
    rng = np.random.default_rng(3)
    uplink, downlink = FrameQueue(), FrameQueue()
    bridge = TrunkAudioBridge(uplink, downlink, BridgeSettings(uplink_max_ms=60))
    delay_frames = 8
    played: collections.deque[np.ndarray] = collections.deque(
        [np.zeros(160)] * delay_frames, maxlen=delay_frames + 1)
    sent, heard = [], []
    pending = 0
    for _tick in range(1000):
        # the conference hands frames bunched: 0, 1 or 2 per tick, one per tick on average
        pending += 1
        burst = min(pending, int(rng.choice([0, 1, 2], p=[0.25, 0.5, 0.25])))
        for _ in range(burst):
            frame = np.convolve(rng.standard_normal(163), [1.0, 0.8, 0.5, 0.2], "valid")
            bridge.uplink_frame((frame * 3000).clip(-32768, 32767).astype("<i2").tobytes())
            pending -= 1
        # the modem: one frame out per tick, its echo comes back after the delay
        up = uplink.get()
        played.append(np.frombuffer(up, dtype="<i2").astype(float) if up else np.zeros(160))
        echo = 0.5 * played[0]
        downlink.put(echo.astype("<i2").tobytes())
        out = np.frombuffer(bridge.downlink_frame(), dtype="<i2").astype(float)
        sent.append(echo)
        heard.append(out)
    assert bridge.stats.uplink_dropped > 20 and uplink.underruns > 20  # it did bunch
    echo_energy = sum(float(np.dot(e, e)) for e in sent[600:])
    left = sum(float(np.dot(h, h)) for h in heard[600:])
    assert 10 * np.log10(echo_energy / max(left, 1.0)) > 15.0
