"""Which URI reaches a registered phone, and what a phone can be sent back: a phone that
registered a sips: Contact is reached over its TLS flow as sip:...;transport=tls unless the
caller asked for sips, and a sips: Contact leaving on a flow that is not TLS is rewritten the
same way. Pure."""

from __future__ import annotations

from typing import Any

from .errors import SipError
from .flow import Flow
from .message import Request, Response
from .uri import NameAddr, SipUri, UriError


def contact_target(contact: SipUri, asked: Any, flow: Flow) -> SipUri:
    """The Request-URI for a branch to a registered ``contact``. A sips: Request-URI means TLS
    on every hop (RFC 5630), and a phone that gets one insists the caller's Contact is sips:
    too (pjsua: 480, Warning 381 "SIPS Required"). A phone that registered a sips: Contact is
    therefore reached as sip:...;transport=tls over its own TLS flow when the caller did not
    ask for sips (a phone on UDP, the gateway's trunk calls): still TLS on the hop to it, and
    the gateway sees transport=tls in the Record-Route, so its legs to it stay SRTP-only."""
    if contact.scheme != "sips" or flow.transport != "tls" or (
            isinstance(asked, SipUri) and asked.scheme == "sips"):
        return contact
    return _sip_over_tls(contact)


def _sip_over_tls(uri: SipUri) -> SipUri:
    params = tuple((key, value) for key, value in uri.params if key != "transport")
    return uri.replace(scheme="sip", params=(*params, ("transport", "tls")))


def reachable_contact(message: Request | Response, flow: Flow) -> None:
    """The other half of :func:`contact_target`: a sips: Contact leaving on a flow that is
    not TLS (the gateway on loopback, a phone on UDP) becomes sip:...;transport=tls. The
    receiver could never send its in-dialog requests to a sips: target over what it has
    (pjsua aborts on the ACK it cannot send); they come through our Record-Route, and we
    reach the phone over TLS."""
    if flow.transport == "tls":
        return
    values = message.headers.get_all("contact")
    if not any("sips:" in value.lower() for value in values):
        return
    try:
        contacts = [NameAddr.parse(value) for value in message.headers.values("contact")]
    except (UriError, SipError):
        return  # not ours to repair: the receiver answers it
    rewritten = [NameAddr(_sip_over_tls(c.uri), display=c.display, params=c.params)
                 if isinstance(c.uri, SipUri) and c.uri.scheme == "sips" else c
                 for c in contacts]
    message.headers.set("Contact", ", ".join(str(c) for c in rewritten))
    message.forget("addresses:contact")
