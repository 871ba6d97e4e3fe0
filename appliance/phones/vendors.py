"""Desk-phone families: how to tell them from their User-Agent, their documented failover
defaults, and the provisioning keys that tune what 'jbc phones --readiness' flags.

Each key carries, in a comment next to it, the vendor document it was read in. Where a default
below was not stated in a vendor document we could read, the comment says "assumed" and the
prediction says so too ('basis'). Keys use account/line 1; a phone's other lines have the same
keys with their own index.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FailoverDefaults:
    """Factory failover timers of a family (see appliance/phones/readiness.py for their use)."""

    refresh_margin_s: float
    """A registration is refreshed this long before it expires."""
    attempt_timeout_s: float
    """An unanswered REGISTER counts as failed after this long (RFC 3261 Timer F: 32 s)."""
    failover_after: int
    """Failed attempts in a row before the backup server is used."""
    retry_interval_s: float
    """Wait between failed attempts on the same server."""
    primary_probe_s: float
    """While on the backup, the primary is tried again this often (0: only at refresh)."""
    documented: bool = True


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    key: str
    value: Callable[[Recommendation], str]
    why: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """The values the appliance wants a phone to use (from jbcd's own settings)."""

    expires_s: int
    appliance: str
    """host[:port] of the appliance as the phones reach it."""
    keepalive_s: int = 30
    failback_probe_s: int = 60


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Vendor:
    name: str
    label: str
    pattern: re.Pattern
    defaults: FailoverDefaults
    backup_registrar: tuple[Setting, ...]
    """What to set when the appliance is the phone's backup (secondary) server."""
    in_path: tuple[Setting, ...]
    """What to set when the appliance is the phone's outbound proxy (in-path mode)."""

    def model(self, user_agent: str) -> str:
        match = self.pattern.search(user_agent)
        return (match.group("model") if match and match.groupdict().get("model")
                else self.label)


def _expires(r: Recommendation) -> str:
    return str(r.expires_s)


GENERIC_DEFAULTS = FailoverDefaults(
    # assumed: RFC 3261 timers and the common desk-phone pattern (3 tries, 30 s apart, refresh
    # 60 s before expiry); the hardware bench's "factory" profile uses the same figures.
    refresh_margin_s=60, attempt_timeout_s=32, failover_after=3, retry_interval_s=30,
    primary_probe_s=0, documented=False)

YEALINK = Vendor(
    name="yealink", label="Yealink",
    pattern=re.compile(r"Yealink\s+(?P<model>[A-Za-z0-9-]+)", re.I),
    # Yealink SIP-T2/T3/T4/T5/CP920 IP Phones Administrator's Guide, "Server Redundancy":
    # account.X.sip_server.Y.expires default 3600, account.X.sip_server.Y.retry_counts
    # default 3; Yealink SIP-T4X Auto Provisioning Guide: account.X.fallback.timeout default
    # 120 (successive registration); reg_fail_retry_interval 30 s as the bench's profile reads
    # it. The refresh margin is assumed (60 s).
    defaults=FailoverDefaults(refresh_margin_s=60, attempt_timeout_s=32, failover_after=3,
                              retry_interval_s=30, primary_probe_s=120),
    backup_registrar=(
        # Administrator's Guide, account.X.sip_server.Y.expires ("registration expiration
        # time (in seconds) of SIP server Y", 30 to 2147483647).
        Setting(key="account.1.sip_server.1.expires", value=_expires,
                why="the phone notices a dead cloud only when this registration is refreshed"),
        # Administrator's Guide, account.X.sip_server.Y.retry_counts ("moves to the next
        # available server after" this many failed attempts; 0 to 20).
        Setting(key="account.1.sip_server.1.retry_counts", value=lambda r: "1",
                why="go to the backup after the first unanswered attempt, not the third"),
        # Administrator's Guide, account.X.sip_server.Y.address / .port: server 2 is the
        # backup in successive registration.
        Setting(key="account.1.sip_server.2.address", value=lambda r: r.appliance,
                why="the appliance as the backup (second) server"),
        # SIP-T4X Auto Provisioning Guide, account.X.fallback.timeout ("time interval (in
        # seconds) for the phone to detect whether the working server is available"; 10 to
        # 2147483647, default 120).
        Setting(key="account.1.fallback.timeout", value=lambda r: str(r.failback_probe_s),
                why="try the cloud again sooner after an outage ends"),
    ),
    in_path=(
        # Yealink auto-provisioning template, "Account 1 Basic Settings":
        # account.1.outbound_proxy_enable (0 disabled, 1 enabled) and account.1.outbound_host.
        Setting(key="account.1.outbound_proxy_enable", value=lambda r: "1",
                why="send all SIP through the appliance"),
        Setting(key="account.1.outbound_host", value=lambda r: r.appliance,
                why="the appliance as outbound proxy"),
    ),
)

POLY = Vendor(
    name="poly", label="Poly",
    pattern=re.compile(r"Polycom(?:VVX|SoundPointIP|SoundStationIP)?-?(?P<model>[A-Za-z0-9_]+)?"
                       r"|\bPoly\b", re.I),
    # Polycom UC Software Administrator's Guide, Registration Server Parameters:
    # reg.x.server.y.expires default 3600, reg.x.server.y.expires.overlap default 60,
    # reg.x.server.y.retryMaxCount default 3 ("If set to 0, 3 is used"),
    # reg.x.server.y.retryTimeOut default 0 (RFC 3261 timers), registerRetry.baseTimeOut 60.
    defaults=FailoverDefaults(refresh_margin_s=60, attempt_timeout_s=32, failover_after=3,
                              retry_interval_s=60, primary_probe_s=0),
    backup_registrar=(
        # reg.x.server.y.expires: "The phone's requested registration period in seconds".
        Setting(key="reg.1.server.1.expires", value=_expires,
                why="the phone notices a dead cloud only when this registration is refreshed"),
        # reg.x.server.y.expires.overlap (5 to 65535, default 60).
        Setting(key="reg.1.server.1.expires.overlap", value=lambda r: "10",
                why="refresh close to expiry, so a short expiry keeps few REGISTERs"),
        # reg.x.server.y.retryMaxCount (0 to 20; "number of retries that will be attempted
        # before moving to the next available server").
        Setting(key="reg.1.server.1.retryMaxCount", value=lambda r: "1",
                why="go to the backup after the first failed attempt"),
        # reg.x.server.y.address: server 2 is the next available server.
        Setting(key="reg.1.server.2.address", value=lambda r: r.appliance,
                why="the appliance as the second server"),
        # reg.x.server.y.failOver.failBack.mode (newRequests, DNSTTL, registration, duration)
        # and .failOver.failBack.timeout (0, 60 to 65535; default 3600).
        Setting(key="reg.1.server.1.failOver.failBack.mode", value=lambda r: "duration",
                why="retry the cloud on a timer after failover"),
        Setting(key="reg.1.server.1.failOver.failBack.timeout",
                value=lambda r: str(max(60, r.failback_probe_s)),
                why="how soon the cloud is tried again (60 s is the minimum)"),
    ),
    in_path=(
        # reg.x.outboundProxy.address: "The IP address or hostname of the SIP server to which
        # the phone sends all requests".
        Setting(key="reg.1.outboundProxy.address", value=lambda r: r.appliance,
                why="the appliance as outbound proxy"),
    ),
)

GRANDSTREAM = Vendor(
    name="grandstream", label="Grandstream",
    pattern=re.compile(r"Grandstream\s+(?P<model>[A-Za-z0-9-]+)", re.I),
    # Grandstream configuration template (GXP17xx firmware 1.0.1.133, Account 1): P32 Register
    # Expiration in minutes (default 60), P2330 Register Before Expiration (default 0 s), P138
    # SIP Registration Failure Retry Wait Time (default 20 s). How many failed attempts move
    # the phone to P2312 is not stated there: assumed 3 with RFC 3261 timers.
    defaults=FailoverDefaults(refresh_margin_s=0, attempt_timeout_s=32, failover_after=3,
                              retry_interval_s=20, primary_probe_s=0, documented=False),
    backup_registrar=(
        # P32: Register Expiration (in minutes), 1 - 64800.
        Setting(key="P32", value=lambda r: str(max(1, round(r.expires_s / 60))),
                why="registration expiry in minutes: the phone notices a dead cloud only "
                "when it refreshes"),
        # P2312: Secondary SIP Server.
        Setting(key="P2312", value=lambda r: r.appliance,
                why="the appliance as the secondary SIP server"),
        # P2397 / P2398: Enable OPTIONS Keep Alive (default 0) / interval (default 30 s).
        Setting(key="P2397", value=lambda r: "1",
                why="OPTIONS keep-alive: the phone sees a dead server between refreshes"),
        Setting(key="P2398", value=lambda r: str(r.keepalive_s),
                why="OPTIONS keep-alive interval in seconds"),
    ),
    in_path=(
        # P48: Outbound Proxy; P2305: Outbound Proxy Mode (0 in route, 1 not in route,
        # 2 always send to).
        Setting(key="P48", value=lambda r: r.appliance, why="the appliance as outbound proxy"),
        Setting(key="P2305", value=lambda r: "2", why="always send to the outbound proxy"),
        Setting(key="P2397", value=lambda r: "1", why="OPTIONS keep-alive on the flow"),
    ),
)

SNOM = Vendor(
    name="snom", label="Snom",
    pattern=re.compile(r"snom(?P<model>[A-Za-z]?\d+[A-Za-z]?)", re.I),
    # snom, "Configuring snom phones for Mass Deployment" (FAQ), SIP line settings:
    # user_host<n> (the registrar), user_outbound<n> (outbound proxy), user_expiry<n>
    # (registration expiry). Failover timers are not stated there: assumed RFC 3261 timers.
    defaults=dataclasses.replace(GENERIC_DEFAULTS),
    backup_registrar=(
        Setting(key="user_expiry1", value=_expires,
                why="the phone notices a dead cloud only when this registration is refreshed"),
    ),
    in_path=(
        Setting(key="user_outbound1", value=lambda r: r.appliance,
                why="the appliance as outbound proxy"),
    ),
)

CISCO_MPP = Vendor(
    name="cisco-mpp", label="Cisco MPP",
    pattern=re.compile(r"Cisco[-/](?P<model>(?:CP-?)?[0-9]{4}[A-Za-z0-9.-]*)", re.I),
    # Cisco IP Phone 6800/7800/8800 Series Multiplatform Phones Administration Guide, "SIP
    # Proxy Redundancy": failover when a request gets no response (SIP_Timer_F; 16 s in the
    # guide's example), failback when the registration expires or Proxy_Fallback_Intvl_n_
    # fires (3600 in its examples); Register_Expires_n_ 3600 in its examples.
    defaults=FailoverDefaults(refresh_margin_s=0, attempt_timeout_s=16, failover_after=1,
                              retry_interval_s=0, primary_probe_s=3600),
    backup_registrar=(
        # Register_Expires_n_: the registration period.
        Setting(key="Register_Expires_1_", value=_expires,
                why="the phone notices a dead cloud only when this registration is refreshed"),
        # "Dual Registration": Alternate_Proxy_n_ with Dual_Registration_n_ = Yes (UDP only).
        Setting(key="Alternate_Proxy_1_", value=lambda r: r.appliance,
                why="the appliance as the alternate proxy"),
        Setting(key="Dual_Registration_1_", value=lambda r: "Yes",
                why="stay registered to both, so calls fail over after one INVITE timeout"),
        # Proxy_Fallback_Intvl_n_: failback to the primary after this many seconds.
        Setting(key="Proxy_Fallback_Intvl_1_", value=lambda r: str(r.failback_probe_s),
                why="return to the cloud sooner after an outage"),
    ),
    in_path=(
        # Outbound_Proxy_n_ / Use_Outbound_Proxy_n_ (line settings of the same guide).
        Setting(key="Outbound_Proxy_1_", value=lambda r: r.appliance,
                why="the appliance as outbound proxy"),
        Setting(key="Use_Outbound_Proxy_1_", value=lambda r: "Yes",
                why="send all SIP through the outbound proxy"),
    ),
)

VENDORS = (YEALINK, POLY, GRANDSTREAM, SNOM, CISCO_MPP)


def identify(user_agent: str) -> Vendor | None:
    for vendor in VENDORS:
        if vendor.pattern.search(user_agent or ""):
            return vendor
    return None
