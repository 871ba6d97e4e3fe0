"""AT final result codes (V.250 and 3GPP TS 27.007) and the errors they turn into.

A *final result* ends a command's response: ``OK``, ``ERROR``, ``+CME ERROR: <n|text>``,
``+CMS ERROR: <n|text>``, the call-progress results (``NO CARRIER``, ``BUSY``, ``NO ANSWER``,
``NO DIALTONE``), ``CONNECT [<text>]`` and the voice modems' ``VCON``. With ``AT+CMEE=1`` a
+CME error carries a number; with ``AT+CMEE=2`` it carries the text instead, and the same
modem can switch between the two, so both forms map to one :class:`FinalResult`.
"""

from __future__ import annotations

import dataclasses
import enum

from drivers.errors import DriverError


class ResultKind(enum.StrEnum):
    OK = "OK"
    CONNECT = "CONNECT"
    VCON = "VCON"
    ERROR = "ERROR"
    CME_ERROR = "+CME ERROR"
    CMS_ERROR = "+CMS ERROR"
    NO_CARRIER = "NO CARRIER"
    BUSY = "BUSY"
    NO_ANSWER = "NO ANSWER"
    NO_DIALTONE = "NO DIALTONE"

    @property
    def success(self) -> bool:
        return self in (ResultKind.OK, ResultKind.CONNECT, ResultKind.VCON)

    @property
    def call_progress(self) -> bool:
        """Results that are final only for call-control commands, and URCs otherwise."""
        return self in (ResultKind.NO_CARRIER, ResultKind.BUSY, ResultKind.NO_ANSWER,
                        ResultKind.NO_DIALTONE)


# 3GPP TS 27.007 section 9.2.1 (mobile equipment errors), the part modems actually send.
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    1: "no connection to phone",
    2: "phone-adaptor link reserved",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    20: "memory full",
    21: "invalid index",
    22: "not found",
    23: "memory failure",
    24: "text string too long",
    25: "invalid characters in text string",
    26: "dial string too long",
    27: "invalid characters in dial string",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown",
}
_CME_BY_TEXT = {text.lower(): code for code, text in CME_ERRORS.items()}

_PLAIN = {
    "OK": ResultKind.OK,
    "ERROR": ResultKind.ERROR,
    "VCON": ResultKind.VCON,
    "NO CARRIER": ResultKind.NO_CARRIER,
    "BUSY": ResultKind.BUSY,
    "NO ANSWER": ResultKind.NO_ANSWER,
    "NO DIALTONE": ResultKind.NO_DIALTONE,
    "NO DIAL TONE": ResultKind.NO_DIALTONE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FinalResult:
    kind: ResultKind
    line: str
    code: int | None = None
    """The +CME/+CMS error number, also when the modem sent the verbose text."""
    text: str = ""
    """The +CME/+CMS error text (from the table when the modem sent a number); CONNECT's tail."""

    @property
    def success(self) -> bool:
        return self.kind.success

    def describe(self) -> str:
        if self.kind in (ResultKind.CME_ERROR, ResultKind.CMS_ERROR):
            number = f" {self.code}" if self.code is not None else ""
            return f"{self.kind.value}{number} ({self.text})" if self.text else self.line
        return self.line


def parse_final(line: str) -> FinalResult | None:
    """The final result ``line`` stands for, or None if it is not a final result."""
    kind = _PLAIN.get(line)
    if kind is not None:
        return FinalResult(kind=kind, line=line)
    if line == "CONNECT" or line.startswith("CONNECT "):
        return FinalResult(kind=ResultKind.CONNECT, line=line, text=line[8:].strip())
    for kind in (ResultKind.CME_ERROR, ResultKind.CMS_ERROR):
        prefix = kind.value + ":"
        if line.startswith(prefix):
            detail = line[len(prefix):].strip()
            if detail.isdigit():
                code = int(detail)
                text = CME_ERRORS.get(code, "") if kind is ResultKind.CME_ERROR else ""
                return FinalResult(kind=kind, line=line, code=code, text=text)
            code = _CME_BY_TEXT.get(detail.lower()) if kind is ResultKind.CME_ERROR else None
            return FinalResult(kind=kind, line=line, code=code, text=detail)
    return None


class AtError(DriverError):
    """Something went wrong talking to a modem over AT commands."""


class AtCommandError(AtError):
    """The modem answered a command with an error result."""

    def __init__(self, command: str, result: FinalResult, lines: tuple[str, ...] = ()) -> None:
        super().__init__(f"{command}: {result.describe()}")
        self.command = command
        self.result = result
        self.lines = lines

    @property
    def cme(self) -> int | None:
        return self.result.code if self.result.kind is ResultKind.CME_ERROR else None


class AtTimeout(AtError):
    """No final result arrived within the command's timeout."""


class AtUnresponsive(AtError):
    """The modem does not answer commands at all (it may still be sending URCs)."""


class AtPortClosed(AtError):
    """The serial port went away (USB unplug, modem reset) or was closed."""
