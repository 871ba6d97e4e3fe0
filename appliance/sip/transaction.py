"""RFC 3261 section 17 transactions (with the RFC 6026 "Accepted" state), as pure state machines.

Four machines: INVITE and non-INVITE, client and server. Each is a table read top to bottom,
``(state, event) -> (next state, action)``; an event that is not in a machine's table is a
bug in the transaction user and raises :class:`LocalProtocolError`. Every network event a
peer can cause in any state is in the tables, if only as "absorb".

Time is passed in (``now``, seconds on any monotonic clock). Timers A-M are deadlines the
machines compute; :class:`TransactionLayer` keeps them in one heap, tells the shell the next
deadline (:meth:`TransactionLayer.next_deadline`) and fires what is due in
:meth:`TransactionLayer.handle_timers`. Messages to send queue up as :class:`Transmit` items
that whoever drives the layer drains with :meth:`TransactionLayer.take_transmits`; nothing here
does I/O.

Timers (T1, T2, T4 from :class:`TimerSettings`):

=====  ==========================================  ========================================
timer  what                                        value (unreliable / reliable transport)
=====  ==========================================  ========================================
A      INVITE client retransmission                T1 doubling / none
B      INVITE client gives up in Calling           64*T1
C      (proxy, not here: see proxy.py)             > 3 min
D      INVITE client absorbs response copies       32 s / 0
E      non-INVITE client retransmission            T1 doubling to T2 / none
F      non-INVITE client gives up                  64*T1
G      INVITE server retransmits final response    T1 doubling to T2 / none
H      INVITE server waits for ACK                 64*T1
I      INVITE server absorbs ACK copies            T4 / 0
J      non-INVITE server absorbs request copies    64*T1 / 0
K      non-INVITE client absorbs response copies   T4 / 0
L      INVITE server in Accepted (RFC 6026)        64*T1
M      INVITE client in Accepted (RFC 6026)        64*T1
=====  ==========================================  ========================================
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import os
from collections.abc import Callable
from typing import Any, Protocol

from .errors import LocalProtocolError
from .message import MAGIC_COOKIE, Headers, Request, Response

_BRANCH_PREFIX = MAGIC_COOKIE + os.urandom(3).hex()
_branch_counter = itertools.count(1)


def new_branch() -> str:
    """A branch parameter for a request this process sends (RFC 3261 8.1.1.7): the magic
    cookie, a per-process prefix and a counter, so it is unique without a clock."""
    return f"{_BRANCH_PREFIX}.{next(_branch_counter):x}"


@dataclasses.dataclass(frozen=True, slots=True)
class TimerSettings:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@dataclasses.dataclass(slots=True)
class Transmit:
    """Send ``data`` over ``flow``. ``client_key`` names the client transaction that sent it,
    so that a failure to connect or send can be reported back to it."""

    data: bytes
    flow: Any
    client_key: tuple[str, str] | None = None


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TransactionUser(Protocol):
    """What a client transaction reports to whoever started it (the proxy)."""

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None: ...

    def on_timeout(self, tx: ClientTransaction, now: float) -> None: ...

    def on_transport_error(self, tx: ClientTransaction, now: float) -> None: ...


CALLING, TRYING, PROCEEDING = State.CALLING, State.TRYING, State.PROCEEDING
COMPLETED, CONFIRMED, ACCEPTED, TERMINATED = (
    State.COMPLETED, State.CONFIRMED, State.ACCEPTED, State.TERMINATED)

Row = tuple[State, str, State, str]


def _table(*rows: Row) -> dict[tuple[State, str], tuple[State, str]]:
    table: dict[tuple[State, str], tuple[State, str]] = {}
    for state, event, next_state, action in rows:
        if (state, event) in table:
            raise LocalProtocolError(f"duplicate row {state} {event}")
        table[(state, event)] = (next_state, action)
    return table


class Transaction:
    TABLE: dict[tuple[State, str], tuple[State, str]] = {}
    __slots__ = ("_timers", "deadline", "flow", "key", "layer", "method", "reliable",
                 "request", "state")

    def __init__(self, layer: TransactionLayer, key: Any, request: Request, flow: Any, *,
                 reliable: bool, state: State) -> None:
        self.layer = layer
        self.key = key
        self.request: Request | None = request
        self.method = request.method
        self.flow = flow
        self.reliable = reliable
        self.state = state
        self._timers: dict[str, float] = {}
        self.deadline: float | None = None

    # -- the table ------------------------------------------------------------------------

    def _event(self, event: str, now: float, message: Any = None) -> None:
        row = self.TABLE.get((self.state, event))
        if row is None:
            raise LocalProtocolError(
                f"{type(self).__name__} {self.key}: event {event!r} in state "
                f"{self.state.value} is not allowed")
        self.state = row[0]
        getattr(self, row[1])(now, message)  # may shorten the row's state to TERMINATED
        if self.state is TERMINATED:
            self._timers.clear()
            self.deadline = None
            self.layer._forget(self)

    # -- timers ---------------------------------------------------------------------------

    def _start_timer(self, name: str, now: float, delay: float) -> None:
        self._timers[name] = now + delay
        self._rearm()

    def _stop_timer(self, name: str) -> None:
        if self._timers.pop(name, None) is not None:
            self._rearm()

    def _rearm(self) -> None:
        deadline = min(self._timers.values()) if self._timers else None
        if deadline != self.deadline:
            self.deadline = deadline
            if deadline is not None:
                self.layer._schedule(self, deadline)

    def _fire(self, now: float) -> None:
        self.deadline = None  # the heap entry that called us is used up
        due = sorted((when, name) for name, when in self._timers.items() if when <= now)
        for _, name in due:
            if self.state is TERMINATED:
                return
            if self._timers.pop(name, None) is None:
                continue
            self._event(f"timer_{name}", now)
        if self.state is not TERMINATED:
            self._rearm()

    def timer(self, name: str) -> float | None:
        """When timer ``name`` fires (for tests and introspection)."""
        return self._timers.get(name)

    def _send(self, data: bytes, client: bool = False) -> None:
        self.layer.transmit(Transmit(data, self.flow, self.key if client else None))

    def _nothing(self, now: float, message: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Server transactions


class ServerTransaction(Transaction):
    """Keeps only the bytes of its last response (and its status): a finished transaction
    that waits out Timer J or I holds no parsed message, which keeps a registration storm's
    thousands of waiting transactions cheap for the garbage collector."""

    __slots__ = ("_interval", "_last_bytes", "last_status")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_status: int | None = None
        self._last_bytes: bytes | None = None
        self._interval = 0.0

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmission of the request (or, for INVITE, its ACK) arrived."""
        self._event("ack" if request.method == "ACK" else "request", now, request)

    @property
    def last_response_bytes(self) -> bytes | None:
        """The bytes of the last response sent (what a retransmitted request gets back)."""
        return self._last_bytes

    def retransmitted(self, now: float) -> None:
        """The very datagram that opened this transaction arrived again."""
        self._event("request", now)

    def respond(self, response: Response, now: float) -> None:
        """The transaction user answers."""
        status = response.status
        event = "provisional" if status < 200 else "success" if status < 300 else "failure"
        self._event(event, now, response)
        if self.state is not PROCEEDING and self.state is not TRYING:
            self.request = None  # answered: nothing left to read from it

    def transport_error(self, now: float) -> None:
        self._event("transport_error", now)

    def _store_and_send(self, now: float, response: Response) -> None:
        self.last_status = response.status
        self._last_bytes = response.to_bytes()
        self._send(self._last_bytes)

    def _resend(self, now: float, message: Any) -> None:
        if self._last_bytes is not None:
            self._send(self._last_bytes)


class ServerNonInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.2."""

    TABLE = _table(
        # state       event              next state   action
        (TRYING,      "request",         TRYING,      "_nothing"),
        (TRYING,      "provisional",     PROCEEDING,  "_store_and_send"),
        (TRYING,      "success",         COMPLETED,   "_complete"),
        (TRYING,      "failure",         COMPLETED,   "_complete"),
        (TRYING,      "transport_error", TERMINATED,  "_nothing"),
        (PROCEEDING,  "request",         PROCEEDING,  "_resend"),
        (PROCEEDING,  "provisional",     PROCEEDING,  "_store_and_send"),
        (PROCEEDING,  "success",         COMPLETED,   "_complete"),
        (PROCEEDING,  "failure",         COMPLETED,   "_complete"),
        (PROCEEDING,  "transport_error", TERMINATED,  "_nothing"),
        (COMPLETED,   "request",         COMPLETED,   "_resend"),
        (COMPLETED,   "provisional",     COMPLETED,   "_nothing"),  # 17.2.2: discarded
        (COMPLETED,   "success",         COMPLETED,   "_nothing"),
        (COMPLETED,   "failure",         COMPLETED,   "_nothing"),
        (COMPLETED,   "transport_error", TERMINATED,  "_nothing"),
        (COMPLETED,   "timer_J",         TERMINATED,  "_nothing"),
    )
    __slots__ = ()

    def _complete(self, now: float, response: Response) -> None:
        self._store_and_send(now, response)
        if self.reliable:
            self.state = TERMINATED  # Timer J is zero
        else:
            self._start_timer("J", now, 64 * self.layer.timers.t1)


class ServerInviteTransaction(ServerTransaction):
    """RFC 3261 17.2.1 with RFC 6026: 2xx moves to Accepted, where 2xx copies pass through."""

    TABLE = _table(
        # state       event              next state   action
        (PROCEEDING,  "request",         PROCEEDING,  "_resend"),
        (PROCEEDING,  "ack",             PROCEEDING,  "_nothing"),  # stray ACK: absorb
        (PROCEEDING,  "provisional",     PROCEEDING,  "_store_and_send"),
        (PROCEEDING,  "success",         ACCEPTED,    "_accept"),
        (PROCEEDING,  "failure",         COMPLETED,   "_fail"),
        (PROCEEDING,  "transport_error", TERMINATED,  "_nothing"),
        (COMPLETED,   "request",         COMPLETED,   "_resend"),
        (COMPLETED,   "ack",             CONFIRMED,   "_confirm"),
        (COMPLETED,   "provisional",     COMPLETED,   "_nothing"),
        (COMPLETED,   "success",         COMPLETED,   "_nothing"),
        (COMPLETED,   "failure",         COMPLETED,   "_nothing"),
        (COMPLETED,   "timer_G",         COMPLETED,   "_retransmit_final"),
        (COMPLETED,   "timer_H",         TERMINATED,  "_nothing"),  # the ACK never came
        (COMPLETED,   "transport_error", TERMINATED,  "_nothing"),
        (CONFIRMED,   "request",         CONFIRMED,   "_nothing"),
        (CONFIRMED,   "ack",             CONFIRMED,   "_nothing"),
        (CONFIRMED,   "provisional",     CONFIRMED,   "_nothing"),
        (CONFIRMED,   "success",         CONFIRMED,   "_nothing"),
        (CONFIRMED,   "failure",         CONFIRMED,   "_nothing"),
        (CONFIRMED,   "timer_I",         TERMINATED,  "_nothing"),
        (ACCEPTED,    "request",         ACCEPTED,    "_nothing"),
        (ACCEPTED,    "ack",             ACCEPTED,    "_nothing"),
        (ACCEPTED,    "provisional",     ACCEPTED,    "_nothing"),
        (ACCEPTED,    "success",         ACCEPTED,    "_store_and_send"),  # 2xx copies
        (ACCEPTED,    "failure",         ACCEPTED,    "_nothing"),
        (ACCEPTED,    "transport_error", ACCEPTED,    "_nothing"),
        (ACCEPTED,    "timer_L",         TERMINATED,  "_nothing"),
    )
    __slots__ = ()

    def _accept(self, now: float, response: Response) -> None:
        self._store_and_send(now, response)
        self._start_timer("L", now, 64 * self.layer.timers.t1)

    def _fail(self, now: float, response: Response) -> None:
        self._store_and_send(now, response)
        t1 = self.layer.timers.t1
        if not self.reliable:
            self._interval = t1
            self._start_timer("G", now, t1)
        self._start_timer("H", now, 64 * t1)

    def _retransmit_final(self, now: float, message: Any) -> None:
        self._resend(now, None)
        self._interval = min(2 * self._interval, self.layer.timers.t2)
        self._start_timer("G", now, self._interval)

    def _confirm(self, now: float, message: Any) -> None:
        self._stop_timer("G")
        self._stop_timer("H")
        if self.reliable:
            self.state = TERMINATED
        else:
            self._start_timer("I", now, self.layer.timers.t4)


# ---------------------------------------------------------------------------------------------
# Client transactions


class ClientTransaction(Transaction):
    __slots__ = ("_bytes", "_interval", "user")

    def __init__(self, *args, user: TransactionUser, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self._bytes = self.request.to_bytes()
        self._interval = 0.0

    def receive_response(self, response: Response, now: float) -> None:
        status = response.status
        event = "1xx" if status < 200 else "2xx" if status < 300 else "3xx-6xx"
        self._event(event, now, response)

    def transport_error(self, now: float) -> None:
        self._event("transport_error", now)

    def _pass_up(self, now: float, response: Response) -> None:
        self.user.on_response(self, response, now)

    def _timeout(self, now: float, message: Any) -> None:
        self.user.on_timeout(self, now)

    def _transport_failed(self, now: float, message: Any) -> None:
        self.user.on_transport_error(self, now)

    def _retransmit(self, now: float, message: Any) -> None:
        self._send(self._bytes, client=True)


class ClientInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.1 with RFC 6026: a 2xx moves to Accepted, where 2xx copies pass up."""

    TABLE = _table(
        # state       event              next state   action
        (CALLING,     "timer_A",         CALLING,     "_retransmit_a"),
        (CALLING,     "timer_B",         TERMINATED,  "_timeout"),
        (CALLING,     "1xx",             PROCEEDING,  "_proceed"),
        (CALLING,     "2xx",             ACCEPTED,    "_accept"),
        (CALLING,     "3xx-6xx",         COMPLETED,   "_complete"),
        (CALLING,     "transport_error", TERMINATED,  "_transport_failed"),
        (PROCEEDING,  "1xx",             PROCEEDING,  "_pass_up"),
        (PROCEEDING,  "2xx",             ACCEPTED,    "_accept"),
        (PROCEEDING,  "3xx-6xx",         COMPLETED,   "_complete"),
        (PROCEEDING,  "transport_error", TERMINATED,  "_transport_failed"),
        (COMPLETED,   "1xx",             COMPLETED,   "_nothing"),
        (COMPLETED,   "2xx",             COMPLETED,   "_nothing"),
        (COMPLETED,   "3xx-6xx",         COMPLETED,   "_send_ack"),  # our ACK was lost
        (COMPLETED,   "timer_D",         TERMINATED,  "_nothing"),
        (COMPLETED,   "transport_error", TERMINATED,  "_nothing"),
        (ACCEPTED,    "1xx",             ACCEPTED,    "_nothing"),
        (ACCEPTED,    "2xx",             ACCEPTED,    "_pass_up"),
        (ACCEPTED,    "3xx-6xx",         ACCEPTED,    "_nothing"),
        (ACCEPTED,    "transport_error", ACCEPTED,    "_nothing"),
        (ACCEPTED,    "timer_M",         TERMINATED,  "_nothing"),
    )
    __slots__ = ("_ack",)

    def start(self, now: float) -> None:
        self._ack: bytes | None = None
        self._send(self._bytes, client=True)
        t1 = self.layer.timers.t1
        if not self.reliable:
            self._interval = t1
            self._start_timer("A", now, t1)
        self._start_timer("B", now, 64 * t1)

    def _retransmit_a(self, now: float, message: Any) -> None:
        self._retransmit(now, None)
        self._interval *= 2
        self._start_timer("A", now, self._interval)

    def _proceed(self, now: float, response: Response) -> None:
        self._stop_timer("A")
        self._stop_timer("B")
        self._pass_up(now, response)

    def _accept(self, now: float, response: Response) -> None:
        self._stop_timer("A")
        self._stop_timer("B")
        self._start_timer("M", now, 64 * self.layer.timers.t1)
        self._pass_up(now, response)

    def _complete(self, now: float, response: Response) -> None:
        self._stop_timer("A")
        self._stop_timer("B")
        self._ack = self.ack_for(response).to_bytes()
        self._send_ack(now, response)
        if self.reliable:
            self.state = TERMINATED
        else:
            self._start_timer("D", now, 32.0)
        self._pass_up(now, response)

    def _send_ack(self, now: float, response: Response) -> None:
        self._send(self._ack, client=True)

    def ack_for(self, response: Response) -> Request:
        """RFC 3261 17.1.1.3: the ACK for a non-2xx final response, built by the transaction."""
        request = self.request
        items: list[tuple[str, str, str]] = []
        items.append(("via", "Via", request.top_via.text))
        for key, name, value in request.headers._items:
            if key in ("from", "call-id", "route", "max-forwards"):
                items.append((key, name, value))
        to = response.headers.get("to") or request.headers.get("to") or ""
        items.append(("to", "To", to))
        items.append(("cseq", "CSeq", f"{request.cseq[0]} ACK"))
        return Request("ACK", request.uri_text, Headers(items))


