"""The [wan] config section: defaults, and one clear line for each mistake."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, load_config
from appliance.wan.config import WanConfig
from appliance.wan.decision import DecisionParams

GOOD = """
[wan]
interface = "eth0"
resolvers = ["192.0.2.53"]
[[wan.targets]]
name = "east-sip"
role = "cloud"
region = "east"
kind = "sip-options"
transport = "tls"
server_name = "sip.east.example.net"
[[wan.targets]]
name = "anchor1"
role = "anchor"
kind = "icmp"
address = "198.51.100.1"
"""


def load(tmp_path, text: str):
    path = tmp_path / "appliance.toml"
    path.write_text(text)
    return load_config(path).config


def test_defaults_meet_the_goals_on_paper():
    params = DecisionParams.from_config(WanConfig())
    assert params.detection_bound_s <= 3.0, "silent blackhole within 3 s"
    assert params.rise_rounds * params.interval_s <= 1.0, "recovery = hold-down + <= 1 s"
    assert WanConfig().configured is False


def test_a_good_section_loads_with_derived_values(tmp_path):
    wan = load(tmp_path, GOOD).wan
    assert wan.configured
    sip, anchor = wan.targets
    assert sip.effective_port == 5061 and sip.effective_every_rounds == 4
    assert sip.group == "region:east" and anchor.group == "anchor:anchor1"
    assert anchor.effective_every_rounds == 1
    assert wan.effective_dns_names == ("sip.east.example.net",)


@pytest.mark.parametrize(("change", "key", "words"), [
    ('interface = "eth0"', "wan.interface", None),
    ('region = "east"', "wan.targets[0].region", "cloud targets need a region"),
    ('server_name = "sip.east.example.net"', "wan.targets[0].address", "give an address"),
    ('address = "198.51.100.1"', "wan.targets[1].address", "give an address"),
])
def test_missing_pieces_are_named(tmp_path, change, key, words):
    text = GOOD.replace(change + "\n", "", 1)
    if words is None:  # interface left out: valid, but not configured
        assert load(tmp_path, text).wan.configured is False
        return
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    assert f": {key}: " in str(error.value) and words in str(error.value)


@pytest.mark.parametrize(("line", "key", "words"), [
    ("interval = 1", "wan.interval", "unknown key"),
    ('interface = "this-name-is-too-long0"', "wan.interface", "at most 15 characters"),
    ('resolvers = ["dns.example.net"]', "wan.resolvers", "not an IP address"),
    ("fall_rounds = 0", "wan.fall_rounds", "out of range"),
    ("window = 4", "wan.window_quorum", "more than window"),
    ("max_hold_down_s = 5.0", "wan.max_hold_down_s", "hold_down_s"),
    ('ca_file = "/nonexistent/ca.pem"', "wan.ca_file", "does not exist"),
    ('ca_file = "ca.pem"', "wan.ca_file", "absolute path"),
])
def test_bad_values_fail_with_the_key(tmp_path, line, key, words):
    name = line.split(" = ")[0]
    kept = [kept for kept in GOOD.split("\n") if not kept.startswith(name + " = ")]
    text = "\n".join(kept).replace("[wan]", "[wan]\n" + line, 1)
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    assert f": {key}: " in str(error.value) and words in str(error.value), str(error.value)


def test_target_mistakes_are_caught(tmp_path):
    duplicate = GOOD + GOOD[GOOD.index("[[wan.targets]]\nname = \"anchor1\""):]
    with pytest.raises(ConfigError, match=r"wan.targets\[2\].name: 'anchor1' is used by two"):
        load(tmp_path, duplicate)
    no_name = GOOD.replace('server_name = "sip.east.example.net"\n', 'address = "192.0.2.9"\n')
    with pytest.raises(ConfigError, match=r"targets\[0\].server_name: TLS probes verify"):
        load(tmp_path, no_name)
    anchors_only = GOOD[:GOOD.index("[[wan.targets]]")] + GOOD[GOOD.index(
        "[[wan.targets]]\nname = \"anchor1\""):]
    with pytest.raises(ConfigError, match=r"wan\.targets: at least one target must have role"):
        load(tmp_path, anchors_only)
    no_resolver = GOOD.replace('resolvers = ["192.0.2.53"]\n', "")
    with pytest.raises(ConfigError, match=r"targets\[0\].address: no address and no "
                       "wan.resolvers"):
        load(tmp_path, no_resolver)
    bad_kind = GOOD.replace('kind = "icmp"', 'kind = "ping"')
    with pytest.raises(ConfigError, match=r"targets\[1\].kind: 'ping' is not allowed"):
        load(tmp_path, bad_kind)
