"""The stateful proxy (RFC 3261 section 16): forking, ring groups, dialogs, CANCEL, ACK.

A new INVITE (or MESSAGE, or OPTIONS to a user) gets a :class:`ResponseContext` (16.7): the
server transaction towards the caller and the branches (client transactions) towards the
targets. Targets come in *stages*: a direct call to an extension is one stage with every
binding of every device of that extension, forked in parallel; a simultaneous ring group is
one stage with all members; a sequential ring group is one stage per member, each with its
timeout; a ring group's fallback extension is a last stage. When a stage times out its
branches are cancelled; when every branch of a stage is done and nobody answered, the next
stage starts; after the last, the best response goes upstream (16.7 step 6; our own
timeouts read 408, nobody registered reads 480).

The first 2xx wins: it is forwarded at once and every other branch is cancelled; later 2xx
are forwarded too (the caller's UA ends the extra dialogs). A 2xx arriving after a final
non-2xx went upstream is acknowledged and ended with BYE by the proxy itself.

Dialog-creating requests are record-routed (twice when the two sides use different
transports, RFC 5658), so in-dialog requests (re-INVITE for hold, BYE, REFER, INFO) come
back through here. They are forwarded only within dialogs this proxy knows; ACK for a 2xx
is forwarded end to end without a transaction, ACK for a non-2xx is absorbed hop by hop by
the server transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import heapq
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .contacts import contact_target, reachable_contact
from .dialplan import Destination
from .emergency import emergency_not_placed, notify_on_site
from .flow import Flow
from .message import MAGIC_COOKIE, Headers, Request, Response
from .transaction import (
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
    Transmit,
    new_branch,
)
from .uri import SipUri, UriError, parse_uri

if TYPE_CHECKING:
    from .core import SipCore

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who a new request comes from, as established by authentication or trust."""

    kind: str  # "extension" (verified), "trunk" (trusted gateway), "unverified"
    extension: str | None = None
    device_id: str | None = None
    verified_by: str = "digest"
    """For an extension: "digest", or for an emergency call that did not authenticate, the
    live registration it matched: "registration (flow|contact|source)"."""


@dataclasses.dataclass(slots=True)
class Stage:
    numbers: tuple[str, ...]
    """Extensions to ring in this stage; empty for the trunk gateway stage."""
    timeout_s: float | None
    gateway_user: str | None = None
    """For a call to the trunk gateway: the number to put in its Request-URI."""


class Call:
    """A call (INVITE dialog, or a failed attempt) seen by the proxy: what 'jbc calls' shows
    and what its call record is made of. ``id`` is the call record's stable id."""

    __slots__ = ("answered_at", "call_id", "callee", "caller", "caller_tag", "direction",
                 "emergency", "ended_at", "ended_by", "final_status", "id", "identity",
                 "kind", "last_activity", "location", "owns_record", "result", "started_at",
                 "state", "to_tags")

    def __init__(self, *, call_id: str, caller_tag: str, caller: str, callee: str, kind: str,
                 direction: str, emergency: bool, now: float, location: str | None = None,
                 record_id: str | None = None, owns_record: bool = True) -> None:
        self.id = record_id or str(uuid.uuid4())
        self.owns_record = owns_record
        """False when the gateway keeps this call's record (a trunk-originated call that
        arrived with its X-JBC-Call-Record): one call, one record."""
        self.call_id = call_id
        self.caller_tag = caller_tag
        self.to_tags: set[str] = set()
        self.caller = caller
        self.callee = callee
        self.kind = kind
        self.direction = direction
        """internal, outbound, inbound or emergency (the call record's direction)."""
        self.emergency = emergency
        self.location = location
        self.state = "trying"
        self.started_at = now
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.result = ""
        self.final_status = 0
        self.ended_by = ""
        self.last_activity = now
        self.identity: Identity | None = None
        """Who placed it (new calls only; not kept across a restart)."""

    @property
    def active(self) -> bool:
        return self.ended_at is None

    @property
    def record_result(self) -> str:
        """The call record's result for an ended call."""
        if self.answered_at is not None:
            return "answered"
        status = self.final_status
        if status == 487:
            return "cancelled"
        if status in (486, 600):
            return "busy"
        if status in (408, 480):
            return "no-answer"
        if status in (403, 404, 484, 488, 603, 604):
            return "rejected"
        return "failed"

    def matches(self, request: Request) -> bool:
        tags = {request.from_tag, request.to_tag}
        return self.caller_tag in tags and bool(self.to_tags & tags)


