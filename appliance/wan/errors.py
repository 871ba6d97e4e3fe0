"""The WAN package's one error tree.

:class:`WanError` is the root. :class:`InvalidInput` (an input the failover state machine's
table does not allow: a bug, or 'failover is already forced') comes from the decision core;
:class:`ProbeAnswerError` (an answer a probe cannot use: a malformed DNS response, a SIP
message that is not a response to our OPTIONS) from the probe codecs, which turn it into a
probe result and never let it reach the monitor.
"""

from __future__ import annotations


class WanError(Exception):
    """Base of every error raised by ``appliance.wan``."""


class InvalidInput(WanError):
    """An input the state machine's table does not allow in the current state."""


class ProbeAnswerError(WanError):
    """A probe's answer cannot be used (malformed, or not an answer to our question)."""
