"""The [sync] section: how the appliance reaches the cloud, and what it trusts there."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import pathlib
import urllib.parse

from appliance.config.schema import absolute_path, between, setting


def _cloud_url(value: str) -> str | None:
    if not value:
        return None
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "https":
        return f"{value!r} must start with https:// (all cloud traffic is TLS)"
    if not parsed.hostname:
        return f"{value!r} has no host; write it as https://HOST:PORT"
    if parsed.query or parsed.fragment or parsed.username:
        return f"{value!r} must be a plain https://HOST[:PORT][/PATH] URL"
    try:
        parsed.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"{value!r} has an invalid port"
    return None


def _absolute_or_none(value: pathlib.Path | None) -> str | None:
    return None if value is None else absolute_path(value)


def _signing_key(value: str) -> str | None:
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "must be the base64 of a raw 32-byte Ed25519 public key"
    if len(raw) != 32:
        return f"decodes to {len(raw)} bytes; a raw Ed25519 public key has 32"
    return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SyncConfig:
    cloud_url: str = setting(
        "",
        doc="The cloud API base URL. Empty: cloud sync is not configured and the appliance "
        "runs on its local directory file only.",
        check=_cloud_url,
        example="https://203.0.113.10:8443",
    )
    server_name: str = setting(
        "",
        doc="The name the cloud's TLS certificate must carry. Empty: the host of cloud_url "
        "(an IP address is then checked against the certificate's IP entries).",
        example="api.cloud.example",
    )
    ca_file: pathlib.Path | None = setting(
        None,
        doc="The cloud's CA certificate (PEM), pinned: only servers it signed are trusted. "
        "The system trust store is never used for the cloud.",
        check=_absolute_or_none,
        example="/etc/jbc/cloud-ca.pem",
    )
    signing_public_key: str = setting(
        "",
        doc="The cloud's config-bundle signing key: base64 of the raw 32-byte Ed25519 public "
        "key. Bundles not signed by it are refused.",
        check=_signing_key,
        example="11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    )
    enrollment_token: str = setting(
        "",
        doc="One-time token from the cloud portal, used once at first start to obtain the "
        "device certificate. Not needed after enrolment.",
    )
    poll_interval_s: float = setting(
        300.0,
        doc="While online, how often to ask the cloud for a newer config bundle (conditional "
        "request: an unchanged bundle costs one small round trip).",
        check=between(10, 86400),
    )
    heartbeat_interval_s: float = setting(
        60.0, doc="How often the appliance tells the cloud it is alive and in which state.",
        check=between(5, 3600),
    )
    request_timeout_s: float = setting(
        15.0, doc="Longest wait for one cloud request (connect, TLS, response).",
        check=between(1, 300),
    )
    retry_min_s: float = setting(
        2.0, doc="First retry delay after a failed exchange; doubles each time, with jitter.",
        check=between(0.05, 600),
    )
    retry_max_s: float = setting(
        300.0, doc="Longest retry delay.", check=between(1, 3600),
    )
    upload_batch: int = setting(
        500, doc="Most events or call records sent in one upload request.",
        check=between(1, 5000),
    )
    renew_before_s: float = setting(
        30 * 86400.0,
        doc="Renew the device certificate when it expires within this long.",
        check=between(60, 365 * 86400),
    )
    backup_interface: str = setting(
        "",
        doc="A backup data uplink (an LTE data interface such as wwan0). During an outage the "
        "heartbeat announcing failover leaves through it, over a policy route, so the cloud "
        "learns of the failover even though the WAN is down. Empty: no backup uplink.",
        example="wwan0",
    )
    backup_gateway: str = setting(
        "",
        doc="Next hop on the backup uplink; empty for a point-to-point link (routes via the "
        "interface itself).",
        example="10.64.64.64",
    )
    backup_route_table: int = setting(
        201, doc="Routing table number used for the backup-uplink policy route.",
        check=between(1, 252),
    )

    @property
    def configured(self) -> bool:
        return bool(self.cloud_url)

    def validate(self):
        if not self.cloud_url:
            return
        if self.ca_file is None:
            yield "ca_file", "is required when cloud_url is set (the cloud CA is pinned)"
        if not self.signing_public_key:
            yield "signing_public_key", "is required when cloud_url is set"
        if self.retry_max_s < self.retry_min_s:
            yield "retry_max_s", "must not be smaller than retry_min_s"
