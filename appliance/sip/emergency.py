"""What the proxy does for an emergency call it cannot hand to the trunk gateway (none
configured, not running, or not answering at all): the notice the SIP service turns into the
same cloud alert the gateway raises for the calls it places, and, while the gateway is down,
the on-site MESSAGE to the directory's emergency notify extensions. Pure, like the proxy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contacts import contact_target
from .message import Headers, Request, Response, new_tag
from .transaction import ClientTransaction, new_branch
from .uri import SipUri

if TYPE_CHECKING:
    from .core import SipCore
    from .proxy import Call, Identity, Proxy


def emergency_not_placed(core: SipCore, request: Request, number: str, identity: Identity,
                         call_key: str, *, why: str, location: str | None = None) -> None:
    """An emergency call the gateway never got: a notice the service turns into the same
    cloud alert the gateway raises for the calls it places (and a journal entry)."""
    verified = identity.kind == "extension"
    extension = identity.extension if verified else (request.from_.uri.user or None
                                                     if isinstance(request.from_.uri,
                                                                   SipUri) else None)
    if location is None and verified:
        found = core.directory.location_of_extension(identity.extension or "")
        location = found.dispatchable() if found else None
    who = f"ext {extension}" if extension else "an unknown caller"
    core.notice("emergency-call-not-placed",
                f"EMERGENCY CALL NOT PLACED: {who}"
                f"{'' if verified else ' (unverified)'} dialled {number}: {why}",
                {"call": call_key, "extension": extension, "caller_verified": verified,
                 "number": number, "location": location, "why": why})


def notify_on_site(proxy: Proxy, call: Call, why: str, now: float) -> None:
    """The on-site notification the gateway would have made (it is not running): a SIP
    MESSAGE to every registered phone of the directory's emergency notify_extensions, so
    someone on site knows that a person dialled for help and was not connected."""
    core = proxy.core
    targets = [e for e in core.directory.emergency.notify_extensions
               if e != call.caller]
    where = call.location or "location unknown"
    text = (f"EMERGENCY CALL NOT CONNECTED: {call.caller} dialled {call.callee} ({why}). "
            f"Location: {where}").encode()[:1000]
    realm = core.settings.realm
    reached = []
    for target in targets:
        for binding in core.registrations.lookup(target, now):
            flow = core.binding_flow(binding)
            if flow is None:
                continue
            headers = Headers()
            headers.add("Max-Forwards", "70")
            headers.add("From", f'"EMERGENCY" <sip:emergency-notify@{realm}>;tag={new_tag()}')
            headers.add("To", f"<sip:{target}@{realm}>")
            headers.add("Call-ID", f"{new_tag()}{new_tag()}@{realm}")
            headers.add("CSeq", "1 MESSAGE")
            headers.add("Priority", "emergency")
            headers.add("Content-Type", "text/plain;charset=utf-8")
            uri = contact_target(binding.uri, None, flow)
            message = Request("MESSAGE", str(uri), headers, text)
            if not proxy.add_via(message, flow, new_branch()):
                continue
            core.layer.new_client(message, flow, reliable=flow.reliable,
                                  user=OnSiteNotice(core, target, call.id), now=now)
            reached.append(target)
    core.notice("emergency-notify", f"emergency call {call.id} not connected: telling "
                + (", ".join(dict.fromkeys(reached)) if reached else
                   "no one (no notify extension has a registered phone)")
                + " by MESSAGE", {"call": call.id, "extensions": list(dict.fromkeys(reached)),
                                  "configured": targets})


class OnSiteNotice:
    """The transaction user of one on-site emergency MESSAGE: its outcome is journalled."""

    def __init__(self, core: Any, extension: str, call: str) -> None:
        self.core = core
        self.extension = extension
        self.call = call

    def on_response(self, tx: ClientTransaction, response: Response, now: float) -> None:
        if response.status < 200:
            return
        ok = response.status < 300
        self.core.notice("emergency-notified" if ok else "emergency-notify-failed",
                         f"MESSAGE about emergency call {self.call} to {self.extension}: "
                         f"{response.status} {response.reason}",
                         {"call": self.call, "extension": self.extension,
                          "status": response.status})

    def on_timeout(self, tx: ClientTransaction, now: float) -> None:
        self._failed("no answer")

    def on_transport_error(self, tx: ClientTransaction, now: float) -> None:
        self._failed("could not be sent")

    def _failed(self, why: str) -> None:
        self.core.notice("emergency-notify-failed", f"MESSAGE about emergency call {self.call} "
                         f"to {self.extension}: {why}", {"call": self.call,
                                                          "extension": self.extension})
