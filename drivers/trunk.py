"""The one interface every outside line implements: LTE modems and analog voice modems alike.

The gateway (``appliance/gateway``) drives trunks only through this module. A trunk is an
async context manager (entering it opens and initialises the hardware and keeps it healthy
until exit). Calls are :class:`TrunkCall` handles; what happens to them arrives as
:class:`TrunkEvent` objects delivered to listeners on the event-loop thread.

Audio is 8 kHz, signed 16-bit little-endian, mono, in 20 ms frames of 320 bytes, carried by
two thread-safe :class:`FrameQueue` objects per call so that a media engine running in its own
thread (pjsua2) can exchange frames with the driver's serial pump without touching asyncio.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from drivers.errors import DriverError

SAMPLE_RATE = 8000
SAMPLE_BYTES = 2
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * SAMPLE_BYTES  # 320
SILENCE_FRAME = bytes(FRAME_BYTES)


class FrameQueue:
    """A bounded, thread-safe FIFO of audio frames. When full, the oldest frame is dropped
    (late audio is worse than lost audio); counters say how often that and underruns happen."""

    def __init__(self, max_frames: int = 50) -> None:
        self._frames: collections.deque[bytes] = collections.deque(maxlen=max_frames)
        self._lock = threading.Lock()
        self.dropped = 0
        self.underruns = 0
        self.put_count = 0
        self.problem: str | None = None
        """Set by the driver while this stream is visibly broken ('no-downlink': no frames;
        'silent-downlink': frames of digital silence only); the gateway's audio bridge tells
        the caller. A plain attribute: one writer (the driver), readers in any thread."""

    def put(self, frame: bytes) -> None:
        with self._lock:
            if len(self._frames) == self._frames.maxlen:
                self.dropped += 1
            self._frames.append(frame)
            self.put_count += 1

    def get(self) -> bytes | None:
        """The oldest frame, or None (and an underrun counted) when empty."""
        with self._lock:
            if self._frames:
                return self._frames.popleft()
            self.underruns += 1
            return None

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


class CallDirection(enum.StrEnum):
    OUTGOING = "outgoing"
    INCOMING = "incoming"


class CallState(enum.StrEnum):
    DIALING = "dialing"        # dial command accepted, no progress yet
    ALERTING = "alerting"      # far end ringing (LTE reports it; analog cannot know)
    RINGING = "ringing"        # incoming call waiting for us to answer
    ACTIVE = "active"          # answered (or, on analog lines, presumed answered)
    ENDED = "ended"


class EndCause(enum.StrEnum):
    NORMAL = "normal"              # either side hung up after an answer
    LOCAL_HANGUP = "local-hangup"  # we hung up (before or after answer)
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    REJECTED = "rejected"          # the network refused the number (invalid/barred)
    NO_SERVICE = "no-service"      # no SIM, no network, IMS not ready, no dial tone
    MISSED = "missed"              # incoming call the caller abandoned before answer
    FAILED = "failed"              # the modem misbehaved (timeout, reset, port vanished)


class Presentation(enum.StrEnum):
    ALLOWED = "allowed"
    WITHHELD = "withheld"          # caller chose privacy ("P")
    UNAVAILABLE = "unavailable"    # network could not deliver it ("O"), or none sent


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallerId:
    number: str | None
    name: str | None = None
    presentation: Presentation = Presentation.ALLOWED


class TrunkState(enum.StrEnum):
    STARTING = "starting"    # opening ports, initialising
    READY = "ready"          # can place and take calls
    LIMITED = "limited"      # emergency calls only (no SIM, registration denied...)
    DOWN = "down"            # cannot place calls (port gone, modem hung, no voice support)
    RECOVERING = "recovering"  # resetting the modem / reopening ports


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrunkHealth:
    state: TrunkState
    reason: str = ""
    """Why not READY, in words a technician can act on."""
    model: str | None = None
    firmware: str | None = None
    sim: str | None = None             # "ready", "missing", "pin-required", ...
    registration: str | None = None    # "home", "roaming", "searching", "denied", ...
    operator: str | None = None
    access_technology: str | None = None
    signal_dbm: int | None = None
    signal_bars: int | None = None     # 0..5
    ims: str | None = None             # "ready", "not-ready", "n/a"
    line: str | None = None            # analog: "dial-tone", "no-dial-tone", "unknown"
    audio: str | None = None
    """The audio path of the current/last call when it failed visibly: "no-downlink" (nothing
    heard from the modem), "silent-downlink" (frames, but only digital silence),
    "uplink-stalled" (the modem stopped taking audio), "port-lost"; None when fine. One-way
    audio is the commonest LTE voice fault, so it is reported."""
    active_calls: int = 0

    @property
    def can_place_calls(self) -> bool:
        return self.state is TrunkState.READY

    @property
    def can_place_emergency_calls(self) -> bool:
        return self.state in (TrunkState.READY, TrunkState.LIMITED)


_call_ids = itertools.count(1)


@dataclasses.dataclass(slots=True, kw_only=True, eq=False)
class TrunkCall:
    """One call on a trunk. The driver owns ``state``; the gateway reads it and moves audio."""

    trunk: str
    direction: CallDirection
    number: str | None
    emergency: bool = False
    caller: CallerId | None = None
    id: int = dataclasses.field(default_factory=lambda: next(_call_ids))
    state: CallState = CallState.DIALING
    end_cause: EndCause | None = None
    answer_supervised: bool = True
    """False on analog lines, where 'answered' is the modem's guess (ringback stopped)."""
    uplink: FrameQueue = dataclasses.field(default_factory=FrameQueue)
    """Frames towards the phone network (from the gateway)."""
    downlink: FrameQueue = dataclasses.field(default_factory=FrameQueue)
    """Frames from the phone network (to the gateway)."""


