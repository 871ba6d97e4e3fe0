"""AT command channels: a pure line-framing core (``core``) and its asyncio shell (``channel``)."""

from .core import AtCommand, AtCore, AtResponse
from .results import (
    AtCommandError,
    AtError,
    AtPortClosed,
    AtTimeout,
    AtUnresponsive,
    FinalResult,
    ResultKind,
)

__all__ = [
    "AtCommand",
    "AtCommandError",
    "AtCore",
    "AtError",
    "AtPortClosed",
    "AtResponse",
    "AtTimeout",
    "AtUnresponsive",
    "FinalResult",
    "ResultKind",
]
