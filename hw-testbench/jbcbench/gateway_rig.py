"""The appliance's call path, assembled for end-to-end tests and the gateway benchmark.

Real parts only, run by the daemon's own lifecycle (:class:`appliance.lifecycle.Appliance`:
storage, journal, supervision, stop deadlines): the SIP registrar/proxy subsystem, the trunk
gateway (pjsua2 on its own thread), the trunk drivers talking over pseudo-terminals to the
bench's simulated modems (Quectel EG25, SIMCom SIM7600, V.253 voice modem), the directory from
a JSON file, call records in SQLite, the event journal; handsets are pjsua2 user agents in
their own processes that register with digest authentication and call through the proxy::

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
import dataclasses
import datetime
import ipaddress
import json
import os
import pathlib
import socket
import time
from collections.abc import Sequence
from typing import Any

from appliance.config import ApplianceConfig, LoadedConfig
from appliance.control.commands import CommandContext, Peer, Role
from appliance.daemon_config import DaemonConfig
from appliance.directory.config import DirectoryConfig
from appliance.directory.service import DirectoryService
from appliance.gateway.config import GatewayConfig
from appliance.gateway.service import Gateway
from appliance.lifecycle import Appliance
from appliance.runtime import Runtime
from appliance.sip.config import SipConfig
from appliance.sip.service import SipService
from appliance.store.call_records import CallRecordStore
from drivers.trunk import TrunkState
from jbcbench.audio_handset import AudioHandset

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
    "ring_groups": [{"number": "600", "name": "Front desk", "strategy": "simultaneous",
                     "members": ["103", "104"], "timeout_s": 20}],
    "inbound": [{"trunk": "*", "target": "102", "fallback": "104"}],
}


def free_port(kind: int | None = None) -> int:
    """A loopback port free for both UDP and TCP (the proxy and the gateway bind both on
    the same number); ``kind`` narrows it to one of them."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind or socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if kind is not None:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")


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
                                "inbound_ring_timeout_s": 15.0, "test_call_listen_s": 1.0,
                                **(gateway or {})}
        self.directory_data = directory or DIRECTORY
        self.sim_seed = sim_seed
        self.fast_modems = fast_modems
        """Compressed far-end timings (rings of 0.25 s, network no-answer after 1.2 s) for
        tests; the benchmark uses the simulators' realistic defaults."""
        self.sims: list[Any] = []
        self.trunks = RigTrunks()
        self.handsets: list[AudioHandset] = []
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
            gateway=GatewayConfig(enabled=True, **self.gateway_options))
        # The modems and their drivers first (they know nothing of the appliance), so the
        # gateway finds its trunks ready when it starts.
        for index, kind in enumerate(self.modem_kinds):
            await self._add_modem(index, kind)

        def build(runtime: Runtime) -> list[Any]:
            self.records = CallRecordStore(runtime.database)
            self.directory = DirectoryService(runtime)
            self.sip = SipService(runtime, self.directory, call_records=self.records)
            self.gateway = Gateway(runtime, directory=self.directory, trunks=self.trunks,
                                   records=self.records, proxy=self.sip)
            return [self.directory, self.sip, self.gateway]

        # The daemon's own lifecycle (storage, journal, supervision, stop deadlines), with
        # the call path's parts only and no control socket (commands are called directly).
        self.appliance = Appliance(LoadedConfig(config=config, source="<rig>",
                                                digest="0" * 64),
                                   build=build, serve_control=False)
        await self._stack.enter_async_context(self.appliance)
        waiting = [s.name for s in self.appliance.subsystems
                   if not self.appliance.started(s.name)]
        if waiting:  # a rig that cannot serve calls says why rather than limping on
            raise RuntimeError("the rig could not start: " + "; ".join(
                f"{name}: {self.appliance.supervisor.attention(name)}" for name in waiting))
        self.runtime = self.appliance.runtime
        self.database = self.runtime.database
        self.journal = self.runtime.journal
        self.commands = self.runtime.commands
        self.bus = self.runtime.bus

    async def restart_gateway(self) -> None:
        """Stop the gateway and start a new one on the same database (what a jbcd restart
        does to it), the rest of the rig staying up."""
        old = self.gateway
        await old.__aexit__(None, None, None)
        self.gateway = Gateway(self.runtime, directory=self.directory, trunks=self.trunks,
                               records=self.records, proxy=self.sip)
        await self.gateway.__aenter__()
        subsystems = self.appliance.subsystems  # the Appliance stops the new one at the end
        subsystems[subsystems.index(old)] = self.gateway

    async def _add_modem(self, index: int, kind: str) -> None:
        from jbcbench.modems.harness import EventLog, lte_settings
        from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
        from jbcbench.modems.timing import SimTiming
        from jbcbench.modems.usb import UsbBus

        if kind not in ("eg25", "sim7600", "usr5637"):
            raise ValueError(f"unknown simulated modem {kind!r}")
        bus = UsbBus(self.workdir / f"usb{index}")
        timing = SimTiming.fast(boot_s=1.0) if self.fast_modems else SimTiming()
        name = f"{kind}-{index + 1}"
        if kind == "usr5637":
            from drivers.v253.trunk import VoiceModemTrunk
            from jbcbench.modems.harness import v253_settings
            from jbcbench.modems.v253 import USR_5637, V253ModemSim

            sim = V253ModemSim(bus, profile=USR_5637, timing=timing, seed=self.sim_seed + index)
            await self._stack.enter_async_context(sim)
            trunk = VoiceModemTrunk(v253_settings(sim, bus, name=name))
        else:
            from drivers.lte.trunk import LteTrunk

            profile = QUECTEL_EG25 if kind == "eg25" else SIMCOM_SIM7600
            sim = LteModemSim(bus, profile=profile, timing=timing, seed=self.sim_seed + index)
            await self._stack.enter_async_context(sim)
            trunk = LteTrunk(lte_settings(sim, bus, name=name))
        await self._stack.enter_async_context(trunk)
        await EventLog(trunk).wait_state(TrunkState.READY, within_s=20)
        self.sims.append(sim)
        self.trunks.add(trunk)

    async def __aexit__(self, *exc: object) -> None:
        for handset in self.handsets:
            await asyncio.to_thread(handset.stop)
        self.handsets.clear()
        await self._stack.aclose()

    # -- handsets --------------------------------------------------------------------------

    async def handset(self, extension: str, *, transport: str = "udp", srtp: str = "off",
                      codecs: Sequence[str] = ("PCMU", "PCMA"), register: bool = True,
                      direct: bool = False, sips: bool | None = None) -> AudioHandset:
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
        handset = AudioHandset(f"ext{extension}-{transport}", user=extension,
                          password=f"pw-{extension}", proxy=None if direct else proxy,
                          transport=transport,
                          srtp=srtp, codecs=codecs, register=register, sips=sips, **extra)
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