class ClientNonInviteTransaction(ClientTransaction):
    """RFC 3261 17.1.2."""

    TABLE = _table(
        # state       event              next state   action
        (TRYING,      "timer_E",         TRYING,      "_retransmit_e"),
        (TRYING,      "timer_F",         TERMINATED,  "_timeout"),
        (TRYING,      "1xx",             PROCEEDING,  "_pass_up"),
        (TRYING,      "2xx",             COMPLETED,  "_complete"),
        (TRYING,      "3xx-6xx",         COMPLETED,  "_complete"),
        (TRYING,      "transport_error", TERMINATED,  "_transport_failed"),
        (PROCEEDING,  "timer_E",         PROCEEDING,  "_retransmit_e"),
        (PROCEEDING,  "timer_F",         TERMINATED,  "_timeout"),
        (PROCEEDING,  "1xx",             PROCEEDING,  "_pass_up"),
        (PROCEEDING,  "2xx",             COMPLETED,   "_complete"),
        (PROCEEDING,  "3xx-6xx",         COMPLETED,   "_complete"),
        (PROCEEDING,  "transport_error", TERMINATED,  "_transport_failed"),
        (COMPLETED,   "1xx",             COMPLETED,   "_nothing"),
        (COMPLETED,   "2xx",             COMPLETED,   "_nothing"),
        (COMPLETED,   "3xx-6xx",         COMPLETED,   "_nothing"),
        (COMPLETED,   "transport_error", COMPLETED,   "_nothing"),
        (COMPLETED,   "timer_K",         TERMINATED,  "_nothing"),
    )
    __slots__ = ()

    def start(self, now: float) -> None:
        self._send(self._bytes, client=True)
        t1 = self.layer.timers.t1
        if not self.reliable:
            self._interval = t1
            self._start_timer("E", now, t1)
        self._start_timer("F", now, 64 * t1)

    def _retransmit_e(self, now: float, message: Any) -> None:
        self._retransmit(now, None)
        t2 = self.layer.timers.t2
        # 17.1.2.2: doubling up to T2 while Trying; every T2 once Proceeding.
        self._interval = min(2 * self._interval, t2) if self.state is TRYING else t2
        self._start_timer("E", now, self._interval)

    def _complete(self, now: float, response: Response) -> None:
        self._stop_timer("E")
        self._stop_timer("F")
        if self.reliable:
            self.state = TERMINATED
        else:
            self._start_timer("K", now, self.layer.timers.t4)
        self._pass_up(now, response)


