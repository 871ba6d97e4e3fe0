"""A real chronyd for the bench's clock: synchronised to an NTP server the bench runs, or not.

Two chronyd processes, neither allowed to touch the machine's clock (``-x``):

* the **NTP server** (the cloud's time source in a real site): serves its own clock as a
  stratum-3 reference (``local stratum 3``) on a free UDP port;
* the **appliance's chronyd**, whose state jbcd's clock check asks with ``chronyc tracking``
  on its command port: with ``synchronised=True`` it polls the server every 0.25 s and is in
  sync within seconds; with ``synchronised=False`` its only source is a port nobody answers
  (an NTP server the site's firewall blocks), so its leap status stays "Not synchronised".

``exec_prefix`` runs both where jbcd runs (``ip netns exec NS`` in the namespace bench), since
chronyc talks to 127.0.0.1 of its own network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import pwd
import shutil
import socket
from collections.abc import Sequence
from typing import Any


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ChronyDaemon:
    def __init__(self, workdir: pathlib.Path, *, synchronised: bool,
                 exec_prefix: Sequence[str] = ()) -> None:
        self.workdir = pathlib.Path(workdir)
        self.synchronised = synchronised
        self.exec_prefix = list(exec_prefix)
        self.command_port = _free_udp_port()
        self.ntp_port = _free_udp_port()
        self.processes: list[asyncio.subprocess.Process] = []
        self.chronyd = shutil.which("chronyd") or "/usr/sbin/chronyd"

    @property
    def address(self) -> str:
        """Where chronyc asks the appliance's chronyd (selftest.chrony_address)."""
        return f"127.0.0.1:{self.command_port}"

    def _config(self, name: str, lines: list[str]) -> pathlib.Path:
        directory = self.workdir / name
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o777)  # chronyd drops to its user; it writes its files here
        path = directory / "chrony.conf"
        path.write_text("\n".join([*lines, f"pidfile {directory / 'chronyd.pid'}",
                                   f"driftfile {directory / 'drift'}"]) + "\n")
        return path

    async def __aenter__(self) -> ChronyDaemon:
        self.workdir.mkdir(parents=True, exist_ok=True)
        server_port = _free_udp_port()
        server = self._config("ntp-server", [
            "local stratum 3", f"port {server_port}", "bindaddress 127.0.0.1",
            "allow 127.0.0.1", "cmdport 0"])
        source = server_port if self.synchronised else self.ntp_port
        client = self._config("appliance", [
            f"server 127.0.0.1 port {source} iburst minpoll -2 maxpoll -2 maxdelay 1",
            "port 0", f"cmdport {self.command_port}", "bindcmdaddress 127.0.0.1",
            "cmdallow 127.0.0.1"])
        try:
            if self.synchronised:
                await self._start(server)
            await self._start(client)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self, config: pathlib.Path) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        argv = [*self.exec_prefix, self.chronyd, "-x", "-d", "-U", "-u", user, "-f",
                str(config)]
        log = (config.parent / "chronyd.log").open("wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL)
        finally:
            log.close()
        self.processes.append(process)

    async def tracking(self) -> dict[str, Any]:
        from appliance.selftest.clock import parse_chrony_tracking

        process = await asyncio.create_subprocess_exec(
            *self.exec_prefix, "chronyc", "-n", "-c", "-h", "127.0.0.1", "-p",
            str(self.command_port), "tracking", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, _ = await process.communicate()
        if process.returncode != 0 or not out.strip():
            return {"synchronised": None}
        return parse_chrony_tracking(out.decode().splitlines()[0])

    async def wait_for(self, synchronised: bool, timeout_s: float = 30.0) -> dict[str, Any]:
        """Wait until chronyc reports the wanted state (chronyd answering, then in sync)."""
        async with asyncio.timeout(timeout_s):
            while True:
                status = await self.tracking()
                if status["synchronised"] is synchronised:
                    return status
                await asyncio.sleep(0.1)  # polling chronyc: it has no way to notify us

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.processes:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.processes.clear()