class Branch:
    """One client transaction of a response context, towards one target."""

    __slots__ = (
        "cancel_requested",
        "cancel_sent",
        "ctx",
        "done",
        "flow",
        "provisional",
        "request",
        "stage",
        "target",
        "timed_out",
        "timer_c_generation",
        "tx",
    )

    def __init__(self, ctx: ResponseContext, request: Request, flow: Flow, target: str,
                 stage: int) -> None:
        self.ctx = ctx
        self.request = request
        self.flow = flow
        self.target = target
        self.stage = stage
        self.tx: ClientTransaction | None = None
        self.provisional = False
        self.done = False
        self.cancel_requested = False
        self.cancel_sent = False
        self.timed_out = False
        self.timer_c_generation = 0

    # -- TransactionUser ----------------------------------------------------------------------

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        self.ctx.proxy._branch_response(self, response, now)

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self.ctx.proxy._branch_failed(self, 408, now)

    def on_transport_error(self, tx: ClientTransaction, now: float) -> None:
        self.ctx.proxy._branch_failed(self, 503, now)


class ResponseContext:
    """RFC 3261 16.7: everything about one request being proxied."""

    __slots__ = ("answered", "branches", "call", "cancelled", "deadline", "fallback_index",
                 "final_sent", "observer", "proxy", "record_route", "request", "responses",
                 "server_tx", "stage_generation", "stage_index", "stages", "stopped",
                 "timed_out")

    def __init__(self, proxy: Proxy, server_tx: ServerTransaction, request: Request,
                 stages: list[Stage], *, call: Call | None, record_route: bool,
                 deadline: float | None = None, fallback_index: int | None = None) -> None:
        self.proxy = proxy
        self.server_tx = server_tx
        self.request = request
        self.stages = stages
        self.call = call
        self.record_route = record_route
        self.deadline = deadline
        """Sequential ring groups: when the members' time is up (the fallback may still ring)."""
        self.fallback_index = fallback_index
        self.stage_index = -1
        self.stage_generation = 0
        self.branches: list[Branch] = []
        self.responses: list[tuple[Response, bool]] = []
        """Final responses so far, each with whether it was made here (not relayed)."""
        self.answered = False
        self.final_sent = False
        self.cancelled = False
        self.stopped = False
        self.timed_out = False
        self.observer: Callable[[Response, float], None] | None = None
        """Sees every response relayed upstream (in-path mode mirrors REGISTER's 2xx)."""


class _Sink:
    """Transaction user for requests whose answers we do not need (CANCEL, our own BYE)."""

    def on_response(self, tx: Any, response: Response, now: float) -> None:
        return None

    def on_timeout(self, tx: Any, now: float) -> None:
        return None

    def on_transport_error(self, tx: Any, now: float) -> None:
        return None


_SINK = _Sink()


