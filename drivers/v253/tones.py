"""In-band DTMF for analog lines: the digit as two sine tones in the uplink audio (Q.23
frequencies), 80 ms on and 60 ms off, in the trunk's 20 ms s16le frames."""

from __future__ import annotations

import array
import math
import sys

ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYS = ("123A", "456B", "789C", "*0#D")
RATE = 8000
FRAME_SAMPLES = 160


def dtmf_frames(digit: str, *, on_ms: int = 80, off_ms: int = 60,
                amplitude: int = 6000) -> list[bytes]:
    found = [(row, keys.find(digit.upper())) for row, keys in enumerate(KEYS)
             if len(digit) == 1 and digit.upper() in keys]
    if not found:
        raise ValueError(f"{digit!r} is not a DTMF digit")
    row, column = found[0]
    low = 2 * math.pi * ROWS[row] / RATE
    high = 2 * math.pi * COLUMNS[column] / RATE
    samples = array.array("h", (
        round(amplitude * (math.sin(low * n) + math.sin(high * n)) / 2)
        for n in range(on_ms * RATE // 1000)))
    samples.extend([0] * (off_ms * RATE // 1000))
    if sys.byteorder != "little":
        samples.byteswap()
    data = samples.tobytes()
    size = FRAME_SAMPLES * 2
    return [data[i:i + size] for i in range(0, len(data), size)]