# ---------------------------------------------------------------------------------------------
# The layer: matching, timers, output


def server_key(request: Request) -> tuple:
    """RFC 3261 17.2.3: branch, sent-by and method (ACK matches its INVITE)."""
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith("z9hG4bK"):
        return (branch, via.sent_by, method)
    # RFC 2543 peers: no usable branch; match on the dialog and sequence identifiers.
    return ("2543", request.call_id, request.from_tag, request.cseq[0], via.text, method)


def client_key(branch: str, method: str) -> tuple[str, str]:
    """RFC 3261 17.1.3: the top Via branch we put in, and the CSeq method (ACK excluded)."""
    return (branch, method)


class TransactionLayer:
    def __init__(self, timers: TimerSettings | None = None) -> None:
        self.timers = timers or TimerSettings()
        self._outbox: list[Transmit] = []
        self.servers: dict[tuple, ServerTransaction] = {}
        self.clients: dict[tuple[str, str], ClientTransaction] = {}
        self._heap: list[tuple[float, int, Transaction]] = []
        self._sequence = itertools.count()
        self.on_server_terminated: Callable[[ServerTransaction], None] | None = None

    # -- output -------------------------------------------------------------------------------

    def transmit(self, item: Transmit) -> None:
        """Queue ``item`` for sending (transactions, and the transaction user's stateless
        sends such as an ACK for a 2xx)."""
        self._outbox.append(item)

    def take_transmits(self) -> list[Transmit]:
        """Everything queued for sending since the last call, oldest first."""
        items, self._outbox = self._outbox, []
        return items

    # -- servers ------------------------------------------------------------------------------

    def find_server(self, request: Request) -> ServerTransaction | None:
        return self.servers.get(server_key(request))

    def new_server(self, request: Request, flow: Any, *, reliable: bool,
                   key: tuple | None = None) -> ServerTransaction:
        key = key or server_key(request)
        if key in self.servers:
            raise LocalProtocolError(f"server transaction {key} exists already")
        cls = ServerInviteTransaction if request.method == "INVITE" else \
            ServerNonInviteTransaction
        tx = cls(self, key, request, flow, reliable=reliable,
                 state=PROCEEDING if request.method == "INVITE" else TRYING)
        self.servers[key] = tx
        return tx

    def discard(self, tx: ServerTransaction) -> None:
        """Forget a server transaction at once: its answer was sent statelessly (RFC 3261
        8.2.7), so a retransmitted request is handled as new."""
        if tx.state is not TERMINATED:
            tx.state = TERMINATED
            tx._timers.clear()
            tx.deadline = None
            self._forget(tx)

    def find_invite_for_cancel(self, cancel: Request) -> ServerInviteTransaction | None:
        """RFC 3261 9.2: the INVITE server transaction a CANCEL refers to."""
        key = server_key(cancel)
        if key[0] == "2543":
            key = (*key[:-1], "INVITE")
        else:
            key = (key[0], key[1], "INVITE")
        tx = self.servers.get(key)
        return tx if isinstance(tx, ServerInviteTransaction) else None

    # -- clients ------------------------------------------------------------------------------

    def new_client(self, request: Request, flow: Any, *, reliable: bool,
                   user: TransactionUser, now: float) -> ClientTransaction:
        branch = request.top_via.branch
        if not branch or not branch.startswith("z9hG4bK"):
            raise LocalProtocolError("a client transaction needs an RFC 3261 branch")
        key = client_key(branch, request.method)
        if key in self.clients:
            raise LocalProtocolError(f"client transaction {key} exists already")
        cls = ClientInviteTransaction if request.method == "INVITE" else \
            ClientNonInviteTransaction
        tx = cls(self, key, request, flow, reliable=reliable,
                 state=CALLING if request.method == "INVITE" else TRYING, user=user)
        self.clients[key] = tx
        tx.start(now)
        return tx

    def find_client(self, response: Response) -> ClientTransaction | None:
        branch = response.top_via.branch
        if branch is None:
            return None
        return self.clients.get((branch, response.cseq[1]))

    def client_transport_error(self, key: tuple[str, str], now: float) -> None:
        tx = self.clients.get(key)
        if tx is not None and tx.state is not TERMINATED:
            tx.transport_error(now)

    # -- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, tx = heap[0]
            if tx.deadline == when and tx.state is not TERMINATED:
                return when
            heapq.heappop(heap)  # stale entry
        return None

    def handle_timers(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, tx = heapq.heappop(heap)
            if tx.deadline == when and tx.state is not TERMINATED:
                tx._fire(now)

    def _schedule(self, tx: Transaction, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._sequence), tx))

    def _forget(self, tx: Transaction) -> None:
        if isinstance(tx, ServerTransaction):
            if self.servers.get(tx.key) is tx:
                del self.servers[tx.key]
                if self.on_server_terminated is not None:
                    self.on_server_terminated(tx)
        elif self.clients.get(tx.key) is tx:
            del self.clients[tx.key]

    def __len__(self) -> int:
        return len(self.servers) + len(self.clients)