# ---------------------------------------------------------------------------------------------
# The benchmark's split: simulated modems and handsets here, the appliance in its own process


class TimedFarEnd:
    """A far end's voice for measurements: a tone switched on at a chosen moment (the
    monotonic time of its first frame is kept), and what it hears measured frame by frame
    (the level of one frequency, with the monotonic time each frame was complete). Levels,
    not audio, are kept, so a five-minute call costs a few hundred kilobytes."""

    def __init__(self, *, listen_hz: float = 400.0, amplitude: int = 8000) -> None:
        import threading

        import numpy as np

        from jbcbench.modems.farend import AudioFarEnd

        self.audio = AudioFarEnd(source="silence")
        self.audio.recording = False
        self._np = np
        self.listen_hz = listen_hz
        self.amplitude = amplitude
        self.frequency: float | None = None
        self.tone_started: float | None = None
        self._n = 0
        self._pending = bytearray()
        self._lock = threading.Lock()
        self.heard: list[tuple[float, float]] = []
        self.audio.next_frame = self.next_frame  # type: ignore[method-assign]
        self.audio.hear = self.hear  # type: ignore[method-assign]

    def tone(self, frequency: float | None) -> None:
        self.frequency = frequency
        self.tone_started = None
        self._n = 0

    def next_frame(self) -> bytes:
        np = self._np
        if not self.frequency:
            return bytes(320)
        if self.tone_started is None:
            self.tone_started = time.monotonic()
        t = (np.arange(160) + self._n) / 8000.0
        self._n += 160
        return (self.amplitude * np.sin(2 * np.pi * self.frequency * t)).astype("<i2").tobytes()

    def hear(self, data: bytes) -> None:
        np = self._np
        now = time.monotonic()
        with self._lock:
            self._pending += data
            while len(self._pending) >= 320:
                frame = np.frombuffer(bytes(self._pending[:320]), dtype="<i2").astype(float)
                del self._pending[:320]
                phase = np.exp(-2j * np.pi * self.listen_hz / 8000 * np.arange(160))
                self.heard.append((now, float(2 * abs(np.dot(frame, phase)) / 160)))

    def onset(self, after: float, threshold: float) -> float | None:
        with self._lock:
            for t, level in self.heard:
                if t >= after and level >= threshold:
                    return t
        return None

    def levels_since(self, after: float) -> list[float]:
        with self._lock:
            return [level for t, level in self.heard if t >= after]