# Events ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallAlerting:
    call: TrunkCall


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallAnswered:
    call: TrunkCall


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallEnded:
    call: TrunkCall
    cause: EndCause
    detail: str = ""
    network_cause: int | None = None
    """The network's release cause (3GPP TS 24.008 / ITU-T Q.850 number) when the modem
    reported one (AT+CEER), for a precise answer to the caller (RFC 3398's table)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IncomingCall:
    call: TrunkCall


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DtmfReceived:
    call: TrunkCall
    digit: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HealthChanged:
    trunk: str
    health: TrunkHealth


TrunkEvent = CallAlerting | CallAnswered | CallEnded | IncomingCall | DtmfReceived | HealthChanged
TrunkListener = Callable[[TrunkEvent], None]


class TrunkError(DriverError):
    """A trunk operation that could not be done; ``cause`` says how to answer the caller."""

    def __init__(self, message: str, cause: EndCause = EndCause.FAILED) -> None:
        super().__init__(message)
        self.cause = cause


class TrunkBusy(TrunkError):
    """Every call slot on this trunk is in use."""

    def __init__(self, message: str = "all call slots on this trunk are in use") -> None:
        super().__init__(message, EndCause.BUSY)


@runtime_checkable
class Trunk(Protocol):
    name: str
    kind: str            # "lte" or "voice-modem"
    max_calls: int

    async def __aenter__(self) -> Trunk: ...

    async def __aexit__(self, exc_type, exc, tb) -> None: ...

    def health(self) -> TrunkHealth: ...

    def calls(self) -> list[TrunkCall]: ...

    def add_listener(self, listener: TrunkListener) -> Callable[[], None]:
        """Deliver events to ``listener`` on the loop thread; returns a remove function."""
        ...

    async def dial(self, number: str, *, emergency: bool = False) -> TrunkCall:
        """Start an outgoing call. Returns once the modem accepted the dial command; progress
        arrives as events. Raises TrunkBusy / TrunkError when the call cannot be started."""
        ...

    async def answer(self, call: TrunkCall) -> None: ...

    async def hangup(self, call: TrunkCall) -> None:
        """End the call (idempotent); a CallEnded event with LOCAL_HANGUP follows."""
        ...

    async def send_dtmf(self, call: TrunkCall, digits: str) -> None: ...


@runtime_checkable
class SupportsAtPassthrough(Protocol):
    """A trunk driven by AT commands that lets a technician send one by hand."""

    async def at_passthrough(self, command: str, *, timeout_s: float = 10.0) -> list[str]:
        """Send ``command`` and return every line of the answer (final result last)."""
        ...

    def details(self) -> dict:
        """Ports, identity and counters for 'jbc trunks' (JSON-able)."""
        ...
