"""The trunk gateway: handsets' outside and emergency calls onto the trunks, and calls arriving
on the trunks to the handsets.

Layout::

    policy.py, sipmsg.py        pure decisions (trunk choice, pre-emption, call-backs, numbers,
                                answers, record results) and what an INVITE tells us
    playout.py, echo.py         pure audio cores: trunk-side jitter buffer, echo canceller
    bridge.py                   one call's audio between the conference and the trunk queues
    pjthread.py                 pjsua2 owned by one thread, bridged to asyncio
    agent.py, media.py          the pjsua2 user agent and media ports (pjsua thread only)
    leg_events.py, tones.py     what the agent reports; the tones it plays
    callcore.py                 what every call shares: events, actions, phases, CallCore
    outbound.py, inbound.py,    each kind of call (a handset's outside or emergency call, a
    notification.py,            trunk call to the handsets, the on-site emergency notification,
    testcall.py                 'jbc test-call') as a pure (phase, event) -> (phase, actions)
                                table
    calls.py                    the session: one asyncio task per call that feeds its core and
                                carries out its actions
    service.py, config.py       the subsystem, its control commands and its [gateway] section
    events.py, errors.py        what it publishes on the bus; GatewayError, the one root of
                                every exception the package raises
    loopback.py                 'python -m appliance.gateway.loopback': the agent calls
                                itself, the image's proof that pjsua2 and media work

Seams: ``drivers/trunk.py`` (trunks, via the trunk pool), the SIP proxy (its package
docstring: what the gateway can rely on; the gateway listens where ``sip.gateway_uri`` says
and is a trusted peer of the proxy), ``appliance/store/call_records.py`` (one record per call,
see ``service.py``), ``appliance/directory`` (dial plan, emergency settings, inbound routes).
"""
