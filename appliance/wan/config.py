"""The [wan] section: which interface is the WAN, what to probe, and how fast to decide.

The defaults are tuned for the appliance's goals (see ``hw-testbench/bench_wan.py``): a dead link
is seen within a second through netlink, a silent blackhole within about 2.5 s
(``interval_s + (fall_rounds - 1) * interval_s + round_timeout_s``), failback happens
``hold_down_s`` plus about a second after the cloud returns, and 20 % random packet loss never
causes a failover. Change them only with those trade-offs in mind.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
from typing import Literal

from appliance.config.schema import at_least, between, non_empty, setting

TargetKind = Literal["icmp", "tls", "sip-options", "https"]
SipTransport = Literal["udp", "tcp", "tls"]

DEFAULT_EVERY_ROUNDS = {"icmp": 1, "sip-options": 1, "tls": 4, "https": 4}
"""Probe cadence per kind when a target does not say: cheap datagram probes every round,
connection-based ones every 4th round (a TCP+TLS handshake every 2 s is plenty)."""


def _ip_address_or_empty(value: str) -> str | None:
    if value == "":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return (f"{value!r} is not an IP address; give an IPv4 or IPv6 literal (names go in "
                "server_name and are resolved through wan.resolvers)")
    return None


def _ip_addresses(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return f"{value!r} is not an IP address; resolvers are given as IPv4 or IPv6 literals"
    return None


def _readable_file_or_none(value: pathlib.Path | None) -> str | None:
    if value is None:
        return None
    if not value.is_absolute():
        return f"{str(value)!r} is not an absolute path; give the full path starting with /"
    if not value.is_file():
        return f"{value} does not exist or is not a file (the cloud's CA certificates, PEM)"
    return None


def _interface_name(value: str) -> str | None:
    if len(value) > 15 or any(c in value for c in "/ \t:"):
        return f"{value!r} is not a network interface name (at most 15 characters, no '/', ':'" \
            " or spaces); see 'ip link'"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WanTargetConfig:
    name: str = setting(doc="A short unique name for this target, shown by 'jbc wan'.",
                        check=non_empty, example="us-east-sip")
    role: Literal["cloud", "anchor"] = setting(
        doc="'cloud': an edge of the cloud phone system (grouped by region; the cloud is down "
        "only when every region is). 'anchor': an independent internet host that tells an ISP "
        "outage from a cloud outage.",
        example="cloud",
    )
    region: str = setting(
        "", doc="The cloud region (datacenter) this target belongs to. Required for cloud "
        "targets; anchors leave it empty.", example="us-east")
    kind: TargetKind = setting(
        doc="How to probe: 'icmp' echo, 'tls' (TCP connect plus a verified TLS handshake), "
        "'sip-options' (a SIP OPTIONS request; any final answer means reachable, 503 means the "
        "cloud is degraded) or 'https' (GET of a health URL; 2xx is healthy, 503 degraded).",
        example="sip-options",
    )
    address: str = setting(
        "", doc="The target's IP address. May be left empty for cloud targets that have a "
        "server_name: the address then comes from resolving that name through wan.resolvers.",
        check=_ip_address_or_empty, example="203.0.113.10")
    port: int = setting(
        0, doc="TCP/UDP port; 0 picks the usual one (tls/https 443, sip-options 5060, or 5061 "
        "over TLS).", check=between(0, 65535))
    transport: SipTransport = setting("udp", doc="For sip-options: 'udp', 'tcp' or 'tls'.")
    server_name: str = setting(
        "", doc="The name the cloud's certificate must carry (TLS, HTTPS, SIP over TLS); also "
        "the host of the SIP request URI and the HTTP Host header.",
        example="sip.us-east.example.net")
    path: str = setting("/health", doc="For https: the path of the health URL.")
    every_rounds: int = setting(
        0, doc="Probe this target every Nth round; 0 picks the default for its kind (icmp and "
        "sip-options over UDP every round, connection-based probes every 4th).",
        check=between(0, 120))

    def validate(self):
        if self.role == "cloud" and not self.region:
            yield "region", "cloud targets need a region (the cloud is down only when every " \
                "region is unreachable)"
        if self.role == "anchor" and self.region:
            yield "region", "anchors belong to no region; leave region empty"
        if not self.address and not self.server_name:
            yield "address", "give an address, or a server_name to resolve through wan.resolvers"
        if not self.address and self.role == "anchor":
            yield "address", "anchors need an address (they must not depend on DNS)"
        if self.uses_tls and not self.server_name:
            yield "server_name", "TLS probes verify the certificate against server_name; " \
                "set it to the name the cloud's certificate carries"
        if self.kind != "https" and self.path != "/health":
            yield "path", "only https targets have a path"
        if not self.path.startswith("/"):
            yield "path", f"{self.path!r} must start with '/'"

    @property
    def uses_tls(self) -> bool:
        return self.kind in ("tls", "https") or (
            self.kind == "sip-options" and self.transport == "tls")

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        if self.kind == "sip-options":
            return 5061 if self.transport == "tls" else 5060
        return 443

    @property
    def effective_every_rounds(self) -> int:
        if self.every_rounds:
            return self.every_rounds
        if self.kind == "sip-options" and self.transport != "udp":
            return DEFAULT_EVERY_ROUNDS["tls"]
        return DEFAULT_EVERY_ROUNDS[self.kind]

    @property
    def group(self) -> str:
        """The independent group this target belongs to: its cloud region, or itself."""
        return f"region:{self.region}" if self.role == "cloud" else f"anchor:{self.name}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WanConfig:
    interface: str = setting(
        "", doc="The WAN network interface (for example 'eth0'). Probes leave only through it, "
        "bound to the device and its address, so a backup uplink can never make a dead WAN look "
        "alive. Empty: the WAN monitor is not configured and says so; no outage can be detected.",
        check=_interface_name, example="eth0")
    require_default_route: bool = setting(
        True, doc="Count the loss of the WAN's default route as an immediate outage, like loss "
        "of carrier. Turn off only where the WAN has no default route by design.")
    resolvers: tuple[str, ...] = setting(
        (), doc="DNS resolvers (IP addresses) the cloud's names are resolved against, through "
        "the WAN interface and never through the system's resolver or cache. Each is probed; "
        "when all fail while the cloud answers by address, the verdict is 'DNS only'.",
        check=_ip_addresses, example=["192.0.2.53"])
    dns_names: tuple[str, ...] = setting(
        (), doc="Names each resolver is asked for; empty means the server_name of every cloud "
        "target.", example=["sip.us-east.example.net"])
    dns_port: int = setting(53, doc="The UDP port the resolvers answer on.",
                            check=between(1, 65535))
    dns_every_rounds: int = setting(4, doc="Probe the resolvers every Nth round.",
                                    check=between(1, 120))
    ca_file: pathlib.Path | None = setting(
        None, doc="CA certificates (PEM) that sign the cloud's TLS certificates; empty uses the "
        "system's CA store.", check=_readable_file_or_none, example="/etc/jbc/cloud-ca.pem")
    interval_s: float = setting(
        0.5, doc="A probe round starts this often; every target is probed in each of its rounds.",
        check=between(0.05, 60))
    round_timeout_s: float = setting(
        1.0, doc="A probe not answered within this long after its round started has failed.",
        check=between(0.05, 60))
    retry_interval_s: float = setting(
        0.25, doc="Datagram probes (ICMP, SIP over UDP, DNS) resend their request this often "
        "until answered or timed out, so that one lost packet does not fail a round.",
        check=between(0.01, 60))
    fall_rounds: int = setting(
        3, doc="Outage after this many consecutive rounds in which no cloud region answered "
        "(loss of carrier or of the default route is an outage at once).", check=between(1, 100))
    rise_rounds: int = setting(
        2, doc="After an outage, this many consecutive good rounds, answered over at least "
        "rise_rounds - 1 intervals, start the hold-down (state 'recovering').",
        check=between(1, 100))
    hold_down_s: float = setting(
        10.0, doc="The cloud must stay reachable this long in 'recovering' before phones are "
        "handed back (state 'online'). Grows while the link flaps (see flap_*).",
        check=between(0, 3600))
    max_hold_down_s: float = setting(
        300.0, doc="The hold-down never grows beyond this.", check=between(0, 86400))
    flap_half_life_s: float = setting(
        60.0, doc="Flap damping: each outage adds 1 to a penalty that halves every this many "
        "seconds; the hold-down is hold_down_s times the penalty (at least 1).",
        check=between(1, 86400))
    flap_suppress_above: float = setting(
        3.0, doc="While the flap penalty is above this, a flapping link stays in outage even "
        "when the cloud answers again, until the penalty has decayed.", check=at_least(1))
    window: int = setting(
        8, doc="Per-target sliding window: the last N results of each target are kept for its "
        "loss and RTT figures and its health.", check=between(1, 1000))
    window_quorum: int = setting(
        5, doc="A target is healthy while at least this many of its last 'window' probes "
        "succeeded (k of n); an unhealthy target makes the state 'degraded'.",
        check=between(1, 1000))
    degraded_clear_s: float = setting(
        60.0, doc="A link that went from 'online' to 'degraded' is 'online' again only after "
        "this long without any problem, so a lossy link whose targets hover at the quorum "
        "does not chatter between the two.", check=between(0, 3600))
    quality_window_s: float = setting(
        8.0, doc="Voice quality (jbc wan's MOS, brownouts) is estimated from the ICMP and "
        "SIP-over-UDP probe packets of this many recent seconds: loss per packet (every "
        "retry counts), jitter, latency, turned into an ITU-T G.107 E-model MOS.",
        check=between(2, 600))
    jitter_buffer_max_ms: float = setting(
        150.0, doc="The deepest jitter buffer the estimate assumes the phones have (twice the "
        "jitter, within 20 ms and this); packets later than it count as lost.",
        check=between(20, 1000))
    brownout_mos: float = setting(
        3.6, doc="A link whose estimated MOS is below this is in a brownout: 'degraded', with "
        "the figures as its cause (3.6 is where many users are dissatisfied, R 70).",
        check=between(1, 4.5))
    brownout_loss_pct: float = setting(
        12.0, doc="A link losing this share of its probe packets (round trip) is in a brownout "
        "whatever the MOS says. 12 % (about 6 % each way, MOS 3.75) rather than the 15 % "
        "where a loss-only MOS reaches 3.6: an 8 s window holds about 100 packets, and at "
        "20 % loss their count wanders by +-4 points; this margin has a 20 % link reported "
        "within 10 s while a 2 % link never is.", check=between(1, 100))
    brownout_policy: Literal["report", "local-calls"] = setting(
        "report", doc="What a sustained brownout does: 'report' (degraded, journalled, shown "
        "in 'jbc wan'), or 'local-calls': after brownout_sustained_s new calls are served as "
        "in an outage (in in-path mode: locally and outside calls over the trunks) while the "
        "cloud is still reachable; registrations and calls in progress stay with the cloud.")
    brownout_sustained_s: float = setting(
        30.0, doc="How long a brownout lasts before brownout_policy = 'local-calls' acts.",
        check=between(0, 3600))
    targets: tuple[WanTargetConfig, ...] = setting(
        (), doc="What to probe: the cloud's edges in each region, and internet anchors. Without "
        "targets the WAN monitor is not configured and says so.")

    def validate(self):
        if self.window_quorum > self.window:
            yield "window_quorum", f"{self.window_quorum} is more than window ({self.window})"
        if self.max_hold_down_s < self.hold_down_s:
            yield "max_hold_down_s", "must not be less than hold_down_s"
        if self.retry_interval_s > self.round_timeout_s:
            yield "retry_interval_s", "must not be more than round_timeout_s"
        names: set[str] = set()
        for index, target in enumerate(self.targets):
            if target.name in names:
                yield f"targets[{index}].name", f"{target.name!r} is used by two targets"
            names.add(target.name)
            if target.server_name and not target.address and not self.resolvers:
                yield f"targets[{index}].address", "no address and no wan.resolvers to " \
                    f"resolve {target.server_name!r} with; give one of them"
        if self.targets and not any(t.role == "cloud" for t in self.targets):
            yield "targets", "at least one target must have role = 'cloud'"

    @property
    def configured(self) -> bool:
        return bool(self.interface and self.targets)

    @property
    def effective_dns_names(self) -> tuple[str, ...]:
        if self.dns_names:
            return self.dns_names
        names: list[str] = []
        for target in self.targets:
            if target.role == "cloud" and target.server_name and target.server_name not in names:
                names.append(target.server_name)
        return tuple(names)

    def not_configured_reason(self) -> str:
        missing = [what for what, ok in (("wan.interface", self.interface),
                                         ("wan.targets", self.targets)) if not ok]
        return f"WAN not configured: set {' and '.join(missing)} in appliance.toml"
