"""The [sip] section: the local registrar and proxy that serve handsets during an outage."""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from typing import Literal

from appliance.config.schema import absolute_path, at_least, between, non_empty, setting

from .uri import SipUri, UriError, parse_hostport


def _ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address (names are not resolved here)"
    return None


def _ip_or_empty(value: str) -> str | None:
    return None if value == "" else _ip_address(value)


def _port(value: int) -> str | None:
    if not 0 <= value <= 65535:
        return f"{value} is not a port number (0 picks a free port)"
    return None


def _transports(value: tuple[str, ...]) -> str | None:
    unknown = [t for t in value if t not in ("udp", "tcp", "tls")]
    if unknown:
        return f"unknown transport {unknown[0]!r}; use udp, tcp and/or tls"
    if len(set(value)) != len(value):
        return "lists a transport twice"
    return None


def _algorithms(value: tuple[str, ...]) -> str | None:
    unknown = [a for a in value if a not in ("SHA-256", "MD5")]
    if unknown:
        return f"unknown digest algorithm {unknown[0]!r}; use SHA-256 and/or MD5"
    if not value:
        return "must list at least one algorithm"
    return None


def _gateway_uri(value: str) -> str | None:
    if value == "":
        return None
    try:
        uri = SipUri.parse(value)
    except UriError as error:
        return f"{value!r} is not a sip: URI ({error})"
    if not uri.host_is_ip:
        return f"{value!r} must name an IP address, e.g. sip:127.0.0.1:5062 (no DNS here)"
    return None


def _peers(value: tuple[str, ...]) -> str | None:
    for peer in value:
        try:
            host, _ = parse_hostport(peer)
        except UriError as error:
            return f"{peer!r} is not 'ip' or 'ip:port' ({error})"
        if _ip_address(host):
            return f"{peer!r} must be an IP address, optionally with :port"
    return None


def _optional_path(value: pathlib.Path | None) -> str | None:
    return None if value is None else absolute_path(value)


