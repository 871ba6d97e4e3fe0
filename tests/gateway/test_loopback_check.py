"""The gateway's loopback self-check (python -m appliance.gateway.loopback): the media agent
calls itself, and the tone played on one leg is heard on the other's trunk side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from appliance.gateway.loopback import tone_level


@pytest.mark.integration
def test_the_agent_calls_itself_and_hears_its_tone():
    done = subprocess.run([sys.executable, "-m", "appliance.gateway.loopback", "--json"],
                          capture_output=True, text=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, result
    assert result["ok"] and result["rx_packets"] > 0
    assert result["tone_level"] > 1000
    assert result["pjsua2"]


def test_tone_level_finds_the_tone_and_not_silence():
    import numpy as np

    t = np.arange(960) / 8000
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes()
    assert 7500 < tone_level([tone], 1000) < 8500
    assert tone_level([bytes(1920)], 1000) == 0
    assert tone_level([], 1000) == 0
