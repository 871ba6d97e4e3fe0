"""Fast fail (sip.fast_fail): the nft rules, and what they do to a phone's packets in a
namespace topology (a TCP reset, an ICMP port unreachable) while the appliance serves."""

from __future__ import annotations

import asyncio
import socket

import pytest

from appliance.sip.config import CloudEdgeConfig, SipConfig
from appliance.sip.fastfail import TABLE, FastFail, ruleset
from appliance.sip.service import fast_fail_targets
from jbcbench.topology import Topology, can_build_namespaces


def test_the_rules_refuse_udp_with_icmp_and_tcp_with_a_reset_per_target():
    script = ruleset([("203.0.113.10", None), ("2001:db8::5", 5061)], active=True)
    assert f"delete table inet {TABLE}" in script
    assert "ip daddr 203.0.113.10 udp dport { 5060, 5061 } reject with icmpx type " \
           "port-unreachable" in script
    assert "ip daddr 203.0.113.10 tcp dport { 5060, 5061 } reject with tcp reset" in script
    assert "ip6 daddr 2001:db8::5 tcp dport 5061 reject with tcp reset" in script
    assert "hook forward" in script, "only traffic routed through the appliance"


def test_removing_them_leaves_an_empty_table_deleted():
    script = ruleset([("203.0.113.10", None)], active=False)
    assert script == f"table inet {TABLE}\ndelete table inet {TABLE}\n"


def test_targets_default_to_the_cloud_edges():
    config = SipConfig(cloud_edges=(CloudEdgeConfig(address="203.0.113.10",
                                                    server_name="sip.example.net"),))
    assert fast_fail_targets(config) == [("203.0.113.10", None)]
    config = SipConfig(fast_fail_targets=("198.51.100.7:5060",))
    assert fast_fail_targets(config) == [("198.51.100.7", 5060)]


@pytest.mark.integration
@pytest.mark.netns
@pytest.mark.skipif(not can_build_namespaces()[0], reason=can_build_namespaces()[1])
def test_a_phone_routed_through_the_appliance_is_refused_at_once():
    with Topology("jbcff") as topo:
        phone, router, cloud = (topo.namespace(r) for r in ("ph", "rt", "cl"))
        router.sysctl("net.ipv4.ip_forward", 1)
        topo.link(phone, "eth0", router, "lan0", a_address="192.168.9.2/24",
                  b_address="192.168.9.1/24")
        topo.link(router, "wan0", cloud, "eth0", a_address="10.9.0.1/24",
                  b_address="10.9.0.10/24")
        phone.ip("route", "add", "default", "via", "192.168.9.1")
        cloud.ip("route", "add", "default", "via", "10.9.0.1")
        fastfail = FastFail([("10.9.0.10", None)])
        installed = router.call_inside(lambda: asyncio.run(fastfail.set(True)))
        assert installed, fastfail.problem
        tcp = phone.open_socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.settimeout(2.0)
        with pytest.raises(ConnectionRefusedError):
            tcp.connect(("10.9.0.10", 5060))  # a reset, not a 2 s timeout
        tcp.close()
        udp = phone.open_socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(2.0)
        udp.connect(("10.9.0.10", 5060))
        udp.send(b"REGISTER sip:cloud SIP/2.0\r\n\r\n")
        with pytest.raises(ConnectionRefusedError):
            udp.recv(100)  # the ICMP port unreachable, reported on a connected socket
        udp.close()
        removed = router.call_inside(lambda: asyncio.run(fastfail.set(False)))
        assert removed and not fastfail.active
