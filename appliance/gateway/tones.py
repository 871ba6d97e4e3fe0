"""The tones the gateway plays to a handset itself: (freq1, freq2, on_ms, off_ms) steps."""

from __future__ import annotations

PREEMPTION_TONE = [(480, 620, 250, 250)] * 4
"""Four bursts of the North American reorder (fast busy) tone: 'your call was taken over'."""
NOTIFY_ALERT_TONE = [(1400, 0, 300, 200)] * 3 + [(0, 0, 0, 1500)]
"""The on-site emergency notification: three high beeps, a pause (looped while connected)."""