class Proxy:
    def __init__(self, core: SipCore) -> None:
        self.core = core
        self.calls: dict[str, list[Call]] = {}
        """Active and recently ended calls by Call-ID."""
        self.recently_ended: collections.deque[Call] = collections.deque(maxlen=64)
        """The last calls that ended (for inspection; call records are the real history)."""
        self._changed: set[Call] = set()
        self._timers: list[tuple[float, int, Any, str, int]] = []
        self._sequence = itertools.count()
        self.contexts: dict[int, ResponseContext] = {}

    def take_changed(self) -> set[Call]:
        """The calls whose state changed since the last call (to persist)."""
        changed, self._changed = self._changed, set()
        return changed

    # -- timers -------------------------------------------------------------------------------

    def _schedule(self, when: float, owner: Any, kind: str, generation: int) -> None:
        heapq.heappush(self._timers, (when, next(self._sequence), owner, kind, generation))

    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timers(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, owner, kind, generation = heapq.heappop(self._timers)
            if kind == "stage" and owner.stage_generation == generation:
                self._stage_timeout(owner, now)
            elif kind == "timer_c" and owner.timer_c_generation == generation:
                self._timer_c(owner, now)
            elif kind == "forget":
                self._forget_call(owner)
            elif kind == "idle" and owner.active:
                if now - owner.last_activity >= self.core.settings.dialog_idle_timeout_s:
                    self._end_call(owner, now, result="idle timeout", by="proxy")
                    self._schedule(now, owner, "forget", 0)
                else:
                    self._schedule(owner.last_activity
                                   + self.core.settings.dialog_idle_timeout_s, owner, "idle", 0)

    # -- new requests -------------------------------------------------------------------------

    def route_new(self, request: Request, tx: ServerTransaction, destination: Destination,
                  identity: Identity, now: float) -> None:
        core = self.core
        settings = core.settings
        if identity.kind == "trunk" and destination.kind in ("external", "emergency"):
            tx.respond(request.response(403, "No Trunk To Trunk Calls"), now)
            return
        if destination.kind == "unknown":
            tx.respond(request.response(404), now)
            return
        deadline = fallback_index = None
        if destination.kind in ("external", "emergency"):
            if core.gateway is None:
                core.notice("call-refused", f"{destination.kind} call to {destination.number} "
                            "refused: no trunk gateway configured (sip.gateway_uri)",
                            {"number": destination.number})
                if destination.kind == "emergency" and request.method == "INVITE":
                    emergency_not_placed(core, request, destination.number, identity,
                                         f"sip:{request.call_id}",
                                         why="no trunk gateway configured (sip.gateway_uri)")
                # 500, not 503: a phone treats the proxy's own 503 as "server overloaded" and
                # may shun it (RFC 3261 21.5.4), local calls and registrations included
                tx.respond(request.response(500, "No Trunk Gateway"), now)
                return
            stages = [Stage((), settings.timer_c_s, gateway_user=destination.number)]
            self._mark_trunk_call(request, destination, identity)
        elif destination.kind == "extension":
            stages = [Stage((destination.number,), settings.ring_timeout_s)]
        else:
            group = destination.ring_group
            if group.strategy == "simultaneous":
                stages = [Stage(group.members, group.timeout_s)]
            else:
                stages = [Stage((m,), group.member_timeout_s) for m in group.members]
                deadline = now + group.timeout_s
            if group.fallback:
                fallback_index = len(stages)
                stages.append(Stage((group.fallback,), settings.ring_timeout_s))
        call = None
        if request.method == "INVITE":
            if destination.kind != "emergency" and sum(
                    1 for calls in self.calls.values() for c in calls if c.active) \
                    >= settings.max_calls:  # an emergency call is never refused for it
                tx.respond(request.response(503, "Too Many Calls"), now)
                return
            caller = identity.extension or (
                f"trunk:{request.from_.uri.user or '?'}" if identity.kind == "trunk"
                else f"{request.from_.uri.user or '?'} (unverified)")
            emergency = destination.kind == "emergency"
            location = None
            if emergency:
                found = core.directory.location_of_extension(identity.extension or "")
                location = found.dispatchable() if found else None
            direction = "inbound" if identity.kind == "trunk" else (
                destination.kind if destination.kind in ("emergency", "outbound")
                else "outbound" if destination.kind == "external" else "internal")
            gateway_record = (request.headers.get("x-jbc-call-record")
                              if identity.kind == "trunk" else None)
            call = Call(call_id=request.call_id, caller_tag=request.from_tag or "",
                        caller=caller, callee=destination.number, kind=destination.kind,
                        direction=direction, emergency=emergency, location=location, now=now,
                        record_id=gateway_record, owns_record=gateway_record is None)
            call.identity = identity
            if destination.kind in ("external", "emergency"):
                request.headers.set("X-JBC-Call-Record", call.id)
            self.calls.setdefault(call.call_id, []).append(call)
            self._changed.add(call)
            if call.emergency:
                how = identity.verified_by if identity.kind == "extension" else "unverified"
                core.notice("emergency-call", f"emergency call to {destination.number} from "
                            f"{caller} (caller {how})",
                            {"caller": caller, "number": destination.number,
                             "call_id": request.call_id, "verified_by": how})
            if core.gateway_down is None:
                tx.respond(request.response(100), now)
        if destination.kind in ("external", "emergency") and core.gateway_down is not None:
            self._refuse_gateway_down(request, tx, destination, identity, call=call, now=now)
            return
        ctx = ResponseContext(self, tx, request, stages, call=call,
                              record_route=request.method == "INVITE", deadline=deadline,
                              fallback_index=fallback_index)
        self.contexts[id(tx)] = ctx
        self._next_stage(ctx, now)

    def _refuse_gateway_down(self, request: Request, tx: ServerTransaction,
                             destination: Destination, identity: Identity, *,
                             call: Call | None, now: float) -> None:
        """The trunk gateway is not running: a final answer at once rather than a gateway that
        cannot answer timing out. 500 with Retry-After, as when the gateway finds no trunk free
        (its 503 becomes our 500, 16.7 step 6): a 503 of our own would tell the phone that
        this proxy is unavailable (RFC 3261 21.5.4), and it would stop sending us anything,
        registrations and local calls included, for the Retry-After. The call is recorded as
        failed; an emergency call is noticed as not placed, so the cloud is alerted."""
        core = self.core
        retry = core.gateway_retry_after_s
        emergency = destination.kind == "emergency"
        details: dict[str, object] = {"number": destination.number, "emergency": emergency,
                                      "retry_after_s": retry}
        if call is not None:
            details.update(call=call.id, caller=call.caller, location=call.location)
        if identity.kind == "extension":
            details.update(extension=identity.extension, verified_by=identity.verified_by)
        why = f"the trunk gateway is not running ({core.gateway_down})"
        core.notice("call-refused", f"{destination.kind} call to {destination.number} "
                    f"refused: {why}; Retry-After {retry} s", details)
        if emergency and call is not None:  # the gateway, which alerts the cloud, never saw it
            emergency_not_placed(core, request, destination.number, identity, call.id,
                                 why=why, location=call.location)
            notify_on_site(self, call, why, now)
        response = request.response(500, "Trunk Gateway Down",
                                     headers=[("Retry-After", str(retry))])
        if call is not None:
            call.final_status = response.status
            self._end_call(call, now, result=f"{response.status} {response.reason}",
                           by="proxy", failed=True)
            self._schedule(now + 64 * core.settings.timers.t1, call, "forget", 0)
        tx.respond(response, now)

    def _mark_trunk_call(self, request: Request, destination: Destination,
                         identity: Identity) -> None:
        """What the trunk gateway reads: the verified caller, and the emergency marking."""
        headers = request.headers
        headers.remove("p-asserted-identity")
        if identity.kind == "extension":
            headers.add("P-Asserted-Identity",
                        f"<sip:{identity.extension}@{self.core.settings.realm}>")
        if destination.kind == "emergency":
            headers.set("Priority", "emergency")
            headers.set("Resource-Priority", "esnet.0")
        else:
            headers.remove("priority")
            headers.remove("resource-priority")

    def forward_in_dialog(self, request: Request, tx: ServerTransaction, now: float) -> bool:
        """A request inside a dialog we record-routed: to the next hop, one branch. Returns
        whether the dialog is one we know."""
        call = self._find_call(request)
        if call is None:
            tx.respond(request.response(481), now)
            return False
        call.last_activity = now
        target = self._next_hop(request, now)
        if target is None:
            tx.respond(request.response(404, "Dialog Peer Unreachable"), now)
            return True
        if request.method == "BYE":
            ended_by = "caller" if request.from_tag == call.caller_tag else "callee"
            self._end_call(call, now, result="completed", by=ended_by)
            self._schedule(now + 64 * self.core.settings.timers.t1, call, "forget", 0)
        elif request.method in ("INVITE", "UPDATE") and call.active and request.body:
            held = _holds(request.body)
            if held is not None and call.answered_at is not None:
                call.state = "on hold" if held else "answered"
                self._changed.add(call)
        flow, _ = target
        self.relay(request, tx, flow, now)
        return True

    def relay(self, request: Request, tx: ServerTransaction, flow: Flow,
              now: float) -> ResponseContext:
        """Forward ``request`` to ``flow`` as one stateful branch, its Request-URI kept (RFC
        3261 16.6): in-dialog requests here, and everything in-path mode relays."""
        ctx = ResponseContext(self, tx, request, [], call=None, record_route=False)
        self.contexts[id(tx)] = ctx
        ctx.stage_index = 0
        if not self._start_branch(ctx, None, flow, now):
            ctx.responses.append((request.response(503, "Next Hop Unreachable"), True))
        self._check_done(ctx, now)
        return ctx

    def relay_ack(self, request: Request, flow: Flow) -> None:
        """Forward an ACK for a 2xx to ``flow``: end to end, stateless, with a branch derived
        from the incoming one (16.11), so a retransmitted ACK gets the same."""
        forwarded = request.copy()
        _decrement_max_forwards(forwarded)
        incoming = request.top_via.branch or ""
        branch = MAGIC_COOKIE + hashlib.blake2b(incoming.encode(), digest_size=8).hexdigest()
        if self.add_via(forwarded, flow, branch):
            self.core.layer.transmit(Transmit(forwarded.to_bytes(), flow))

    def knows(self, request: Request) -> bool:
        """Whether ``request`` belongs to a call this proxy set up (its dialog ends here)."""
        return self._find_call(request) is not None

    def abandon(self, ctx: ResponseContext, now: float) -> None:
        """Stop proxying ``ctx`` without answering upstream (someone else answers now):
        pending branches are cancelled, and a late 2xx is acknowledged and hung up."""
        ctx.final_sent = True
        ctx.stage_generation += 1
        for branch in ctx.branches:
            self._cancel_branch(branch, now)
        self._finish(ctx)

    def forward_ack(self, request: Request, now: float) -> bool:
        """ACK for a 2xx: end to end, no transaction (16.11: stateless, stable branch).
        Returns whether the dialog is one we know."""
        call = self._find_call(request)
        if call is None:
            self.core.count("ack_unmatched")
            return False
        target = self._next_hop(request, now)
        if target is None:
            return True
        flow, _ = target
        self.relay_ack(request, flow)
        return True

    def cancel(self, invite_tx: ServerInviteTransaction, now: float) -> None:
        """RFC 3261 16.10: the caller cancelled; cancel every pending branch."""
        ctx = self.contexts.get(id(invite_tx))
        if ctx is None or ctx.final_sent or ctx.answered:
            return
        ctx.cancelled = True
        ctx.stopped = True
        if ctx.call is not None:
            ctx.call.ended_by = "caller"
        for branch in ctx.branches:
            self._cancel_branch(branch, now)
        self._check_done(ctx, now)

    # -- stages and branches ------------------------------------------------------------------

    def _next_stage(self, ctx: ResponseContext, now: float) -> None:
        """Start the next stage that has someone to ring; with none left, answer upstream."""
        core = self.core
        while True:
            ctx.stage_index += 1
            ctx.stage_generation += 1
            if ctx.stage_index >= len(ctx.stages):
                self._send_best(ctx, now)
                return
            in_group = ctx.fallback_index is None or ctx.stage_index < ctx.fallback_index
            if in_group and ctx.deadline is not None and now >= ctx.deadline:
                ctx.timed_out = True  # the group's time is up: only the fallback may ring
                if ctx.fallback_index is None:
                    self._send_best(ctx, now)
                    return
                ctx.stage_index = ctx.fallback_index - 1
                continue
            stage = ctx.stages[ctx.stage_index]
            started = 0
            if stage.gateway_user is not None:
                gateway = core.gateway.replace(user=stage.gateway_user)
                flow = core.resolve(gateway, now)
                if flow is not None:
                    started += self._start_branch(ctx, gateway, flow, now)
            else:
                for number in stage.numbers:
                    for binding in core.registrations.lookup(number, now):
                        flow = core.binding_flow(binding)
                        if flow is not None:
                            target = contact_target(binding.uri, ctx.request.uri, flow)
                            started += self._start_branch(ctx, target, flow, now)
            if not started:
                continue
            timeout = stage.timeout_s
            if in_group and ctx.deadline is not None:
                remaining = ctx.deadline - now
                timeout = remaining if timeout is None else min(timeout, remaining)
            if timeout is not None:
                self._schedule(now + timeout, ctx, "stage", ctx.stage_generation)
            return

    def _start_branch(self, ctx: ResponseContext, target: SipUri | None, flow: Flow,
                      now: float) -> bool:
        request = ctx.request.copy()
        if target is not None:
            request.set_uri(target)
        _decrement_max_forwards(request)
        reachable_contact(request, flow)
        if ctx.record_route:
            self._record_route(request, ctx.server_tx.flow, flow)
        if not self.add_via(request, flow, new_branch()):
            return False  # no listener for that transport: nothing to send it from
        branch = Branch(ctx, request, flow, str(target or request.uri_text), ctx.stage_index)
        ctx.branches.append(branch)
        branch.tx = self.core.layer.new_client(request, flow, reliable=flow.reliable,
                                               user=branch, now=now)
        if request.method == "INVITE":
            self._arm_timer_c(branch, now)
        return True

    def _arm_timer_c(self, branch: Branch, now: float) -> None:
        branch.timer_c_generation += 1
        self._schedule(now + self.core.settings.timer_c_s, branch, "timer_c",
                       branch.timer_c_generation)

    def _timer_c(self, branch: Branch, now: float) -> None:
        if branch.done:
            return
        branch.timed_out = True
        self._cancel_branch(branch, now)
        self._check_done(branch.ctx, now)

    def _stage_timeout(self, ctx: ResponseContext, now: float) -> None:
        if ctx.final_sent or ctx.answered:
            return
        ctx.timed_out = True
        for branch in ctx.branches:
            if branch.stage == ctx.stage_index and not branch.done:
                branch.timed_out = True
                self._cancel_branch(branch, now)
        self._check_done(ctx, now)

    def _cancel_branch(self, branch: Branch, now: float) -> None:
        """Cancel a pending INVITE branch: at once if it has had a provisional response,
        else as soon as it does (RFC 3261 9.1). Either way the stage stops waiting for it."""
        if branch.done or branch.request.method != "INVITE":
            return
        branch.cancel_requested = True
        if branch.provisional:
            self._send_cancel(branch, now)
        else:
            branch.done = True  # abandoned: a late answer is cancelled or ended then

    def _send_cancel(self, branch: Branch, now: float) -> None:
        if branch.cancel_sent:
            return
        branch.cancel_sent = True
        invite = branch.request
        items: list[tuple[str, str, str]] = [("via", "Via", invite.top_via.text)]
        for key, name, value in invite.headers._items:
            if key in ("from", "to", "call-id", "route"):
                items.append((key, name, value))
        items.append(("max-forwards", "Max-Forwards", "70"))
        items.append(("cseq", "CSeq", f"{invite.cseq[0]} CANCEL"))
        cancel = Request("CANCEL", invite.uri_text, Headers(items))
        self.core.layer.new_client(cancel, branch.flow, reliable=branch.flow.reliable,
                                   user=_SINK, now=now)

    def _branch_response(self, branch: Branch, response: Response, now: float) -> None:
        ctx = branch.ctx
        status = response.status
        if status < 200:
            branch.provisional = True
            if branch.request.method == "INVITE":
                self._arm_timer_c(branch, now)
            if branch.cancel_requested:
                self._send_cancel(branch, now)
                return
            if status == 100 or ctx.final_sent:
                return
            tag = response.to_tag
            if ctx.call is not None and tag:
                ctx.call.to_tags.add(tag)  # an early dialog: PRACK and UPDATE may follow
            if ctx.call is not None and ctx.call.state == "trying" and status in (180, 183):
                ctx.call.state = "ringing"
                self._changed.add(ctx.call)
            self._relay(ctx, response, now)
            return
        was_done = branch.done
        branch.done = True
        if status < 300:
            if ctx.final_sent and not ctx.answered:
                self._end_orphan(branch, response, now)
                return
            ctx.answered = True
            if ctx.call is not None:
                self._answered(ctx.call, branch, response, now)
            self._relay(ctx, response, now)
            for other in ctx.branches:
                if other is not branch:
                    self._cancel_branch(other, now)
            ctx.stage_generation += 1  # no stage timer and no further stage
            self._finish(ctx)
            return
        if was_done and not branch.cancel_requested:
            return
        if branch.timed_out and status == 487:
            ctx.responses.append((ctx.request.response(408), True))  # our timeout, not theirs
        else:
            ctx.responses.append((response, False))
        if status >= 600:
            ctx.stopped = True
            for other in ctx.branches:
                self._cancel_branch(other, now)
        self._check_done(ctx, now)

    def _branch_failed(self, branch: Branch, status: int, now: float) -> None:
        if branch.done:
            return
        branch.done = True
        branch.ctx.responses.append((branch.ctx.request.response(status), True))
        self._check_done(branch.ctx, now)

    def _check_done(self, ctx: ResponseContext, now: float) -> None:
        if ctx.final_sent or ctx.answered:
            return
        if any(not b.done for b in ctx.branches if b.stage == ctx.stage_index):
            return
        if ctx.stopped or ctx.stage_index >= len(ctx.stages) - 1:
            self._send_best(ctx, now)
        else:
            self._next_stage(ctx, now)

    def _send_best(self, ctx: ResponseContext, now: float) -> None:
        if ctx.final_sent or ctx.answered:
            return
        ctx.final_sent = True
        request = ctx.request
        if ctx.cancelled:
            response, local = request.response(487), True
        elif ctx.responses:
            response, local = best_response(ctx.responses)
            if response.status == 503:  # 16.7 step 6: not "this proxy is unavailable"
                retry_after = response.headers.get("retry-after")
                response, local = request.response(500, "Downstream Unavailable"), True
                if retry_after:  # e.g. the gateway's "no trunk free, try in 30 s"
                    response.headers.set("Retry-After", retry_after)
        elif ctx.timed_out:
            response, local = request.response(408), True
        elif not ctx.stages:
            response, local = request.response(503, "Next Hop Unreachable"), True
        else:
            response, local = request.response(480), True
        call = ctx.call
        if call is not None and call.emergency and call.identity is not None and not any(
                branch.provisional for branch in ctx.branches) and all(
                generated for _, generated in ctx.responses):
            # Not a word from the gateway (none to reach, no answer, a transport error): it
            # never saw the call, so it raised no alert. The cloud must still learn of it.
            emergency_not_placed(self.core, request, call.callee, call.identity, call.id,
                                 why=f"{response.status} {response.reason}",
                                 location=call.location)
        if ctx.call is not None:
            ctx.call.final_status = response.status
            self._end_call(ctx.call, now, result=f"{response.status} {response.reason}",
                           by=ctx.call.ended_by or "", failed=True)
            self._schedule(now + 64 * self.core.settings.timers.t1, ctx.call, "forget", 0)
        if local:
            ctx.server_tx.respond(response, now)
        else:
            self._relay(ctx, response, now)
        self._finish(ctx)

    def _relay(self, ctx: ResponseContext, response: Response, now: float) -> None:
        """Forward a downstream response upstream: without our Via (16.7 step 9)."""
        relayed = response.copy()
        relayed.headers.pop_first_value("via")
        reachable_contact(relayed, ctx.server_tx.flow)
        ctx.server_tx.respond(relayed, now)
        if ctx.observer is not None:
            ctx.observer(response, now)

    def _finish(self, ctx: ResponseContext) -> None:
        self.contexts.pop(id(ctx.server_tx), None)

    def forget_context(self, tx: ServerTransaction) -> None:
        self.contexts.pop(id(tx), None)

    # -- dialogs and call records -------------------------------------------------------------

    def _answered(self, call: Call, branch: Branch, response: Response, now: float) -> None:
        tag = response.to_tag
        if tag:
            call.to_tags.add(tag)
        if call.answered_at is None:
            call.answered_at = now
            call.state = "answered"
            call.last_activity = now
            self._changed.add(call)
            self._schedule(now + self.core.settings.dialog_idle_timeout_s, call, "idle", 0)

    def _end_call(self, call: Call, now: float, *, result: str, by: str,
                  failed: bool = False) -> None:
        if call.ended_at is not None:
            return
        call.ended_at = now
        call.state = "failed" if failed else "ended"
        call.result = result
        call.ended_by = by
        self._changed.add(call)
        self.recently_ended.append(call)

    def _forget_call(self, call: Call) -> None:
        calls = self.calls.get(call.call_id)
        if calls and call in calls:
            calls.remove(call)
            if not calls:
                del self.calls[call.call_id]

    def _find_call(self, request: Request) -> Call | None:
        for call in self.calls.get(request.call_id, ()):
            if call.matches(request):
                return call
        return None

    def restore_call(self, call: Call, now: float) -> None:
        """An answered call persisted before a restart: route its in-dialog requests again."""
        self.calls.setdefault(call.call_id, []).append(call)
        self._schedule(now + self.core.settings.dialog_idle_timeout_s, call, "idle", 0)

    def active_calls(self) -> list[Call]:
        return [c for calls in self.calls.values() for c in calls if c.active]

    def _end_orphan(self, branch: Branch, response: Response, now: float) -> None:
        """A 2xx after the caller already got a final answer: ACK it and hang it up."""
        invite = branch.request
        contact = response.addresses("contact")
        target = contact[0].uri if contact else invite.uri
        if not isinstance(target, SipUri):
            return
        common = [(key, name, value) for key, name, value in invite.headers._items
                  if key in ("from", "call-id")]
        common.append(("to", "To", response.headers.get("to") or ""))
        common.append(("max-forwards", "Max-Forwards", "70"))
        for method, number in (("ACK", invite.cseq[0]), ("BYE", invite.cseq[0] + 1)):
            items = [*common, ("cseq", "CSeq", f"{number} {method}")]
            request = Request(method, str(target), Headers(list(items)))
            self.add_via(request, branch.flow, new_branch())
            if method == "ACK":
                self.core.layer.transmit(Transmit(request.to_bytes(), branch.flow))
            else:
                self.core.layer.new_client(request, branch.flow, reliable=branch.flow.reliable,
                                           user=_SINK, now=now)

    # -- routing helpers ----------------------------------------------------------------------

    def _next_hop(self, request: Request, now: float) -> tuple[Flow, SipUri] | None:
        """Loose routing: the first remaining Route, else the Request-URI (16.6 step 7)."""
        routes = request.headers.values("route")
        if routes:
            try:
                first = parse_uri(routes[0].strip().lstrip("<").split(">", 1)[0])
            except UriError:
                return None
        else:
            first = request.uri
        if not isinstance(first, SipUri):
            return None
        flow = self.core.resolve(first, now)
        return None if flow is None else (flow, first)

    def _record_route(self, request: Request, inbound: Flow, outbound: Flow) -> None:
        core = self.core
        outbound_uri = core.record_route_uri(outbound.transport)
        if inbound.transport != outbound.transport:
            # RFC 5658: one entry per side; the callee sees the outbound one first.
            request.headers.add_before("Record-Route", core.record_route_uri(inbound.transport))
        request.headers.add_before("Record-Route", outbound_uri)

    def add_via(self, request: Request, flow: Flow, branch: str) -> bool:
        sent_by = self.core.sent_by(flow.transport)
        if sent_by is None and flow.connection is not None:
            # A connection we opened (in-path mode's to the cloud): answers come back on it,
            # so the sent-by only has to name us.
            sent_by = self.core.sent_by("tcp") or self.core.sent_by("udp")
        if sent_by is None:
            return False
        request.headers.add_before(
            "Via", f"SIP/2.0/{flow.transport.upper()} {sent_by};rport;branch={branch}")
        request.forget("via")
        return True


def _decrement_max_forwards(request: Request) -> None:
    value = request.headers.get("max-forwards")
    hops = int(value) if value is not None and value.isdigit() else 70
    request.headers.set("Max-Forwards", str(max(0, hops - 1)))


def _holds(body: bytes) -> bool | None:
    """Whether an SDP offer puts the call on hold (sendonly/inactive); None if no SDP."""
    text = body.decode("utf-8", "replace")
    if "v=0" not in text:
        return None
    if "a=sendonly" in text or "a=inactive" in text:
        return True
    return "c=IN IP4 0.0.0.0" in text


_FOUR_XX_PREFERENCE = {486: 0, 600: 0, 401: 1, 407: 1, 415: 2, 420: 2, 484: 2, 488: 2,
                       404: 3, 480: 4, 408: 5, 487: 6}


def best_response(responses: list[tuple[Response, bool]]) -> tuple[Response, bool]:
    """RFC 3261 16.7 step 6: a 6xx if any, else the lowest class, and within 4xx the most
    telling answer (busy beats not-found beats unavailable beats timeout)."""
    def rank(entry: tuple[Response, bool]) -> tuple[int, int]:
        status = entry[0].status
        if status >= 600:
            return (0, 0)
        if status < 400:
            return (1, status)
        if status < 500:
            return (2, _FOUR_XX_PREFERENCE.get(status, 3))
        return (3, status)

    return min(responses, key=rank)


def call_state_row(call: Call, now: float) -> dict[str, Any]:
    since = call.answered_at if call.answered_at is not None else call.started_at
    return {"id": call.id, "call_id": call.call_id, "caller": call.caller,
            "callee": call.callee, "kind": call.kind, "state": call.state,
            "emergency": call.emergency, "duration_s": round(now - call.started_at, 1),
            "talking_s": round(now - since, 1) if call.answered_at is not None else 0.0}
