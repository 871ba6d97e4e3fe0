"""The gateway's one exception tree: everything the package raises on purpose is a
:class:`GatewayError`, so a caller catches one thing."""

from __future__ import annotations


class GatewayError(Exception):
    """Something the gateway could not do; the message says what and what to do next."""
