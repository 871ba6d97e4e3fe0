"""The [gateway] section: the pjsua2 media user agent between the SIP proxy and the trunks."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Literal

from appliance.config.schema import between, non_empty, setting

from .errors import GatewayError

CODECS = ("PCMU", "PCMA", "G722", "GSM", "ILBC", "SPEEX")
_EXTENSION = re.compile(r"^[0-9]{2,8}$")


def _loopback(value: str) -> str | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address (names are not resolved here)"
    if not address.is_loopback:
        return (f"{value} is not a loopback address; the gateway's SIP side only talks to the "
                "local proxy, use 127.0.0.1")
    return None


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address (names are not resolved here)"
    return None


def _sip_uri_or_empty(value: str) -> str | None:
    if value and not re.match(r"^sips?:[^\s]+$", value):
        return f"{value!r} is not a SIP URI such as sip:127.0.0.1:5060"
    return None


_URI_HOSTPORT = re.compile(r"^sips?:(?:[^@;>]*@)?(\[[^\]]+\]|[^:;>?]+)(?::(\d+))?",
                           re.IGNORECASE)


def uri_host_port(uri: str) -> tuple[str, int] | None:
    """Host and port (default 5060) of a sip: URI, or None when it is not one."""
    match = _URI_HOSTPORT.match(uri.strip().strip("<>"))
    if not match:
        return None
    return match.group(1).strip("[]"), int(match.group(2) or 5060)


class GatewayAddressError(GatewayError, ValueError):
    pass


def gateway_addresses(gateway: GatewayConfig, sip: object | None,
                      proxy_ports: dict[str, int] | None = None) -> tuple[str, int, str]:
    """Where the gateway listens and where its calls to handsets go: (address, port, proxy
    URI). ``sip`` is the [sip] section (the proxy's gateway_uri names the gateway's own
    address); ``proxy_ports`` the ports the proxy actually bound."""
    if gateway.sip_port:
        address, port = gateway.sip_address, gateway.sip_port
    else:
        target = uri_host_port(getattr(sip, "gateway_uri", "") or "")
        if target is None:
            raise GatewayAddressError(
                "set sip.gateway_uri (e.g. sip:127.0.0.1:5062): it is where the proxy sends "
                "outside calls, and where the gateway listens")
        address, port = target
        problem = _loopback(address)
        if problem:
            raise GatewayAddressError(f"sip.gateway_uri: {problem}")
    if gateway.proxy_uri:
        return address, port, gateway.proxy_uri
    if sip is None or not getattr(sip, "enabled", False):
        raise GatewayAddressError("the SIP proxy is off (sip.enabled) and gateway.proxy_uri "
                                  "is empty: calls from the trunks would have nowhere to go")
    host = getattr(sip, "listen_address", "127.0.0.1")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    proxy_port = (proxy_ports or {}).get("udp") or getattr(sip, "udp_port", 5060)
    if not proxy_port:
        raise GatewayAddressError("waiting for the SIP proxy to start: sip.udp_port = 0 picks "
                                  "its port then (set a fixed sip.udp_port, or "
                                  "gateway.proxy_uri, to start without waiting)")
    return address, port, f"sip:{host}:{proxy_port}"


def _codecs(value: tuple[str, ...]) -> str | None:
    unknown = [c for c in value if c.upper() not in CODECS]
    if unknown:
        return f"unknown codec(s) {unknown}; choose from {list(CODECS)}"
    if not value:
        return "list at least one codec (PCMU and PCMA are what the trunks speak)"
    return None


def _extension_or_empty(value: str) -> str | None:
    if value and not _EXTENSION.match(value):
        return f"{value!r} is not an extension number (2 to 8 digits)"
    return None


def _notify(value: tuple[str, ...]) -> str | None:
    unknown = [v for v in value if v not in ("message", "ring")]
    if unknown:
        return f"unknown notification kind(s) {unknown}; use 'message' and/or 'ring'"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    enabled: bool = setting(
        False, doc="Run the gateway (outside calls over the trunks). Off in the built-in "
        "defaults so that a bare jbcd starts no media agent; a deployed appliance's file turns "
        "it on. Off: the proxy refuses external and emergency calls with 503.")
    sip_address: str = setting(
        "127.0.0.1",
        doc="Loopback address the gateway's SIP agent listens on (UDP and TCP) when sip_port "
        "is set; otherwise the address of sip.gateway_uri is used.", check=_loopback)
    sip_port: int = setting(
        0, doc="Port of the gateway's SIP agent. 0: the port of sip.gateway_uri, where the "
        "proxy sends outside and emergency calls (the usual setting).",
        check=between(0, 65535))
    proxy_uri: str = setting(
        "",
        doc="Where the gateway sends calls arriving on the trunks. Empty: the local SIP "
        "proxy's own UDP address (it trusts the gateway by its address and port).",
        check=_sip_uri_or_empty)
    domain: str = setting(
        "127.0.0.1", doc="Host part of the SIP URIs the gateway calls (the proxy's domain).",
        check=non_empty)
    media_address: str = setting(
        "127.0.0.1",
        doc="IP address handsets send their RTP to for trunk calls: the appliance's LAN "
        "address. (SIP stays on loopback; audio goes straight between handset and gateway.)",
        check=_ip)
    rtp_port: int = setting(40000, doc="First UDP port for handset-side RTP/SRTP.",
                            check=between(1024, 65000))
    rtp_port_count: int = setting(
        1000, doc="How many ports from rtp_port may be used (two per call: RTP and RTCP).",
        check=between(8, 20000))
    codecs: tuple[str, ...] = setting(
        ("PCMU", "PCMA", "G722"),
        doc="Codecs offered and accepted on the handset side, most preferred first. G.711 "
        "first: the trunks carry 8 kHz audio, so anything else only costs CPU. Wideband "
        "codecs are resampled by the conference bridge.", check=_codecs)
    echo_canceller: bool = setting(
        True, doc="Cancel the echo the phone line or LTE module returns (trunk side).")
    echo_tail_ms: int = setting(
        200, doc="Longest echo delay the canceller covers, including serial buffering.",
        check=between(20, 500))
    jitter_min_ms: int = setting(
        40, doc="Trunk-side playout buffer: the delay it starts with and never goes below.",
        check=between(20, 200))
    jitter_max_ms: int = setting(
        240, doc="Trunk-side playout buffer: the most delay it grows to after underruns (LTE "
        "handovers stall audio for a few hundred milliseconds).", check=between(40, 1000))
    handset_jitter_max_ms: int = setting(
        400, doc="Largest delay of the RTP jitter buffer on the handset side.",
        check=between(60, 2000))
    realtime_priority: int = setting(
        10, doc="SCHED_RR priority of the threads that carry call audio (media clock, RTP, "
        "the event loop that paces the modems), so a busy host cannot stall them into gaps. "
        "Needs CAP_SYS_NICE (the systemd unit grants it); without it they stay at normal "
        "priority. 0: never raise them.", check=between(0, 99))
    retry_after_s: int = setting(
        30, doc="Retry-After sent with 503 when no trunk can take a call.",
        check=between(1, 3600))
    answer_timeout_s: float = setting(
        120.0, doc="An outside call not answered by then is given up (480).",
        check=between(5, 600))
    inbound_ring_timeout_s: float = setting(
        45.0, doc="How long an inbound call rings one target before the fallback is tried.",
        check=between(5, 600))
    inbound_fallback: str = setting(
        "", doc="Extension (or ring group) for inbound calls when the directory has no route "
        "for the trunk. Empty: such calls are refused and recorded as missed.",
        check=_extension_or_empty)
    emergency_notify: tuple[str, ...] = setting(
        ("message", "ring"),
        doc="How the directory's emergency notify_extensions are told of an emergency call: "
        "'message' (SIP MESSAGE with the extension and its location), 'ring' (a call showing "
        "them, with an alert tone when answered), or both.", check=_notify)
    emergency_notify_ring_s: float = setting(
        30.0, doc="How long the on-site notification rings.", check=between(5, 300))
    preemption_tone_s: float = setting(
        2.0, doc="How long a call ended for an emergency call hears the pre-emption tone.",
        check=between(0, 10))
    test_call_timeout_s: float = setting(
        60.0, doc="'jbc test-call': how long to wait for the far end to answer.",
        check=between(5, 300))
    test_call_listen_s: float = setting(
        3.0, doc="'jbc test-call': how long to send the test tone and listen once answered.",
        check=between(0.5, 30))
    log_level: Literal["error", "warning", "info", "debug", "trace"] = setting(
        "warning", doc="pjsua2's own log detail (into the daemon log); 'trace' adds SIP messages.")

    def validate(self):
        if self.jitter_max_ms < self.jitter_min_ms:
            yield "jitter_max_ms", "must not be smaller than jitter_min_ms"
        if self.rtp_port + self.rtp_port_count > 65536:
            yield "rtp_port_count", "runs past port 65535"

    @property
    def pj_log_level(self) -> int:
        return {"error": 1, "warning": 2, "info": 3, "debug": 4, "trace": 5}[self.log_level]

