"""Why the network ended a call: ``AT+CEER`` read and mapped the same way for every vendor.

Result codes alone disagree between vendors: the same network reject reached the caller as
404 through one module and 480 through the other, because one releases the call before
alerting with ``NO CARRIER`` and the other after alerting with ``VOICE CALL: END`` (finding 8).
``AT+CEER`` (3GPP TS 27.007 6.10) reports the release cause, and that cause, not the path
the URCs took, decides the :class:`~drivers.trunk.EndCause`.

The report's format is the vendor's. What we parse, and what we assumed where the reference
transcripts are silent:

* a number: the 3GPP TS 24.008 / ITU-T Q.850 cause, as in ``+CEER: "CC setup error",1,
  "Unassigned (unallocated) number"`` or ``+CEER: 17`` (Quectel-style: category, cause
  number, text; we take the first integer field);
* text only: the cause's name, as in ``+CEER: Call rejected`` or ``+CEER: User busy``
  (SIMCom-style), matched against the names below without regard to case or punctuation;
* anything else (``+CEER: No report available``): no cause, the result code's guess stands.
"""

from __future__ import annotations

import re

from drivers.trunk import EndCause

from .parse import fields

CAUSE_NAMES: dict[int, str] = {
    1: "unassigned (unallocated) number",
    3: "no route to destination",
    6: "channel unacceptable",
    8: "operator determined barring",
    16: "normal call clearing",
    17: "user busy",
    18: "no user responding",
    19: "user alerting, no answer",
    21: "call rejected",
    22: "number changed",
    25: "pre-emption",
    26: "non selected user clearing",
    27: "destination out of order",
    28: "invalid number format (incomplete number)",
    29: "facility rejected",
    31: "normal, unspecified",
    34: "no circuit/channel available",
    38: "network out of order",
    41: "temporary failure",
    42: "switching equipment congestion",
    44: "requested circuit/channel not available",
    47: "resources unavailable, unspecified",
    49: "quality of service unavailable",
    50: "requested facility not subscribed",
    55: "incoming calls barred within the cug",
    57: "bearer capability not authorized",
    58: "bearer capability not presently available",
    63: "service or option not available, unspecified",
    65: "bearer service not implemented",
    68: "acm equal to or greater than acmmax",
    69: "requested facility not implemented",
    79: "service or option not implemented, unspecified",
    88: "incompatible destination",
    102: "recovery on timer expiry",
    111: "protocol error, unspecified",
    127: "interworking, unspecified",
}

_BY_NAME = {re.sub(r"[^a-z0-9]", "", name): code for code, name in CAUSE_NAMES.items()}
_BY_NAME.update({
    "unassignednumber": 1, "unallocatednumber": 1, "normalclearing": 16,
    "noanswer": 19, "userbusy": 17, "callrejected": 21, "invalidnumberformat": 28,
    "incompletenumber": 28, "nocircuitchannelavailable": 34, "congestion": 42,
    "normalunspecified": 31, "temporaryfailure": 41,
})

REJECTED = {1, 3, 6, 8, 21, 22, 28, 29, 50, 55, 57, 65, 69, 88}
NO_SERVICE = {27, 34, 38, 41, 42, 44, 47, 49, 58, 63, 68, 79, 102, 111, 127}


def parse_ceer(payload: str) -> int | None:
    """The release cause number in a ``+CEER:`` payload, or None."""
    parts = fields(payload)
    for part in parts:
        if part.isdigit():
            return int(part)
    for part in reversed(parts):
        key = re.sub(r"[^a-z0-9]", "", part.lower())
        if key in _BY_NAME:
            return _BY_NAME[key]
    return None


def cause_for(code: int, *, alerted: bool) -> EndCause | None:
    """The end cause a release cause means for a call that was never answered (None: the
    cause says nothing the result code did not)."""
    if code in (16, 31):
        return EndCause.NO_ANSWER if alerted else EndCause.REJECTED
    if code == 17:
        return EndCause.BUSY
    if code in (18, 19):
        return EndCause.NO_ANSWER
    if code in REJECTED:
        return EndCause.REJECTED
    if code in NO_SERVICE:
        return EndCause.NO_SERVICE
    return None


def describe(code: int) -> str:
    name = CAUSE_NAMES.get(code)
    return f"cause {code} ({name})" if name else f"cause {code}"
