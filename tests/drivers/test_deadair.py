"""Dead air: a downlink that delivers frames of digital silence only (finding 6). Pure."""

from __future__ import annotations

import struct

from drivers.deadair import DeadAir, is_dead
from drivers.trunk import SILENCE_FRAME


def frame(level: int) -> bytes:
    return struct.pack("<160h", *([level, -level] * 80))


def test_digital_silence_and_line_noise_told_apart():
    assert is_dead(SILENCE_FRAME) and is_dead(frame(4)) and is_dead(b"")
    assert not is_dead(frame(5)) and not is_dead(frame(-300))


def test_frames_of_silence_are_dead_after_the_wait_and_sound_revives_them():
    watch = DeadAir(after_s=5.0, started=0.0)
    assert not watch.dead(10.0)  # no frames at all is not dead air (it is no downlink)
    for tick in range(250):
        watch.frame(SILENCE_FRAME, tick * 0.02)
    assert not watch.dead(4.9) and watch.dead(5.0)
    assert not watch.ever_sounded
    watch.frame(frame(200), 5.02)
    assert not watch.dead(9.9) and watch.dead(10.1) and watch.ever_sounded
