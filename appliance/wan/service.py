"""The WAN monitor subsystem: the asyncio shell around the decision core.

It runs the probes the core asks for, feeds their results and the netlink link watch into the
core, re-arms one ``loop.call_at`` timer at the core's next deadline, and turns every
transition into a :class:`WanStateChanged` on the bus, a journal entry with cause and evidence,
the persisted state, and ``runtime.headline``. Other subsystems read it as a :class:`WanView`.

Without a WAN interface and targets (the built-in defaults) it starts, invents no verdict and
says plainly that it is not configured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from appliance.config import ApplianceConfig
from appliance.control.commands import CommandContext, CommandError, Role
from appliance.runtime import Headline, Health, HealthLevel, Runtime
from appliance.supervision import StartFailed

from . import probes
from .config import WanConfig, WanTargetConfig
from .decision import (
    CallPolicyChange,
    DecisionCore,
    DecisionParams,
    ProbeRequest,
    TargetSpec,
    Transition,
)
from .decision import Role as TargetRole
from .errors import InvalidInput
from .events import CallPolicyChanged, WanState, WanStateChanged
from .observations import LinkStatus, ProbeOutcome, ProbeResult
from .store import SavedWanState, WanStateStore

if TYPE_CHECKING:
    from .linkwatch import LinkWatch

log = logging.getLogger(__name__)

UNCONFIGURED = "unconfigured"
"""The headline state while the WAN monitor has nothing to watch."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Target:
    """What the shell needs to run one target's probe."""

    name: str
    kind: str
    address: str = ""
    port: int = 0
    transport: str = "udp"
    server_name: str = ""
    path: str = "/"


def build_targets(wan: WanConfig) -> tuple[list[TargetSpec], dict[str, _Target]]:
    specs: list[TargetSpec] = []
    shell: dict[str, _Target] = {}
    for index, target in enumerate(wan.targets):
        specs.append(_spec(target, index))
        shell[target.name] = _Target(
            name=target.name, kind=target.kind, address=target.address,
            port=target.effective_port, transport=target.transport,
            server_name=target.server_name, path=target.path)
    for index, resolver in enumerate(wan.resolvers):
        name = f"dns:{resolver}"
        specs.append(TargetSpec(name=name, role=TargetRole.DNS, group="dns", kind="dns",
                                every_rounds=wan.dns_every_rounds, phase=index))
        shell[name] = _Target(name=name, kind="dns", address=resolver, port=wan.dns_port)
    return specs, shell


def _spec(target: WanTargetConfig, index: int) -> TargetSpec:
    role = TargetRole.CLOUD if target.role == "cloud" else TargetRole.ANCHOR
    kind = target.kind if target.kind != "sip-options" else f"sip/{target.transport}"
    return TargetSpec(name=target.name, role=role,
                      group=target.region if role is TargetRole.CLOUD else target.name,
                      kind=kind, every_rounds=target.effective_every_rounds, phase=index,
                      app_level=target.kind in ("sip-options", "https"))


