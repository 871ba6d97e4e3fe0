"""The local SIP registrar and stateful proxy that serve the site's handsets in an outage.

Layout (RFC sections in brackets)::

    uri.py, message.py, parser.py   messages: URIs, name-addr, headers, framing [7, 19, 20, 25]
    transaction.py                  transactions and timers A-M [17, RFC 6026]
    digest.py                       digest authentication, MD5 and SHA-256 [22, RFC 7616/8760]
    registrar.py                    bindings per extension [10]
    dialplan.py                     where a dialled number goes
    proxy.py                        forking, ring groups, dialogs, CANCEL, ACK [16]
    emergency.py, contacts.py       an emergency call the gateway cannot take: cloud alert,
                                    on-site MESSAGE; which URI reaches a phone (sips:) [RFC 5630]
    abuse.py                        rate limits and lockouts
    relay.py, flowtoken.py          in-path mode: relaying to the cloud's edge [RFC 3327,
                                    5626, 5658], flow tokens naming a phone's flow
    core.py, flow.py                all of the above as one sans-I/O core; where a message
                                    came from and goes back to
    errors.py                       the package's one error tree (SipError)
    transport.py, service.py        the asyncio shell: UDP/TCP/TLS, timer, journal, commands
    cloudlink.py, fastfail.py       the shell's in-path parts: the TLS connection to the
                                    cloud's edge; nftables refusals toward the cloud in outage
    store.py                        what the shell persists: bindings and dialogs (SQLite)

Everything up to ``core.py`` is pure (bytes and time in; messages, notices, changes and one
deadline out, drained with ``take_*()``) and is tested on fake time; only the shell
(``transport.py``, ``service.py``, ``cloudlink.py``, ``fastfail.py``) and ``store.py`` touch
sockets, clocks, processes and the database. The package depends
on no other subsystem's package: the WAN state arrives as a ``WanVerdict``.

What the trunk gateway (``sip.gateway_uri``) can rely on
--------------------------------------------------------

* External and emergency calls arrive as INVITEs whose Request-URI user part is the number to
  dial, with the outside prefix already removed (``9 555 0100`` arrives as ``5550100``;
  ``9911`` as ``911``).
* Emergency calls carry ``Priority: emergency`` and ``Resource-Priority: esnet.0``
  (RFC 4412's emergency-services namespace); no other call does, whatever the handset sent.
  Emergency calls are routed even when the handset's credentials fail
  (``sip.emergency_without_auth``, on by default).
* ``P-Asserted-Identity: <sip:EXT@REALM>`` names the caller's extension when the caller
  authenticated, or, for an emergency call (never challenged), when the live registration it
  comes from identifies it (same flow, a registered Contact, or the only extension registered
  from that host: ``RegistrationStore.identify``); its location is in the directory
  (``Directory.location_of_extension``). It is absent only for an emergency call that matches
  no registration.
* ``X-JBC-Call-Record: <uuid>`` is the id of the call record the proxy keeps for the call
  (``appliance.store.call_records``), so that the gateway can add to that record instead of
  making a second one.
* Inbound trunk calls: the gateway sends an INVITE to an extension or ring-group number. Its
  address (the host and port of ``sip.gateway_uri``, plus ``sip.trusted_peers``) is trusted:
  no digest challenge, no rate limit. The proxy refuses to route a call from the gateway back
  out to an external or emergency number (403).
* The proxy record-routes every call, so in-dialog requests (BYE, re-INVITE, REFER, INFO)
  between a handset and the gateway pass through it, and ``jbc calls`` shows the call.
"""
