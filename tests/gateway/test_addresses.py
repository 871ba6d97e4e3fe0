"""Where the gateway listens and where its calls to handsets go, from [sip] and [gateway]."""

from __future__ import annotations

import pytest

from appliance.gateway.config import (
    GatewayAddressError,
    GatewayConfig,
    gateway_addresses,
    uri_host_port,
)
from appliance.sip.config import SipConfig


def test_the_gateway_listens_where_the_proxy_sends_outside_calls():
    sip = SipConfig(enabled=True, listen_address="192.168.1.2", udp_port=5060,
                    gateway_uri="sip:127.0.0.1:5062")
    assert gateway_addresses(GatewayConfig(enabled=True), sip) == (
        "127.0.0.1", 5062, "sip:192.168.1.2:5060")


def test_the_proxy_port_actually_bound_wins_over_the_configured_one():
    sip = SipConfig(enabled=True, listen_address="0.0.0.0", advertised_address="10.0.0.2",
                    udp_port=0, gateway_uri="sip:127.0.0.1:5062")
    assert gateway_addresses(GatewayConfig(), sip, {"udp": 40123, "tcp": 40124})[2] == \
        "sip:127.0.0.1:40123"  # a wildcard listener is reached on loopback


def test_explicit_gateway_settings_override_the_derived_ones():
    sip = SipConfig(enabled=True, gateway_uri="sip:127.0.0.1:5062")
    config = GatewayConfig(sip_port=5999, proxy_uri="sip:127.0.0.1:5070")
    assert gateway_addresses(config, sip) == ("127.0.0.1", 5999, "sip:127.0.0.1:5070")


def test_a_proxy_port_picked_at_start_is_waited_for():
    sip = SipConfig(enabled=True, udp_port=0, gateway_uri="sip:127.0.0.1:5062")
    with pytest.raises(GatewayAddressError, match="waiting for the SIP proxy to start"):
        gateway_addresses(GatewayConfig(enabled=True), sip, {})


@pytest.mark.parametrize(("sip", "message"), [
    (SipConfig(enabled=True, gateway_uri=""), "set sip.gateway_uri"),
    (SipConfig(enabled=True, gateway_uri="sip:192.168.1.2:5062"), "not a loopback address"),
    (SipConfig(enabled=False, gateway_uri="sip:127.0.0.1:5062"), "the SIP proxy is off"),
])
def test_unusable_addresses_say_what_to_set(sip, message):
    with pytest.raises(GatewayAddressError, match=message):
        gateway_addresses(GatewayConfig(enabled=True), sip)


@pytest.mark.parametrize(("uri", "expected"), [
    ("sip:127.0.0.1:5062", ("127.0.0.1", 5062)),
    ("sip:127.0.0.1", ("127.0.0.1", 5060)),
    ("sip:gw@127.0.0.1:5070;transport=udp", ("127.0.0.1", 5070)),
    ("<sip:[::1]:5070>", ("::1", 5070)),
    ("http://x", None),
])
def test_uri_host_port(uri, expected):
    assert uri_host_port(uri) == expected


def test_a_config_file_enabling_the_gateway_without_an_address_is_refused(tmp_path):
    from appliance.config import ConfigError, load_config

    path = tmp_path / "appliance.toml"
    path.write_text("[sip]\nenabled = true\n[gateway]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r"gateway\.enabled: set sip\.gateway_uri"):
        load_config(path)
    path.write_text('[sip]\nenabled = true\ngateway_uri = "sip:127.0.0.1:5062"\n'
                    "[gateway]\nenabled = true\n")
    assert load_config(path).config.gateway.enabled
