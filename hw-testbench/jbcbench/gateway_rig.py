"""The appliance's call path, assembled for end-to-end tests and the gateway benchmark.

Real parts only: the SIP registrar/proxy subsystem, the trunk gateway (pjsua2 on its own
thread), the trunk drivers talking over pseudo-terminals to the bench's simulated modems
(Quectel EG25, SIMCom SIM7600, V.253 voice modem), the directory from a JSON file, call
records in SQLite, the event journal; handsets are pjsua2 user agents in their own processes
that register with digest authentication and call through the proxy::

    async with GatewayRig(tmp_path, modems=("eg25",)) as rig:
        alice = await rig.handset("101")
        rig.sims[0].far_end = FarEnd(...)
        ...

Timings of the simulated modems are compressed as the driver tests do (fast polling), the
rest runs at real speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import pathlib
import socket
from collections.abc import Sequence
from typing import Any

from appliance.bus import EventBus
from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandContext, CommandRegistry, Peer, Role
from appliance.daemon_config import DaemonConfig
from appliance.directory.config import DirectoryConfig
from appliance.directory.service import DirectoryService
from appliance.gateway.config import GatewayConfig
from appliance.gateway.service import Gateway
from appliance.journal import EventJournal
from appliance.runtime import Runtime
from appliance.sip.config import SipConfig
from appliance.sip.service import SipService
from appliance.store.call_records import CallRecordStore
from appliance.store.database import Database
from drivers.trunk import TrunkState
from jbcbench.handset import Handset

ADMIN = Peer(pid=0, uid=0, gid=0, user="root", role=Role.ADMIN)
TECHNICIAN = Peer(pid=0, uid=1000, gid=1000, user="tech", role=Role.TECHNICIAN)

EXTENSIONS = ("101", "102", "103", "104")

DIRECTORY: dict[str, Any] = {
    "schema": 1, "version": 1, "site": "bench",
    "locations": [
        {"id": "hq", "address": "1 Main St, Springfield, IL 62701", "floor": "2",
         "room": "Reception"},
        {"id": "lab", "address": "1 Main St, Springfield, IL 62701", "floor": "B",
         "room": "Lab"}],
    "extensions": [
        {"number": "101", "name": "Alice Ames", "location": "hq"},
        {"number": "102", "name": "Bob Burns", "location": "lab"},
        {"number": "103", "name": "Carol Chu", "location": "hq"},
        {"number": "104", "name": "Dan Dorsey"}],
    "devices": [{"id": f"desk-{n}", "extension": n, "username": n, "password": f"pw-{n}"}
                for n in EXTENSIONS],
    "dial_plan": {"outside_prefix": "9", "external_patterns": ["\\+?[0-9]{7,15}"]},
    "emergency": {"numbers": ["911", "112"], "notify_extensions": ["103"],
                  "callback_window_s": 600, "default_location": "hq"},
    "inbound": [{"trunk": "*", "target": "102", "fallback": "104"}],
}


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tls_material(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1 (the handsets trust it as their CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "sip-tls.crt", directory / "sip-tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class RigTrunks:
    """The trunks in configured order (what the gateway asks the trunk pool for)."""

    def __init__(self) -> None:
        self._trunks: list[Any] = []

    def add(self, trunk: Any) -> None:
        self._trunks.append(trunk)

    def trunks(self) -> list[Any]:
        return list(self._trunks)


class GatewayRig:
    def __init__(self, workdir: pathlib.Path, *, modems: Sequence[str] = ("eg25",),
                 tls: bool = False, gateway: dict[str, Any] | None = None,
                 directory: dict[str, Any] | None = None, sim_seed: int = 7,
                 fast_modems: bool = True) -> None:
        self.workdir = workdir
        self.modem_kinds = tuple(modems)
        self.tls = tls
        self.gateway_options = {"preemption_tone_s": 1.0, "answer_timeout_s": 60.0,
                                "inbound_ring_timeout_s": 15.0, **(gateway or {})}
        self.directory_data = directory or DIRECTORY
        self.sim_seed = sim_seed
        self.fast_modems = fast_modems
        """Compressed far-end timings (rings of 0.25 s, network no-answer after 1.2 s) for
        tests; the benchmark uses the simulators' realistic defaults."""
        self.sims: list[Any] = []
        self.trunks = RigTrunks()
        self.handsets: list[Handset] = []
        self._stack = contextlib.AsyncExitStack()
        self.tls_files: tuple[pathlib.Path, pathlib.Path] | None = None

    # -- set-up ----------------------------------------------------------------------------

    async def __aenter__(self) -> GatewayRig:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        directory_file = self.workdir / "directory.json"
        directory_file.write_text(json.dumps(self.directory_data))
        self.gateway_port = free_port()
        self.sip_port = free_port()
        self.tls_port = free_port(socket.SOCK_STREAM)
        sip = {"enabled": True, "listen_address": "127.0.0.1", "udp_port": self.sip_port,
               "tcp_port": self.sip_port, "transports": ("udp", "tcp"),
               "assume_wan_state": "outage",
               "gateway_uri": f"sip:127.0.0.1:{self.gateway_port}"}
        if self.tls:
            cert, key = self.tls_files = make_tls_material(self.workdir)
            sip.update(transports=("udp", "tcp", "tls"), tls_port=self.tls_port,
                       tls_certificate=cert, tls_private_key=key)
        config = ApplianceConfig(
            daemon=DaemonConfig(state_dir=self.workdir / "state",
                                runtime_dir=self.workdir / "run"),
            directory=DirectoryConfig(file=directory_file),
            sip=SipConfig(**sip),
            gateway=GatewayConfig(enabled=True, sip_port=self.gateway_port,
                                  proxy_uri=f"sip:127.0.0.1:{self.sip_port}",
                                  **self.gateway_options))
        self.database = Database.open_in(self.workdir / "state")
        self.journal = EventJournal(self.database)
        self.commands = CommandRegistry()
        self.bus = EventBus()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self.runtime = Runtime(loaded_config=LoadedConfig(config=config, source="<rig>",
                                                          digest="0" * 64),
                               database=self.database, journal=self.journal, bus=self.bus,
                               commands=self.commands, tasks=self._tasks)
        self.directory = DirectoryService(self.runtime)
        await self._stack.enter_async_context(self.directory)
        self.sip = SipService(self.runtime, self.directory)
        await self._stack.enter_async_context(self.sip)
        for index, kind in enumerate(self.modem_kinds):
            await self._add_modem(index, kind)
        self.records = CallRecordStore(self.database)
        self.gateway = Gateway(self.runtime, directory=self.directory, trunks=self.trunks,
                               records=self.records)
        await self._stack.enter_async_context(self.gateway)

    async def _add_modem(self, index: int, kind: str) -> None:
        from jbcbench.modems.harness import EventLog, lte_settings
        from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
        from jbcbench.modems.timing import SimTiming
        from jbcbench.modems.usb import UsbBus

        if kind not in ("eg25", "sim7600"):
            raise ValueError(f"unknown simulated modem {kind!r}")
        from drivers.lte.trunk import LteTrunk

        bus = UsbBus(self.workdir / f"usb{index}")
        profile = QUECTEL_EG25 if kind == "eg25" else SIMCOM_SIM7600
        timing = SimTiming.fast(boot_s=1.0) if self.fast_modems else SimTiming()
        sim = LteModemSim(bus, profile=profile, timing=timing, seed=self.sim_seed + index)
        await self._stack.enter_async_context(sim)
        trunk = LteTrunk(lte_settings(sim, bus, name=f"{kind}-{index + 1}"))
        await self._stack.enter_async_context(trunk)
        await EventLog(trunk).wait_state(TrunkState.READY, within_s=20)
        self.sims.append(sim)
        self.trunks.add(trunk)

    async def __aexit__(self, *exc: object) -> None:
        for handset in self.handsets:
            await asyncio.to_thread(handset.stop)
        self.handsets.clear()
        await self._stack.aclose()
        if hasattr(self, "_tasks"):
            await self._tasks.__aexit__(None, None, None)
        if hasattr(self, "database"):
            self.database.close()

    # -- handsets --------------------------------------------------------------------------

    async def handset(self, extension: str, *, transport: str = "udp", srtp: str = "off",
                      codecs: Sequence[str] = ("PCMU", "PCMA"), register: bool = True,
                      direct: bool = False) -> Handset:
        """A handset for ``extension``; ``direct`` ones use no proxy (to talk to the gateway
        as the proxy does)."""
        if transport == "tls":
            if self.tls_files is None:
                raise ValueError("the rig was built without TLS")
            proxy = f"sip:127.0.0.1:{self.tls_port};transport=tls;lr"
            extra = {"tls_ca_file": str(self.tls_files[0])}
        else:
            proxy = f"sip:127.0.0.1:{self.sip_port}" + (
                ";transport=tcp" if transport == "tcp" else "") + ";lr"
            extra = {}
        handset = Handset(f"ext{extension}-{transport}", user=extension,
                          password=f"pw-{extension}", proxy=None if direct else proxy,
                          transport=transport,
                          srtp=srtp, codecs=codecs, register=register, **extra)
        await asyncio.to_thread(handset.start)
        self.handsets.append(handset)
        if register:
            await asyncio.to_thread(handset.wait_event, "registered", timeout_s=10)
        return handset

    # -- control commands ------------------------------------------------------------------

    async def command(self, name: str, args: dict[str, Any] | None = None,
                      peer: Peer = ADMIN) -> Any:
        command = self.commands.get(name)
        if command is None:
            raise KeyError(name)
        if command.role > peer.role:
            raise PermissionError(name)
        return await command.handler(CommandContext(peer=peer, args=args or {}))

    def journal_kinds(self, subsystem: str = "gateway") -> list[str]:
        return [e.kind for e in self.journal.query(subsystem=subsystem, limit=10000)]

    def record_for(self, **match: Any) -> Any:
        for record in self.records.recent(200):
            if all(getattr(record, k) == v for k, v in match.items()):
                return record
        return None

