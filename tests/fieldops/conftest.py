"""Shared pieces of the field-operations tests."""

from __future__ import annotations

from jbcbench.fake_cloud import FakeCloud


def cloud_site(cloud: FakeCloud, token: str, *, site_name: str, extra: str = "") -> str:
    """appliance.toml for a site with the local registrar on loopback UDP and cloud sync
    against ``cloud``, enrolling with ``token``; ``extra`` appends more sections."""
    keys = cloud.keys
    return f"""
site_name = "{site_name}"
[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = 0
transports = ["udp"]
[sync]
cloud_url = "{cloud.url}"
ca_file = "{keys.ca_file}"
signing_public_key = "{keys.signing_public_key_b64}"
enrollment_token = "{token}"
retry_min_s = 0.2
retry_max_s = 1.0
{extra}
"""
