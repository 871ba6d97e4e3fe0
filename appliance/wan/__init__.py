"""WAN health: probes, netlink link watch, and the failover state machine.

* ``events``: what the rest of the appliance sees (:class:`WanState`, ``WanStateChanged``,
  the ``WanView`` protocol).
* ``config``: the [wan] section.
* ``observations``: probe results and link states, the values the shell hands the core.
* ``probes``: ICMP echo, DNS (``dns`` codec), TLS handshake, HTTPS GET and SIP OPTIONS
  (``sip_options`` codec), all bound to the WAN interface.
* ``linkwatch``: carrier, operstate, addresses and default route from netlink (pyroute2).
* ``targets``, ``decision``, ``machine``: the pure decision core and its state machine table;
  ``quality``: what a call would get over the link (loss, jitter, E-model MOS: brownouts).
* ``service``: the asyncio shell, the 'wan' subsystem; ``store``: the state across restarts.
* ``errors``: the package's one error tree (:class:`~appliance.wan.errors.WanError`).
"""