class SimBank:
    """Simulated LTE modems (with their USB/sysfs stand-in) for an appliance in another
    process: the driver settings it needs are plain paths and identities."""

    def __init__(self, workdir: pathlib.Path, modems: Sequence[str], *, fast: bool = False,
                 seed: int = 7, sim_class: Any = None) -> None:
        self.sim_class = sim_class
        self.workdir = workdir
        self.kinds = tuple(modems)
        self.fast = fast
        self.seed = seed
        self.sims: list[Any] = []
        self.settings: list[dict[str, Any]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> SimBank:
        from jbcbench.modems.harness import lte_settings
        from jbcbench.modems.lte import QUECTEL_EG25, SIMCOM_SIM7600, LteModemSim
        from jbcbench.modems.timing import SimTiming
        from jbcbench.modems.usb import UsbBus

        for index, kind in enumerate(self.kinds):
            bus = UsbBus(self.workdir / f"usb{index}")
            profile = QUECTEL_EG25 if kind == "eg25" else SIMCOM_SIM7600
            timing = SimTiming.fast(boot_s=1.0) if self.fast else SimTiming()
            sim = (self.sim_class or LteModemSim)(bus, profile=profile, timing=timing,
                                                  seed=self.seed + index)
            await self._stack.enter_async_context(sim)
            settings = lte_settings(sim, bus, name=f"{kind}-{index + 1}")
            self.settings.append({k: str(v) if isinstance(v, pathlib.Path) else v
                                  for k, v in dataclasses.asdict(settings).items()})
            self.sims.append(sim)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


class ApplianceProcess:
    """The real jbcd (directory, SIP proxy, trunk pool, gateway, call records, control
    socket), configured for the simulated modems of a :class:`SimBank`, in its own process
    so that its CPU use can be measured on its own."""

    def __init__(self, workdir: pathlib.Path, bank: SimBank, *,
                 gateway: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.bank = bank
        self.gateway_options = gateway or {}
        self.daemon: Any = None

    def config_text(self) -> str:
        directory_file = self.workdir / "directory.json"
        directory_file.write_text(json.dumps(DIRECTORY))
        gateway = "".join(f"{key} = {json.dumps(value)}\n"
                          for key, value in self.gateway_options.items())
        text = f"""
[directory]
file = "{directory_file}"

[sip]
enabled = true
listen_address = "127.0.0.1"
udp_port = {self.sip_port}
tcp_port = {self.sip_port}
assume_wan_state = "outage"
gateway_uri = "sip:127.0.0.1:{self.gateway_port}"

[gateway]
enabled = true
{gateway}"""
        for settings in self.bank.settings:
            text += f"""
[[trunks]]
name = "{settings['name']}"
kind = "lte"
usb_id = "{settings['usb_id']}"
usb_serial = "{settings['usb_serial']}"
sysfs_root = "{settings['sysfs']}"
dev_root = "{settings['dev']}"
"""
        return text

    def start(self, timeout_s: float = 60.0) -> ApplianceProcess:
        from jbcbench.daemon import DaemonProcess

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port, self.gateway_port = free_port(), free_port()
        self.daemon = DaemonProcess(self.workdir, self.config_text())
        self.daemon.start()
        deadline = time.monotonic() + timeout_s
        while True:
            trunks = self.command("gateway.calls", recent=0)["trunks"]
            if trunks and all(t["state"] == "ready" for t in trunks):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"trunks not ready in jbcd: {trunks}\n{self.daemon.log()}")
            time.sleep(0.3)

    def command(self, name: str, **args: Any) -> Any:
        return self.daemon.call(name, args)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the jbcd process so far."""
        fields = pathlib.Path(f"/proc/{self.daemon.proc.pid}/stat").read_text()
        parts = fields.rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def handset(self, extension: str) -> AudioHandset:
        return AudioHandset(f"ext{extension}", user=extension, password=f"pw-{extension}",
                            proxy=f"sip:127.0.0.1:{self.sip_port};lr", register=True).start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
