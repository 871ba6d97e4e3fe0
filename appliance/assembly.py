"""The one place where subsystems are built and wired to each other, in start order.

Each subsystem gets the shared :class:`~appliance.runtime.Runtime` and, explicitly, the
other subsystems it depends on. The :class:`~appliance.lifecycle.Appliance` starts them in
this order and stops them in reverse. Add a subsystem here, after everything it depends on.
"""

from __future__ import annotations

from appliance.directory.service import DirectoryService
from appliance.drill.service import DrillService
from appliance.drill.store import DrillReports
from appliance.gateway.service import Gateway
from appliance.metrics.service import MetricsEndpoint
from appliance.metrics.sources import appliance_sources
from appliance.runtime import Runtime, Subsystem
from appliance.selftest.service import Selftest
from appliance.sip.service import SipService, WanVerdict
from appliance.store.call_records import CallRecordStore
from appliance.store.commands import register_data_commands
from appliance.store.erasure import CustomerContent
from appliance.store.sealed import SealingKey
from appliance.support.service import SupportBundle
from appliance.sync.bundle import load_public_key
from appliance.sync.bundle_store import BundleStore
from appliance.sync.service import SyncService
from appliance.trunks.service import TrunkPool
from appliance.update.policy import SiteActivity
from appliance.update.service import UpdateService
from appliance.wan.events import CallPolicyChanged, WanState, WanStateChanged
from appliance.wan.service import WanMonitor


def sip_verdict(state: WanState, cause: str, local_calls: bool = False) -> WanVerdict:
    """The WAN monitor's state as the SIP service follows it (SIP knows nothing of WAN)."""
    serve = None if state is WanState.STARTING else state.serves_locally
    return WanVerdict(state=state.value, serve_locally=serve, cause=cause,
                      local_calls=local_calls)


def build_subsystems(runtime: Runtime) -> list[Subsystem]:
    wan = WanMonitor(runtime)  # first: everything else reacts to the WAN state
    state_dir = runtime.config.daemon.state_dir
    sync_config = runtime.config.sync
    # Customer content: every holder registers how to erase it ('jbc data erase', the purge).
    content = CustomerContent(runtime.database)
    call_records = CallRecordStore(runtime.database)
    bundles = BundleStore(state_dir, SealingKey.load_or_create(state_dir),
                          load_public_key(sync_config.signing_public_key)
                          if sync_config.signing_public_key else None)
    # The directory prefers the last cloud bundle applied (sealed in the state dir).
    directory = DirectoryService(runtime, applied=bundles)

    def erase_directory() -> int:
        return bundles.erase() + directory.erase()

    content.register("directory", erase_directory)
    content.register("call_records", call_records.erase_all)
    content.register_directory("recordings", state_dir / "recordings")

    # Outside lines (LTE, analog) for the gateway; independent of the others, so started
    # before anything that will route calls to them.
    trunks = TrunkPool(runtime)
    sip = SipService(runtime, directory, call_records=call_records,
                     wan=lambda: sip_verdict(wan.state, wan.cause, wan.local_calls))
    runtime.bus.subscribe(WanStateChanged, lambda event: sip.follow_wan(
        sip_verdict(event.state, event.cause, wan.local_calls)))
    runtime.bus.subscribe(CallPolicyChanged, lambda event: sip.follow_wan(
        sip_verdict(wan.state, wan.cause, event.local_calls)))
    content.register("sip_registrations", sip.erase)
    drill_reports = DrillReports(runtime.database)  # uploaded like call records
    sync = SyncService(runtime, directory=directory, bundles=bundles,
                       call_records=call_records, content=content, wan=wan,
                       trunk_health=trunks.health_summaries, uploads=(drill_reports,))
    # The trunk gateway: the proxy sends it outside calls, it sends the proxy trunk calls.
    gateway = Gateway(runtime, directory=directory, trunks=trunks, records=call_records,
                      proxy=sip)
    content.register("enrolment", sync.unenrol)  # nothing is fetched again until re-enrolled
    register_data_commands(runtime.commands, content, runtime.journal)
    # Field operations read the others through their public faces: last, stopped first.
    selftest = Selftest(runtime, wan=wan, trunks=trunks, sip=sip, sync=sync, gateway=gateway)
    drill = DrillService(runtime, reports=drill_reports, sip=sip, sync=sync, gateway=gateway)
    metrics = MetricsEndpoint(runtime, appliance_sources(
        wan=wan, sip=sip, trunks=trunks, sync=sync, selftest=selftest, drill=drill))
    support = SupportBundle(runtime, directory=directory)

    def site_activity() -> SiteActivity:
        return SiteActivity(wan_state=str(wan.state), serving_locally=wan.state.serves_locally,
                            calls=max(sip.calls_in_progress(), gateway.calls_in_progress()))

    # OS image updates: it asks the WAN monitor and the call carriers whether it may start.
    update = UpdateService(runtime, activity=site_activity)
    subsystems: list[Subsystem] = [wan, directory, trunks, sip, gateway, sync, selftest,
                                   drill, metrics, support, update]
    return subsystems
