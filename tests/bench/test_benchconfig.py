"""The bench config file that points the outage bench at real modems."""

from __future__ import annotations

import pathlib

import pytest

from appliance.trunks.config import TrunkConfig
from jbcbench.benchconfig import BenchConfigError, load_bench_config

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "hw-testbench" / "bench.example.toml"


def test_the_example_loads_and_its_trunks_are_valid_appliance_trunks():
    config = load_bench_config(EXAMPLE)
    assert config.bench["handsets"] == 4 and config.bench["outages"] == ["blackhole"]
    assert [t["name"] for t in config.trunks] == ["lte", "pots"]
    assert config.far_end.number == "+15551230000" and config.far_end.tone_hz is None
    names = {field for field in TrunkConfig.__dataclass_fields__}
    for trunk in config.trunks:
        assert set(trunk) <= names, "keys jbcd's [[trunks]] does not know"


@pytest.mark.parametrize(("text", "message"), [
    ("[bench]\nhandsets = 'four'\n", "bench.handsets"),
    ("[bench]\nspeed = 3\n", "bench.speed: unknown key"),
    ("[benchmark]\n", "unknown section"),
    ("[[trunks]]\nname = 'lte'\nkind = 'lte'\n", "usb_id"),
    ("[[trunks]]\nname = 'lte'\nkind = 'lte'\nusb_id = '2c7c:0125'\n", "[far_end]"),
    ("[far_end]\ntone_hz = 1000\n", "far_end.number"),
    ("[bench]\nloopback = 1\n", "bench.loopback"),
])
def test_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "bench.toml"
    path.write_text(text)
    with pytest.raises(BenchConfigError, match=message.replace("[", r"\[")):
        load_bench_config(path)