def _fast_fail_targets(value: tuple[str, ...]) -> str | None:
    for target in value:
        try:
            host, _ = parse_hostport(target)
        except UriError as error:
            return f"{target!r} is not 'ip' or 'ip:port' ({error})"
        if _ip_address(host):
            return f"{target!r} must be an IP address, optionally with :port"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CloudEdgeConfig:
    """One of the cloud's SIP edges that in-path mode relays to (the first that answers)."""

    address: str = setting(doc="The edge's IP address (no DNS here).", check=_ip_address,
                           example="203.0.113.10")
    port: int = setting(5061, doc="Its SIP port.", check=between(1, 65535))
    transport: Literal["tls", "tcp"] = setting(
        "tls", doc="'tls' (verified against cloud_ca_file and server_name: the cloud's "
        "commitment, TLS 1.2 or newer) or 'tcp' (test rigs only).")
    server_name: str = setting(
        "", doc="The name the edge's certificate must carry (required for tls).",
        example="sip.us-east.example.net")

    def validate(self):
        if self.transport == "tls" and not self.server_name:
            yield "server_name", "TLS to the cloud is verified against the edge's name; set it"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SipConfig:
    enabled: bool = setting(
        False,
        doc="Run the local SIP registrar and proxy. Off in the built-in defaults so that a "
        "bare jbcd never grabs port 5060; a deployed appliance's file turns it on.")
    mode: Literal["backup-registrar", "in-path"] = setting(
        "backup-registrar",
        doc="How handsets reach the appliance. 'backup-registrar': they use the cloud and "
        "have the appliance as their secondary server; they come here when their own timers "
        "notice an outage. 'in-path': they use the appliance as their outbound proxy; online "
        "it relays everything to the cloud (cloud_edges) and mirrors every registration the "
        "cloud accepts, so that in an outage it serves every phone at once. Phones set up as "
        "backup-registrar are served the same way in in-path mode.")
    cloud_edges: tuple[CloudEdgeConfig, ...] = setting(
        (), doc="In-path mode: the cloud's SIP edges to relay to, in order of preference "
        "(the next is tried when one cannot be reached).")
    cloud_ca_file: pathlib.Path | None = setting(
        None, doc="CA certificates (PEM) that sign the cloud edges' TLS certificates; empty "
        "uses the system's CA store.", check=_optional_path, example="/etc/jbc/cloud-ca.pem")
    cloud_keepalive_s: float = setting(
        20.0, doc="In-path mode: a CRLF keep-alive (RFC 5626) on the connection to the cloud "
        "this often; no answer within 10 s closes it and the next edge is tried.",
        check=between(1, 3600))
    in_path_outage_expires_s: int = setting(
        30, doc="In-path mode: how soon a phone refreshes its registration during an outage "
        "(refreshes are challenged against the directory): the grant is this plus the "
        "phone's own refresh lead, up to 120 s of it (desk phones refresh 60 s before "
        "expiry by default), so its next refresh reaches the cloud soon after the WAN is "
        "back.", check=between(10, 3600))
    fast_fail: bool = setting(
        False, doc="When jbcd is the site's router (the LAN behind the appliance): during an "
        "outage, refuse phones' packets to fast_fail_targets at once (ICMP port unreachable, "
        "TCP reset, with nftables) instead of letting them time out, so backup-registrar "
        "phones move to the appliance sooner. Needs CAP_NET_ADMIN and the nft tool.")
    fast_fail_targets: tuple[str, ...] = setting(
        (), doc="The cloud's SIP addresses phones use directly ('ip' or 'ip:port'; no port: "
        "5060 and 5061). Empty: the cloud_edges' addresses.",
        check=_fast_fail_targets, example=["203.0.113.10:5060"])
    listen_address: str = setting(
        "127.0.0.1",
        doc="The address to listen on: the appliance's LAN address that handsets use as their "
        "backup registrar or outbound proxy ('0.0.0.0' needs advertised_address).",
        check=_ip_address, example="192.168.1.2")
    advertised_address: str = setting(
        "",
        doc="The address put in Via and Record-Route; empty means listen_address.",
        check=_ip_or_empty, example="192.168.1.2")
    transports: tuple[str, ...] = setting(
        ("udp", "tcp"),
        doc="Transports to serve: udp, tcp, tls (tls needs tls_certificate and tls_private_key).",
        check=_transports)
    udp_port: int = setting(5060, doc="UDP port (0 picks a free port; for tests).", check=_port)
    tcp_port: int = setting(5060, doc="TCP port (0 picks a free port; for tests).", check=_port)
    tls_port: int = setting(5061, doc="TLS port (0 picks a free port; for tests).", check=_port)
    tls_certificate: pathlib.Path | None = setting(
        None, doc="PEM certificate chain presented to handsets over TLS (TLS 1.2 or newer).",
        check=_optional_path, example="/etc/jbc/sip-tls.crt")
    tls_private_key: pathlib.Path | None = setting(
        None, doc="PEM private key of tls_certificate.", check=_optional_path,
        example="/etc/jbc/sip-tls.key")
    realm: str = setting(
        "jbc", doc="The digest realm. HA1 values in the directory must be computed with it.",
        check=non_empty)
    digest_algorithms: tuple[str, ...] = setting(
        ("MD5",),
        doc="Digest algorithms offered, one challenge each, in this order (RFC 8760); a "
        "handset answers the first it supports. MD5 alone by default: many handsets know "
        "only MD5 and some (baresip 1.0, for one) fail outright when any challenge names "
        "SHA-256. Use [\"SHA-256\", \"MD5\"] or [\"SHA-256\"] when every handset supports it. "
        "A device whose directory entry has only one HA1 can use only that algorithm.",
        check=_algorithms)
    nonce_lifetime_s: float = setting(
        300.0, doc="A nonce older than this is answered with stale=true.", check=between(10, 86400))
    assume_wan_state: Literal["starting", "online", "outage"] = setting(
        "starting",
        doc="The WAN state assumed until the WAN monitor reports one ('outage' serves handsets "
        "at once). 'starting' serves only if bindings from an outage in progress were "
        "persisted.")
    online_register: Literal["refuse", "accept"] = setting(
        "refuse",
        doc="How REGISTER is answered while the cloud is up: 'refuse' sends 503 (without "
        "Retry-After) so handsets return to their primary server; 'accept' registers them "
        "(for handsets that register to both servers at once).")
    default_expires_s: int = setting(
        3600, doc="Expiry assumed when a REGISTER asks for none.", check=between(60, 86400))
    min_expires_s: int = setting(
        60, doc="Shorter requested expiries get 423 Interval Too Brief.", check=between(1, 3600))
    outage_max_expires_s: int = setting(
        120,
        doc="Longest expiry granted during an outage: short, so handsets notice the cloud's "
        "return soon after it.", check=between(30, 86400))
    online_max_expires_s: int = setting(
        3600, doc="Longest expiry granted while the cloud is up (online_register = 'accept').",
        check=between(30, 86400))
    max_contacts_per_aor: int = setting(
        10, doc="Most bindings per extension; a new one replaces the one expiring first.",
        check=between(1, 100))
    gateway_uri: str = setting(
        "",
        doc="Where external and emergency calls go: the trunk gateway's SIP URI (an IP "
        "address). Requests from it are trusted (inbound trunk calls need no digest). "
        "Empty: external calls are refused with 503.",
        check=_gateway_uri, example="sip:127.0.0.1:5062")
    trusted_peers: tuple[str, ...] = setting(
        (), doc="Further peers ('ip' or 'ip:port') whose requests are routed without digest "
        "authentication.", check=_peers)
    ring_timeout_s: float = setting(
        60.0, doc="How long a direct call to an extension rings before 408.",
        check=between(5, 600))
    emergency_without_auth: bool = setting(
        True,
        doc="Route calls to emergency numbers even when the handset cannot authenticate "
        "(wrong or missing credentials must never block 911).")
    max_calls: int = setting(500, doc="Most calls in progress at once; more get 503 (never "
                             "an emergency call).", check=between(1, 100000))
    dialog_idle_timeout_s: float = setting(
        14400.0, doc="A call with no in-dialog request for this long is forgotten.",
        check=between(60, 604800))
    rate_per_source: float = setting(
        50.0, doc="Sustained rate (per second) of unproductive SIP messages accepted from one "
        "address: challenges never answered, malformed or failed requests, stray responses. "
        "Honest traffic (a request that authenticates, a reply to our request, a request in "
        "a known call) gives back what it cost, so many handsets behind one address (a NAT, "
        "an SBC, a DECT base) are not held back.", check=at_least(1))
    burst_per_source: float = setting(
        2000.0, doc="Unproductive messages one address may send in a burst above "
        "rate_per_source; at least the number of handsets that share one address and "
        "register at the same moment.", check=at_least(1))
    auth_failures_per_source: int = setting(
        10, doc="Wrong passwords for one user name from one address within "
        "auth_failure_window_s that lock that user name out from that address (the other "
        "handsets behind the address carry on); as many malformed credentials lock the "
        "whole address out.", check=between(1, 10000))
    auth_users_per_source: int = setting(
        5, doc="Different user names failing authentication from one address within "
        "auth_failure_window_s that lock the whole address out (an enumeration or a "
        "password spray).", check=between(2, 10000))
    auth_failures_per_user: int = setting(
        30, doc="Wrong passwords for one user name from any addresses within "
        "auth_failure_window_s that put the user under guard for lockout_s: only its own "
        "devices (an address it is registered from, or the Call-ID or instance id of a "
        "recent registration, which a phone keeps when its address changes) may then "
        "authenticate; malformed credentials never count against a user.",
        check=between(1, 10000))
    auth_failure_window_s: float = setting(60.0, doc="Window for counting failures.",
                                           check=between(1, 86400))
    lockout_s: float = setting(300.0, doc="How long a lockout lasts.", check=between(1, 86400))
    max_message_bytes: int = setting(
        65535, doc="Largest SIP message accepted; larger ones get 513 or are dropped.",
        check=between(1024, 1048576))
    max_connections: int = setting(1024, doc="Most TCP/TLS connections at once.",
                                   check=between(1, 100000))
    max_connections_per_source: int = setting(
        16, doc="Most TCP/TLS connections from one address.", check=between(1, 10000))
    connection_idle_timeout_s: float = setting(
        900.0, doc="A TCP/TLS connection silent for this long is closed (handsets send "
        "keep-alives or re-register well within it).", check=between(10, 86400))
    max_write_buffer_bytes: int = setting(
        262144, doc="Unsent bytes allowed to pile up for one connection before it is closed.",
        check=between(4096, 67108864))
    udp_receive_buffer_bytes: int = setting(
        4194304, doc="Kernel receive buffer of the UDP socket: room for a whole site "
        "re-registering at once.", check=between(65536, 268435456))

    def validate(self):
        if self.mode == "in-path" and not self.cloud_edges:
            yield "cloud_edges", "in-path mode relays to the cloud: list its SIP edges"
        if self.fast_fail and not (self.fast_fail_targets or self.cloud_edges):
            yield "fast_fail_targets", "fast_fail needs the cloud's SIP addresses"
        if "tls" in self.transports and (self.tls_certificate is None
                                         or self.tls_private_key is None):
            yield "transports", "tls needs tls_certificate and tls_private_key"
        if self.listen_address in ("0.0.0.0", "::") and not self.advertised_address:
            yield "advertised_address", ("is required when listen_address is a wildcard: give "
                                         "the LAN address handsets reach the appliance at")
        if self.min_expires_s > self.outage_max_expires_s:
            yield "min_expires_s", "must not exceed outage_max_expires_s"
        if not self.transports and self.enabled:
            yield "transports", "must list at least one transport"