def tls_context(wan: WanConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(wan.ca_file) if wan.ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise StartFailed(
            f"wan.ca_file {wan.ca_file or '(the system CA store)'}: cannot load it ({error}); "
            "put the CA certificates (PEM) that sign the cloud's TLS certificates there and "
            "reload (systemctl reload jbcd)") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class WanMonitor:
    """The 'wan' subsystem; also the :class:`~appliance.wan.events.WanView` others read."""

    name = "wan"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config: WanConfig = runtime.config.wan
        self.store = WanStateStore(runtime.database)
        self.core: DecisionCore | None = None
        self.linkwatch: LinkWatch | None = None
        self._targets: dict[str, _Target] = {}
        self._ssl: ssl.SSLContext | None = None
        self._dns_cache: dict[str, tuple[str, ...]] = {}
        self._dns_changed = asyncio.Event()
        self._binding = probes.WanBinding(interface=self.config.interface)
        self._timer: asyncio.TimerHandle | None = None
        self._timestamps: socket.socket | None = None
        """Keeps the kernel's receive timestamps on (see probes.hold_receive_timestamps)."""
        self._probe_tasks: set[asyncio.Task] = set()
        self._watch_task: asyncio.Task | None = None
        self._state = WanState.STARTING
        self._since = time.time()
        self._cause = ""
        self._actor: str | None = None
        self._failure: str | None = None
        self._restart_needed: str | None = None
        self._stopped = False
        self._brownout_journalled = False
        commands = runtime.commands
        commands.register("wan.status", self._status_command, role=Role.TECHNICIAN,
                          summary="WAN state, cause, link, and per-target RTT and loss")
        commands.register("failover.force", self._force_command, role=Role.ADMIN,
                          summary="force failover: serve phones locally until released")
        commands.register("failover.release", self._release_command, role=Role.ADMIN,
                          summary="end a forced failover; phones return after the hold-down")

    # -- WanView --

    @property
    def state(self) -> WanState:
        return self._state

    @property
    def since(self) -> float:
        return self._since

    @property
    def cause(self) -> str:
        return self._cause

    @property
    def configured(self) -> bool:
        return self.config.configured

    @property
    def local_calls(self) -> bool:
        return self.core is not None and self.core.local_calls and not self._failure

    # -- lifecycle --

    async def __aenter__(self) -> WanMonitor:
        if self.core is None:  # a start retried after a reload reads the new config
            self.config = self.runtime.config.wan
            self._binding = probes.WanBinding(interface=self.config.interface)
        if not self.configured:
            self._cause = self.config.not_configured_reason()
            log.warning("%s; no outage can be detected until then", self._cause)
            self.runtime.headline = Headline(state=UNCONFIGURED, since=self._since,
                                             cause=self._cause, needs_attention=True,
                                             owner=self.name)
            return self
        loop = asyncio.get_running_loop()
        self._ssl = tls_context(self.config)  # first: it may refuse the start (StartFailed)
        specs, self._targets = build_targets(self.config)
        self._timestamps = probes.hold_receive_timestamps()
        saved = self.store.load()
        initial, cause, penalty = self._resume_from(saved)
        self.core = DecisionCore(DecisionParams.from_config(self.config), specs, now=loop.time(),
                                 interface=self.config.interface, initial=initial, cause=cause,
                                 penalty=penalty)
        self._state = initial
        self._cause = self.core.cause
        if initial is not WanState.STARTING and saved is not None:
            self._since = saved.since
            self.core.since = loop.time() - (time.time() - saved.since)
            self._actor = saved.actor if initial is WanState.FORCED else None
            self.runtime.journal.record(
                "wan", "resumed", f"resumed in {initial} after a restart: {cause}",
                {"state": str(initial), "since": saved.since, "penalty": round(penalty, 3)})
        self._update_headline()
        self._save()
        from .linkwatch import LinkWatch  # pyroute2 costs ~0.2 s: only when configured

        self.linkwatch = LinkWatch(self.config.interface, self._on_link,
                                   require_default_route=self.config.require_default_route)
        self._watch_task = self.runtime.supervise(self.linkwatch.run, name="linkwatch",
                                                  subsystem=self.name)
        self._after_core()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = [t for t in (self._watch_task, *self._probe_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._timestamps is not None:
            self._timestamps.close()
            self._timestamps = None
        if self.core is not None:
            self._save()

    async def reconfigure(self, config: ApplianceConfig) -> None:
        if config.wan == self.config:
            return
        self._restart_needed = "the [wan] settings changed; they take effect after a restart " \
            "(systemctl restart jbcd)"
        log.warning("%s", self._restart_needed)
        self.runtime.journal.record("wan", "restart-needed", self._restart_needed)

    def _resume_from(self, saved: SavedWanState | None) -> tuple[WanState, str, float]:
        if saved is None:
            return WanState.STARTING, "", 0.0
        half_life = self.config.flap_half_life_s
        penalty = saved.penalty * 2.0 ** (-max(0.0, time.time() - saved.saved_at) / half_life)
        if saved.state is WanState.FORCED:
            return WanState.FORCED, f"forced failover resumed after a restart ({saved.cause})", \
                penalty
        if saved.state in (WanState.OUTAGE, WanState.RECOVERING):
            return (WanState.OUTAGE, "resumed after a restart during an outage; waiting for "
                    f"fresh probes (was: {saved.cause})", penalty)
        return WanState.STARTING, "", penalty

    # -- the core's I/O --

    def _on_link(self, status: LinkStatus) -> None:
        v4 = next((a for a in status.addresses if ":" not in a), None)
        v6 = next((a for a in status.addresses if ":" in a), None)
        self._binding = probes.WanBinding(interface=self.config.interface, ipv4=v4, ipv6=v6)
        if self.core is None or self._failure:
            return
        try:
            self.core.link_changed(status, asyncio.get_running_loop().time())
        except Exception as error:
            self._fail(error)
            return
        self._after_core()

    def _on_timer(self) -> None:
        self._timer = None
        if self.core is None or self._failure:
            return
        try:
            self.core.handle_timer(asyncio.get_running_loop().time())
        except Exception as error:
            self._fail(error)
            return
        self._after_core()

    def _after_core(self) -> None:
        core = self.core
        if self._stopped:
            return
        try:
            for transition in core.take_transitions():
                self._publish(transition)
            self._journal_brownout(core)
            for change in core.take_policy_changes():
                self._publish_policy(change)
            for request in core.take_requests():
                task = asyncio.create_task(self._probe(request),
                                           name=f"wan:probe:{request.target}")
                self._probe_tasks.add(task)
                task.add_done_callback(self._probe_tasks.discard)
            loop = asyncio.get_running_loop()
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(core.next_deadline(), self._on_timer)
        except Exception as error:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """A bug in the monitor: stop deciding, say so loudly, keep the daemon up."""
        log.exception("WAN monitor stopped: %s", error)
        self._failure = f"{type(error).__name__}: {error}"
        self.runtime.journal.record("wan", "monitor-failed", self._failure)
        self.runtime.headline = Headline(state=str(self._state), since=self._since,
                                         cause=f"WAN monitor failed: {self._failure}",
                                         needs_attention=True, owner=self.name)

    async def _probe(self, request: ProbeRequest) -> None:
        loop = asyncio.get_running_loop()
        target = self._targets[request.target]
        timeout_s = max(0.01, request.deadline - loop.time())
        try:
            result = await self._run_probe(target, timeout_s)
        except Exception as error:  # a probe must never take the monitor down
            log.exception("probe of %s failed", target.name)
            result = ProbeResult(outcome=ProbeOutcome.ERROR, detail=f"probe failed: {error}")
        if result.addresses:
            for name, addresses in result.addresses:
                self._dns_cache[name] = addresses
            self._dns_changed.set()
            self._dns_changed = asyncio.Event()
        if self.core is None or self._failure:
            return
        try:
            self.core.probe_done(request.round_id, request.target, result, loop.time())
        except Exception as error:
            self._fail(error)
            return
        self._after_core()

    async def _run_probe(self, target: _Target, timeout_s: float) -> ProbeResult:
        config = self.config
        binding = self._binding
        if target.kind == "dns":
            return await probes.probe_dns(
                target.address, config.effective_dns_names, binding=binding,
                timeout_s=timeout_s, retry_interval_s=config.retry_interval_s, port=target.port)
        started = asyncio.get_running_loop().time()
        address = target.address or await self._address_of(target.server_name, timeout_s)
        timeout_s -= asyncio.get_running_loop().time() - started
        if not address:
            return ProbeResult(outcome=ProbeOutcome.ERROR,
                               detail=f"no address for {target.server_name} yet (resolvers "
                               "have not answered)")
        if target.kind == "icmp":
            return await probes.probe_icmp_echo(address, binding=binding, timeout_s=timeout_s,
                                                retry_interval_s=config.retry_interval_s)
        if target.kind == "tls":
            return await probes.probe_tls_handshake(
                address, target.port, server_name=target.server_name, binding=binding,
                ssl_context=self._ssl, timeout_s=timeout_s)
        if target.kind == "https":
            return await probes.probe_https_get(
                address, target.port, server_name=target.server_name, path=target.path,
                binding=binding, ssl_context=self._ssl, timeout_s=timeout_s)
        if target.kind == "sip-options":
            return await probes.probe_sip_options(
                address, target.port, transport=target.transport,
                server_name=target.server_name, binding=binding, timeout_s=timeout_s,
                retry_interval_s=config.retry_interval_s, ssl_context=self._ssl)
        raise ValueError(f"unknown probe kind {target.kind!r}")

    async def _address_of(self, name: str, timeout_s: float) -> str:
        """The last address our resolvers gave for ``name``; at start-up, waits (within the
        probe's time) for the first DNS answer rather than failing the round."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while not self._dns_cache.get(name):
            remaining = end - loop.time()
            if remaining <= 0:
                return ""
            try:
                async with asyncio.timeout(remaining):
                    await self._dns_changed.wait()
            except TimeoutError:
                return ""
        return self._dns_cache[name][0]

    # -- transitions --

    def _wall(self, monotonic_at: float) -> float:
        return time.time() - (asyncio.get_running_loop().time() - monotonic_at)

    def _publish(self, transition: Transition) -> None:
        since = self._wall(transition.at)
        self._state = transition.state
        self._since = since
        self._cause = transition.cause
        if transition.state is WanState.FORCED:
            self._actor = transition.actor
        elif transition.previous is WanState.FORCED:
            self._actor = None
        evidence = dict(transition.evidence)
        self.runtime.journal.record(
            "wan", "transition", f"{transition.previous} -> {transition.state}: "
            f"{transition.cause}",
            {"previous": str(transition.previous), "state": str(transition.state),
             "cause": transition.cause, "evidence": evidence},
            actor=transition.actor)
        self._save()
        self._update_headline()
        self.runtime.bus.publish(WanStateChanged(
            previous=transition.previous, state=transition.state, cause=transition.cause,
            since=since, evidence=evidence))

    def _journal_brownout(self, core: DecisionCore) -> None:
        """A brownout starting or ending is journalled even when the state does not change
        (a link already degraded for another reason)."""
        active = core.brownout_since is not None
        if active == self._brownout_journalled:
            return
        self._brownout_journalled = active
        quality = core.quality
        figures = quality.to_json() if quality is not None else None
        if active:
            reason = f"brownout: {quality.describe()}" if quality else "brownout"
        else:
            reason = "brownout over" + (f": {quality.describe()}" if quality else "")
        log.log(logging.WARNING if active else logging.INFO, "%s", reason)
        self.runtime.journal.record("wan", "brownout" if active else "brownout-over", reason,
                                    {"quality": figures, "state": str(self._state)})

    def _publish_policy(self, change: CallPolicyChange) -> None:
        since = self._wall(change.at)
        self.runtime.journal.record("wan", "call-policy", change.cause,
                                    {"local_calls": change.local_calls,
                                     "policy": self.config.brownout_policy})
        self.runtime.bus.publish(CallPolicyChanged(local_calls=change.local_calls,
                                                   cause=change.cause, since=since))

    def _save(self) -> None:
        if self.core is None:
            return
        now = asyncio.get_running_loop().time()
        self.store.save(SavedWanState(state=self._state, since=self._since, cause=self._cause,
                                      actor=self._actor, penalty=self.core.penalty(now),
                                      saved_at=time.time()))

    def _update_headline(self) -> None:
        self.runtime.headline = Headline(
            state=str(self._state), since=self._since, cause=self._cause,
            needs_attention=self._state not in (WanState.ONLINE, WanState.STARTING),
            owner=self.name)

    # -- commands --

    def report(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "configured": self.configured,
            "interface": self.config.interface or None,
            "state": UNCONFIGURED if not self.configured else str(self._state),
            "since": self._since,
            "for_s": time.time() - self._since,
            "cause": self._cause,
            "forced_by": self._actor,
            "failure": self._failure,
            "restart_needed": self._restart_needed,
        }
        if self.core is None:
            base.update({"verdict": "not configured", "problems": [], "link": None,
                         "targets": [], "groups": []})
            return base
        now = asyncio.get_running_loop().time()
        report = self.core.report(now)
        report.pop("state")
        report.pop("cause")
        if self.linkwatch is not None:
            report["link_watch"] = {"events": self.linkwatch.events,
                                    "resyncs": self.linkwatch.resyncs,
                                    "neighbours_forgotten":
                                        self.linkwatch.neighbours_forgotten,
                                    "synced": self.linkwatch.synced.is_set(),
                                    "error": self.linkwatch.last_error}
        report["settings"] = {
            "interval_s": self.config.interval_s, "round_timeout_s": self.config.round_timeout_s,
            "fall_rounds": self.config.fall_rounds, "rise_rounds": self.config.rise_rounds,
            "hold_down_s": self.config.hold_down_s,
            "detection_bound_s": self.core.params.detection_bound_s}
        report["dns_cache"] = {name: list(addresses)
                               for name, addresses in self._dns_cache.items()}
        return {**base, **report}

    async def _status_command(self, _: CommandContext) -> dict[str, Any]:
        return self.report()

    async def _force_command(self, context: CommandContext) -> dict[str, Any]:
        reason = context.arg("reason", str, "")
        core = self._require_core("force failover")
        actor = context.peer.describe()
        cause = f"failover forced by {context.peer.user}" + (f": {reason}" if reason else "")
        try:
            core.force(asyncio.get_running_loop().time(), cause, actor=actor)
        except InvalidInput:
            raise CommandError("already_forced", f"failover is already forced (since "
                               f"{time.strftime('%H:%M:%S', time.localtime(self._since))}, "
                               f"{self._cause}); 'jbc failover release' ends it") from None
        self._after_core()
        return self.report()

    async def _release_command(self, context: CommandContext) -> dict[str, Any]:
        core = self._require_core("release failover")
        cause = f"forced failover released by {context.peer.user}"
        try:
            core.release(asyncio.get_running_loop().time(), cause,
                         actor=context.peer.describe())
        except InvalidInput:
            raise CommandError("not_forced", f"failover is not forced (the WAN is "
                               f"{self._state}); nothing to release") from None
        self._after_core()
        return self.report()

    def _require_core(self, what: str) -> DecisionCore:
        if self.core is None:
            raise CommandError("not_configured", f"cannot {what}: "
                               + self.config.not_configured_reason())
        if self._failure:
            raise CommandError("monitor_failed", f"cannot {what}: the WAN monitor failed "
                               f"({self._failure}); see the log and restart jbcd")
        return self.core

    # -- health --

    def health(self) -> Health:
        if not self.configured:
            return Health(level=HealthLevel.WARNING,
                          summary=self.config.not_configured_reason() + "; no outage can be "
                          "detected", details={"configured": False})
        if self._failure:
            return Health(level=HealthLevel.FAILED, summary=f"monitor failed: {self._failure}")
        details = {"state": str(self._state), "interface": self.config.interface,
                   "since": self._since}
        suffix = f" ({self._restart_needed})" if self._restart_needed else ""
        if self._state is WanState.STARTING:
            return Health(level=HealthLevel.STARTING, details=details,
                          summary=f"probing {len(self._targets)} targets via "
                          f"{self.config.interface}; no verdict yet{suffix}")
        if self.linkwatch is not None and self.linkwatch.last_error:
            suffix += f" (netlink watch failing: {self.linkwatch.last_error})"
        summary = f"{self._state}: {self._cause}{suffix}"
        level = HealthLevel.OK if self._state is WanState.ONLINE and not self._restart_needed \
            else HealthLevel.WARNING
        return Health(level=level, summary=summary, details=details)
