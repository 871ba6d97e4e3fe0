"""The trunk-side jitter buffer: prefill, concealment, growth after underruns, latency trimming."""

from __future__ import annotations

from appliance.gateway.playout import PlayoutBuffer
from drivers.trunk import FRAME_BYTES, SILENCE_FRAME, FrameQueue


def frame(n: int) -> bytes:
    """A recognisable frame: sample value n everywhere (little-endian int16)."""
    return n.to_bytes(2, "little", signed=True) * (FRAME_BYTES // 2)


def value(data: bytes) -> int:
    return int.from_bytes(data[:2], "little", signed=True)


def test_plays_in_order_after_the_prefill():
    queue = FrameQueue()
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=10)
    queue.put(frame(1))
    assert buffer.next_frame() == SILENCE_FRAME  # one frame is not yet the prefill
    queue.put(frame(2))
    played = [value(buffer.next_frame()) for _ in range(2)]
    assert played == [1, 2]
    assert buffer.stats.waiting == 1 and buffer.stats.underruns == 0


def test_steady_arrivals_never_underrun_and_keep_the_minimum_delay():
    queue = FrameQueue()
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=10)
    queue.put(frame(0))
    for n in range(1, 1000):
        queue.put(frame(n))
        assert value(buffer.next_frame()) == n - 1 or n == 1
    assert buffer.stats.underruns == 0 and buffer.target == 2


def test_an_underrun_is_concealed_once_then_silence_and_the_target_grows():
    queue = FrameQueue()
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=10)
    for n in (100, 200):
        queue.put(frame(n))
    assert [value(buffer.next_frame()) for _ in range(2)] == [100, 200]
    concealed = buffer.next_frame()
    assert value(concealed) == 100  # the last frame again at half level
    assert buffer.next_frame() == SILENCE_FRAME
    assert buffer.stats.underruns == 1 and buffer.stats.concealed == 1
    assert buffer.target == 3 and not buffer.playing
    for n in (1, 2):
        queue.put(frame(n))
        assert buffer.next_frame() == SILENCE_FRAME  # waiting for 3 frames now
    queue.put(frame(3))
    assert value(buffer.next_frame()) == 1


def test_bursty_arrivals_settle_without_repeated_underruns():
    """Frames arrive three at a time every third tick (USB-style bursts)."""
    queue = FrameQueue()
    buffer = PlayoutBuffer(queue, min_frames=1, max_frames=10)
    n = 0
    for tick in range(3000):
        if tick % 3 == 0:
            for _ in range(3):
                queue.put(frame(n % 30000))
                n += 1
        buffer.next_frame()
    assert buffer.stats.underruns <= 3
    assert buffer.target <= 4


def test_a_standing_surplus_is_trimmed_one_frame_per_window():
    queue = FrameQueue(max_frames=100)
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=10, window_frames=50)
    for n in range(8):  # six frames more than needed, kept there by steady arrivals
        queue.put(frame(n))
    for n in range(8, 8 + 400):
        queue.put(frame(n))
        buffer.next_frame()
    assert buffer.stats.discarded >= 5
    assert len(queue) <= 3
    assert buffer.stats.underruns == 0


def test_a_burst_beyond_the_maximum_is_cut_back_at_once():
    queue = FrameQueue(max_frames=100)
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=6)
    for n in range(30):
        queue.put(frame(n))
    played = value(buffer.next_frame())
    assert played >= 27  # old audio was dropped, not played late
    assert buffer.stats.discarded >= 27


def test_the_target_shrinks_back_after_a_quiet_stretch():
    queue = FrameQueue(max_frames=100)
    buffer = PlayoutBuffer(queue, min_frames=2, max_frames=10, shrink_after_frames=100)
    buffer.target = 6
    for n in range(6):
        queue.put(frame(n))
    for n in range(6, 700):  # four quiet stretches of 100 frames: 6 -> 2, and no lower
        queue.put(frame(n))
        buffer.next_frame()
    assert buffer.target == 2
