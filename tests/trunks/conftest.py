"""Shared pieces of the jbcd trunk tests: a config for the simulated modems, and 'jbc'."""

from __future__ import annotations

import asyncio
import json

from jbcbench.daemon import DaemonProcess
from jbcbench.modems.usb import UsbBus


def trunk_config(bus: UsbBus, *, lte_at_port=None, with_pots: bool = True) -> str:
    """[[trunks]] for a simulated Quectel EG25 ('lte1', found by USB identity, or at
    ``lte_at_port``) and, ``with_pots``, a simulated USR 5637 ('pots1'), both on ``bus``."""
    where = f'at_port = "{lte_at_port}"' if lte_at_port else 'usb_id = "2c7c:0125"'
    text = f"""
[[trunks]]
name = "lte1"
kind = "lte"
{where}
health_interval_s = 1.0
sysfs_root = "{bus.sysfs}"
dev_root = "{bus.dev}"
"""
    if with_pots:
        text += f"""
[[trunks]]
name = "pots1"
kind = "voice-modem"
usb_id = "0baf:0303"
health_interval_s = 1.0
sysfs_root = "{bus.sysfs}"
dev_root = "{bus.dev}"
"""
    return text


async def jbc(daemon: DaemonProcess, *argv: str):
    return await asyncio.to_thread(daemon.cli, *argv)


async def wait_trunks(daemon: DaemonProcess, predicate, within_s: float = 20.0, *,
                      by_name: bool = False):
    """'jbc trunks --json' until ``predicate`` holds for it (a list, or with ``by_name`` a
    dict by trunk name); returns what it held for."""
    async with asyncio.timeout(within_s):
        while True:
            result = await jbc(daemon, "trunks", "--json")
            trunks = json.loads(result.stdout)
            if by_name:
                trunks = {t["name"]: t for t in trunks}
            if predicate(trunks):
                return trunks
            await asyncio.sleep(0.3)
