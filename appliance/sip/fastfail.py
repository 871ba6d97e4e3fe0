"""Fast fail (``sip.fast_fail``): when jbcd is the site's router, refuse phones' packets to
the cloud's SIP addresses at once during an outage, instead of letting them time out.

A backup-registrar phone learns of an outage when its REGISTER to the cloud goes unanswered:
32 s per attempt with RFC 3261's timers, several attempts before it tries its backup. When the
site's traffic to the cloud passes through the appliance, nftables can answer for the dead
cloud: a TCP reset for SIP over TCP/TLS, an ICMP port unreachable for UDP (RFC 3261 18.4: a
UA treats either as a transport failure and moves on). The rules live in a table of their own
(``inet jbc_fastfail``), in the forward path only, and are removed when the appliance stops
serving. How much this gives depends on the phone: see the README (UDP phones that ignore
ICMP errors gain nothing).

:func:`ruleset` is pure; :class:`FastFail` runs ``nft`` (CAP_NET_ADMIN) off the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from collections.abc import Sequence

log = logging.getLogger(__name__)

TABLE = "jbc_fastfail"
DEFAULT_PORTS = (5060, 5061)


def ruleset(targets: Sequence[tuple[str, int | None]], *, active: bool) -> str:
    """The nft script that installs (``active``) or removes the refusals for ``targets``
    (address, port or None for 5060 and 5061)."""
    script = f"table inet {TABLE}\ndelete table inet {TABLE}\n"
    if not active or not targets:
        return script
    rules = []
    for address, port in targets:
        family = "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
        ports = f"{port}" if port else "{ " + ", ".join(str(p) for p in DEFAULT_PORTS) + " }"
        rules.append(f"    {family} daddr {address} udp dport {ports} "
                     "reject with icmpx type port-unreachable")
        rules.append(f"    {family} daddr {address} tcp dport {ports} reject with tcp reset")
    return (script + f"table inet {TABLE} {{\n  chain forward {{\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            + "\n".join(rules) + "\n  }\n}\n")


class FastFail:
    def __init__(self, targets: Sequence[tuple[str, int | None]], *,
                 nft: str | None = None) -> None:
        self.targets = list(targets)
        self.nft = nft or shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin") or "nft"
        self.active = False
        self.problem: str | None = None
        self._lock = asyncio.Lock()

    async def set(self, active: bool) -> bool:
        """Install or remove the refusals; False (with :attr:`problem`) when nft failed."""
        async with self._lock:
            if active == self.active and self.problem is None:
                return True
            try:
                process = await asyncio.create_subprocess_exec(
                    self.nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                _, errors = await process.communicate(
                    ruleset(self.targets, active=active).encode())
            except OSError as error:
                self.problem = f"cannot run {self.nft}: {error}"
                log.error("fast fail: %s", self.problem)
                return False
            if process.returncode != 0:
                self.problem = (f"nft refused the rules ({process.returncode}): "
                                f"{errors.decode(errors='replace').strip()[:200]} "
                                "(jbcd needs CAP_NET_ADMIN and nftables)")
                log.error("fast fail: %s", self.problem)
                return False
            self.active = active
            self.problem = None
            return True
