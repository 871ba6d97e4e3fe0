"""The cloud sync subsystem: enrolment, config bundles, outage upload, heartbeat, retention.

One supervised task drives the cloud link. It wakes when something is due (poll, heartbeat, a
retry) or when told (WAN state change, 'jbc sync now') and runs one round: make sure we are
enrolled and our certificate is not about to expire, fetch the bundle (conditionally) and
apply it if it is newer and verifies, upload whatever is pending, send the heartbeat. Each step
fails alone (a bundle that cannot be stored still lets the uploads and the heartbeat go out);
only a cloud that cannot be reached, or asks us to wait, ends the round early. A failed round
raises an event (once per distinct problem) and schedules a retry with exponential backoff
and jitter (or the cloud's Retry-After). During an outage only the heartbeat is attempted,
through the backup uplink when one is configured. Emergency-call alerts do not wait for a
round: :mod:`.alerts` sends each at once, on its own task (backup uplink in an outage). A
second supervised task runs retention daily.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

from appliance import __version__
from appliance.config import ApplianceConfig
from appliance.directory.service import DirectoryService
from appliance.gateway.events import EmergencyCallStarted
from appliance.runtime import Health, HealthLevel, Runtime
from appliance.store.call_records import CallRecordStore
from appliance.store.erasure import CustomerContent
from appliance.wan.events import WanState, WanStateChanged, WanView, initial_wan_state

from .alerts import AlertNotSent, EmergencyAlert, EmergencyAlerts
from .bundle import BundleRejected, load_public_key, verify_bundle
from .bundle_store import BundleStore
from .cloud import CloudClient, CloudError, Endpoint
from .commands import NOT_CONFIGURED, register_sync_commands
from .config import SyncConfig
from .errors import LocalStorageFailed, SyncError
from .identity import DeviceIdentity, Enrolment, IdentityError, client_context, utc
from .outbox import Outbox, UploadMismatch
from .retention import purge_due_at, retention_cutoff
from .state import SyncState
from .uplink import BackupUplink, UplinkError

log = logging.getLogger(__name__)

DAY_S = 86400.0
_HEARTBEAT_STATE = {WanState.STARTING: "starting", WanState.ONLINE: "online",
                    WanState.DEGRADED: "degraded", WanState.OUTAGE: "failover",
                    WanState.RECOVERING: "failover", WanState.FORCED: "failover"}

TrunkHealth = Callable[[], list[dict[str, Any]]]

LINK_DOWN = ("unreachable", "server-certificate", "client-certificate")
"""Failures after which the other steps of the round would fail the same way."""


class SyncService:
    name = "sync"

    def __init__(self, runtime: Runtime, *, directory: DirectoryService, bundles: BundleStore,
                 call_records: CallRecordStore, content: CustomerContent,
                 trunk_health: TrunkHealth | None = None, wan: WanView | None = None,
                 uploads: tuple[Any, ...] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.runtime = runtime
        self.directory = directory
        self.bundles = bundles
        self.call_records = call_records
        self.content = content
        self.trunk_health = trunk_health or self._configured_trunks
        self.clock = clock
        self.state = SyncState(runtime.database)
        self.outbox = Outbox(journal=runtime.journal, call_records=call_records, state=self.state,
                             sources=uploads)
        self.identity = DeviceIdentity(runtime.config.daemon.state_dir)
        self.wan = wan
        self.wan_state = WanState.STARTING
        self.wan_since = clock()
        self.wan_cause = ""
        self.problem: tuple[str, str] | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.next_poll_at = 0.0
        self.next_heartbeat_at = 0.0
        self.heartbeat_due_now = True
        self.recovery_since: float | None = None
        self.erasures = 0
        """Counts 'jbc data erase' runs: a bundle fetched before one is never installed."""
        self.last_recovery: dict[str, Any] | None = None
        self.last_success: float | None = self.state.get("last_success")
        self.last_heartbeat: dict[str, Any] | None = None
        self._forced = False
        self._enrolment_token: str | None = None
        self.renewal_problem: str | None = None
        """Why the last certificate renewal failed while the current one is still valid."""
        self.renewal_retry_at = 0.0
        """A token given with 'jbc sync enrol' (kept in memory until it is used)."""
        self._wake = asyncio.Event()
        self._store_lock = asyncio.Lock()  # one apply or rollback at a time
        self._cycle_done: list[asyncio.Future] = []
        self._tasks: list[asyncio.Task] = []
        self._context_cache: tuple[Any, ssl.SSLContext] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._apply_config(runtime.config.sync)
        self.alerts = EmergencyAlerts(
            deliver=self._deliver_alert, journal=runtime.journal, clock=clock,
            spawn=runtime.spawn, retry_min_s=min(1.0, self.config.retry_min_s),
            retry_max_s=min(30.0, self.config.retry_max_s), state=self.state)
        self._unsubscribe_alerts: Callable[[], None] | None = None
        register_sync_commands(self)

    # -- lifecycle -------------------------------------------------------------------------

    def _apply_config(self, config: SyncConfig) -> None:
        self.config = config
        self._context_cache = None
        self.client = (CloudClient(Endpoint.from_url(config.cloud_url, config.server_name),
                                   timeout=config.request_timeout_s)
                       if config.configured else None)
        self.public_key = load_public_key(config.signing_public_key) if (
            config.signing_public_key) else None
        self.bundles.public_key = self.public_key
        self.uplink = BackupUplink(config.backup_interface, gateway=config.backup_gateway,
                                   table=config.backup_route_table) if (
            config.backup_interface) else None

    async def __aenter__(self) -> SyncService:
        for problem in self.bundles.problems:
            self.runtime.journal.record("sync", "stored-bundle-unreadable", problem)
        # The WAN monitor started first and may have resumed an outage: begin from its verdict.
        self.wan_state = initial_wan_state(self.wan, WanState.STARTING)
        if self.wan_state is not WanState.STARTING:
            self.wan_since, self.wan_cause = self.wan.since, self.wan.cause
        self._unsubscribe = self.runtime.bus.subscribe(WanStateChanged, self._on_wan)
        self._unsubscribe_alerts = self.runtime.bus.subscribe(
            EmergencyCallStarted, self.alerts.on_emergency_call)
        self.alerts.resume()
        self._tasks.append(self.runtime.supervise(self._maintain, name="retention",
                                                  subsystem=self.name))
        self._tasks.append(self.runtime.supervise(self._run, name="cloud-link",
                                                  subsystem=self.name))
        if not self.config.configured:
            log.info("cloud sync %s", NOT_CONFIGURED)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._unsubscribe:
            self._unsubscribe()
        if self._unsubscribe_alerts:
            self._unsubscribe_alerts()
        await asyncio.sleep(0)  # let tasks spawned just now start, so they cancel cleanly
        for task in [*self._tasks, *self.alerts.tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.alerts.tasks, return_exceptions=True)
        if self.uplink is not None:
            await self.uplink.remove()

    async def reconfigure(self, config: ApplianceConfig) -> None:
        if config.sync != self.config:
            old_uplink = self.uplink
            self._apply_config(config.sync)
            if old_uplink is not None:
                await old_uplink.remove()
            self.retry_at = 0.0
            self.next_poll_at = 0.0
            self.heartbeat_due_now = True
            self._wake.set()

    # -- events from elsewhere -------------------------------------------------------------

    def _on_wan(self, event: WanStateChanged) -> None:
        self.wan_state, self.wan_since, self.wan_cause = event.state, event.since, event.cause
        self.heartbeat_due_now = True
        # Tell the cloud at once (failover alerts must not wait out a retry backoff).
        self._forced = True
        if event.state is WanState.RECOVERING:
            self.recovery_since = event.since  # resync at once: bundle, uploads
        elif event.state is WanState.ONLINE and event.previous is not WanState.RECOVERING:
            self.next_poll_at = 0.0
        self._wake.set()

    def trigger(self) -> asyncio.Future:
        """Run a cycle now, ignoring backoff; the future completes when it has run."""
        future = asyncio.get_running_loop().create_future()
        self._cycle_done.append(future)
        self._forced = True
        self.heartbeat_due_now = True
        self._wake.set()
        return future

    # -- the cloud link --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            delay = max(0.0, self._next_due() - self.clock())
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            forced, self._forced = self._forced, False
            # Waiters that ask while this cycle runs are answered by the next one.
            waiters, self._cycle_done = self._cycle_done, []
            outcome: dict[str, Any] = {"ok": False, "kind": "crash", "problem": "the cloud link "
                                       "crashed; it restarts by itself (see 'jbc status')"}
            try:
                outcome = await self._cycle(forced)
            except Exception as error:
                outcome["problem"] = (f"the cloud link crashed ({type(error).__name__}: "
                                      f"{error}); it restarts by itself (see 'jbc status')")
                raise
            finally:
                for future in waiters:
                    if not future.done():
                        future.set_result(outcome)

    def _next_due(self) -> float:
        if not self.config.configured:
            return self.clock() + DAY_S
        if self.failures:
            return self.retry_at
        due = min(self.next_poll_at, self.next_heartbeat_at)
        return 0.0 if self.heartbeat_due_now else due

    async def _cycle(self, forced: bool) -> dict[str, Any]:
        """One round with the cloud. Each step's failure costs that step: a bundle that cannot
        be stored or an answer that breaks the contract still lets the uploads and the
        heartbeat go out; only a cloud that cannot be reached at all ends the round early."""
        if not self.config.configured:
            return {"ok": False, "problem": NOT_CONFIGURED}
        now = self.clock()
        if not forced and self.failures and now < self.retry_at:
            return {"ok": False, "problem": "waiting to retry"}
        try:
            with self._storing():
                enrolment = await self._ensure_enrolled()
                if enrolment is None:
                    return {"ok": False, "problem": self.problem[1] if self.problem else ""}
                enrolment = await self._renew_if_due(enrolment, forced=forced)
        except SyncError as error:  # anything else is a bug: the task crashes and restarts
            return self._round_failed(self._as_cloud_error(error))
        outage = self.wan_state is WanState.OUTAGE
        steps = []
        if not outage:
            if forced or self.clock() >= self.next_poll_at:
                steps.append(self._poll_bundle)
            steps.append(self._upload_and_note)
        if forced or self.heartbeat_due_now or self.clock() >= self.next_heartbeat_at:
            steps.append(functools.partial(self._heartbeat, via_backup=outage))
        failure: CloudError | None = None
        for step in steps:
            try:
                with self._storing():
                    await step(enrolment)
            except SyncError as error:
                failure = failure or self._as_cloud_error(error)
                if failure.kind in LINK_DOWN or failure.retry_after is not None:
                    break  # the next steps would fail alike, or the cloud asked us to wait
        if failure is not None:
            return self._round_failed(failure)
        self._succeeded()
        return {"ok": True}

    async def _poll_bundle(self, enrolment: Enrolment) -> None:
        await self._fetch_bundle(enrolment)
        self.next_poll_at = self.clock() + self.config.poll_interval_s

    async def _upload_and_note(self, enrolment: Enrolment) -> None:
        await self._upload_pending(enrolment)
        self._note_recovery_complete()

    @contextlib.contextmanager
    def _storing(self) -> Iterator[None]:
        """Our own disk refusing (the network's OSErrors are CloudErrors by now) becomes the
        package's error, with what to do."""
        try:
            yield
        except (OSError, sqlite3.Error) as error:
            raise LocalStorageFailed(
                f"cannot store what the cloud sent in {self.runtime.config.daemon.state_dir} "
                f"({getattr(error, 'strerror', None) or error}); free space or fix the state "
                "dir ('jbc status' shows storage)") from error

    def _as_cloud_error(self, error: SyncError) -> CloudError:
        if isinstance(error, CloudError):
            return self._explain_expiry(error)
        return CloudError("local", str(error))  # identity, uplink, disk: ours to fix

    def _round_failed(self, error: CloudError) -> dict[str, Any]:
        self._failed(error)
        return {"ok": False, "problem": error.message, "kind": error.kind}

    def _explain_expiry(self, error: CloudError) -> CloudError:
        """With TLS 1.3 the cloud refuses a client certificate after our side of the handshake
        is done; its alert can be lost to a connection reset. If our certificate has expired,
        that is the reason, whatever the socket said."""
        if error.kind not in ("unreachable", "client-certificate"):
            return error
        try:
            enrolment = self.identity.enrolment()
        except IdentityError:
            return error
        if enrolment is None or enrolment.not_after > self.clock():
            return error
        return CloudError("client-certificate", f"our device certificate expired on "
                          f"{utc(enrolment.not_after)} and the cloud refuses it; enrol again "
                          "with a new one-time token (sync.enrollment_token)")

    def _succeeded(self) -> None:
        self.failures = 0
        self.last_success = self.clock()
        self.state.set("last_success", self.last_success)
        if self.problem is not None and self.problem[0] not in ("bundle-refused",):
            self.runtime.journal.record("sync", "cloud-reachable",
                                        f"cloud sync works again (was: {self.problem[1]})")
            self.problem = None

    def _failed(self, error: CloudError) -> None:
        self.failures += 1
        backoff = min(self.config.retry_max_s,
                      self.config.retry_min_s * 2 ** min(self.failures - 1, 20))
        backoff *= random.uniform(0.5, 1.0)
        if error.retry_after is not None:
            backoff = max(backoff, min(error.retry_after, self.config.retry_max_s))
        self.retry_at = self.clock() + backoff
        kind = {"server-certificate": "server-certificate-refused",
                "client-certificate": "client-certificate-refused"}.get(error.kind,
                                                                         "cloud-unreachable")
        if error.kind in ("refused", "contract"):
            kind = "cloud-error"
        self._report(kind, error.message, {"failures": self.failures,
                                           "retry_in_s": round(backoff, 1)})
        log.warning("cloud sync failed (%s); retrying in %.1f s", error.message, backoff)

    def _report(self, kind: str, message: str, details: dict[str, Any] | None = None) -> None:
        """Journal a problem once; repeats of the same problem only update health."""
        if self.problem != (kind, message):
            self.runtime.journal.record("sync", kind, message, details or {})
        self.problem = (kind, message)

    # -- enrolment and renewal -------------------------------------------------------------

    def _context(self, enrolment: Enrolment | None) -> ssl.SSLContext:
        key = None if enrolment is None else enrolment.serial
        if self._context_cache is None or self._context_cache[0] != key:
            self._context_cache = (key, client_context(self.config.ca_file, enrolment))
        return self._context_cache[1]

    async def _ensure_enrolled(self) -> Enrolment | None:
        enrolment = self.identity.enrolment()
        if enrolment is not None:
            return enrolment
        token = self._enrolment_token or self.config.enrollment_token
        if not token:
            self._report("not-enrolled", "not enrolled: put the one-time token from the cloud "
                         "portal in sync.enrollment_token and reload (systemctl reload jbcd)")
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        if digest in self.state.get("spent_tokens", []):
            erased_at = self.state.get("erased_at")
            if erased_at is not None:
                self._report("not-enrolled", f"un-enrolled when customer content was erased "
                             f"on {utc(erased_at)}; to sync again put a new one-time token from "
                             "the cloud portal in sync.enrollment_token and reload")
            else:
                self._report("not-enrolled", "the enrolment token in sync.enrollment_token "
                             "was refused before; get a new one from the cloud portal")
            return None
        csr = self.identity.pending_csr(self.runtime.config.site_name).decode()
        try:
            reply = await self.client.call(
                "enroll", self._context(None),
                body={"token": token, "csr": csr, "firmware": __version__,
                      "site": self.runtime.config.site_name})
        except CloudError as error:
            if error.status == 401:
                self.state.set("spent_tokens", [*self.state.get("spent_tokens", []), digest])
                self._report("enrolment-refused", f"enrolment refused: {error.message}; get a "
                             "new token from the cloud portal")
                return None
            raise
        enrolment = self.identity.install_certificate(
            device_id=reply.body["device_id"], account=reply.body["account"],
            chain_pem=reply.body["certificate"])
        self._enrolment_token = None
        self.runtime.journal.record(
            "sync", "enrolled", f"enrolled as {enrolment.device_id} (account "
            f"{enrolment.account}); certificate valid until {utc(enrolment.not_after)}",
            {"device_id": enrolment.device_id, "account": enrolment.account,
             "expires_at": enrolment.not_after})
        return enrolment

    async def _renew_if_due(self, enrolment: Enrolment, *, forced: bool = False) -> Enrolment:
        now = self.clock()
        if enrolment.expires_in(now) > self.config.renew_before_s:
            return enrolment
        if self.renewal_problem is not None and now < self.renewal_retry_at and not forced:
            return enrolment
        csr = self.identity.pending_csr(self.runtime.config.site_name).decode()
        try:
            reply = await self.client.call("renewCertificate", self._context(enrolment),
                                           path={"device_id": enrolment.device_id},
                                           body={"csr": csr})
        except CloudError as error:
            if enrolment.expires_in(self.clock()) <= 0 or error.kind == "unreachable":
                raise
            # The certificate still works: keep syncing with it (bundles, uploads, heartbeat)
            # and try the renewal again later, rather than stopping the whole link.
            message = (f"certificate renewal failed ({error.message}); the current one is "
                       f"valid until {utc(enrolment.not_after)}")
            if message != self.renewal_problem:
                self.runtime.journal.record("sync", "certificate-renewal-failed", message)
            self.renewal_problem = message
            self.renewal_retry_at = self.clock() + self.config.retry_max_s
            return enrolment
        self.renewal_problem = None
        renewed = self.identity.install_certificate(
            device_id=enrolment.device_id, account=enrolment.account,
            chain_pem=reply.body["certificate"])
        self.runtime.journal.record(
            "sync", "certificate-renewed", f"device certificate renewed; valid until "
            f"{utc(renewed.not_after)}", {"old_expiry": enrolment.not_after,
                                          "new_expiry": renewed.not_after})
        return renewed

    # -- config bundles --------------------------------------------------------------------

    def applied_version(self) -> int | None:
        """Highest bundle version ever applied here (the forward-only floor)."""
        high = self.state.get("high_water")
        if self.directory.from_cloud:
            high = max(high or 0, self.directory.current.version)
        return high

    async def _fetch_bundle(self, enrolment: Enrolment) -> None:
        erasures = self.erasures
        etag = self.state.get("etag") if self.directory.from_cloud else None
        headers = {"If-None-Match": etag} if etag else {}
        try:
            reply = await self.client.call("getBundle", self._context(enrolment),
                                           path={"device_id": enrolment.device_id},
                                           headers=headers)
        except CloudError as error:
            if error.status == 404:
                self.state.set("last_check", self.clock())
                return
            raise
        self.state.set("last_check", self.clock())
        if reply.status == 304:
            return
        floor = self.applied_version()
        if floor is not None and not self.directory.from_cloud:
            floor -= 1  # after an erase the latest version may come again, never an older one
        try:
            bundle = verify_bundle(reply.raw, self.public_key, account=enrolment.account,
                                   applied_version=floor)
        except BundleRejected as error:
            self._report("bundle-refused", f"config bundle refused ({error.code}): "
                         f"{error.message}; keeping version {self.directory.current.version}",
                         {"code": error.code, "kept_version": self.directory.current.version})
            return
        async with self._store_lock:
            if self.erasures != erasures:
                log.warning("customer content was erased while bundle v%d was on its way; "
                            "not applying it", bundle.version)
                return
            await asyncio.to_thread(self.bundles.apply, bundle)
            if self.erasures != erasures:  # erased while the files were written: undo
                self.bundles.erase()
                return
        self.state.set("high_water", max(bundle.version, self.state.get("high_water") or 0))
        self.state.set("etag", reply.headers.get("etag"))
        self.state.set("applied_at", self.clock())
        self.state.set("issued_at", bundle.issued_at)
        if self.problem and self.problem[0] == "bundle-refused":
            self.problem = None
        self.directory.install(bundle.directory, source=f"cloud bundle v{bundle.version}",
                               from_cloud=True)
        self.runtime.journal.record(
            "sync", "bundle-applied", f"config bundle v{bundle.version} applied",
            {"version": bundle.version, "extensions": len(bundle.directory.extensions),
             "issued_at": bundle.issued_at})
        if self.recovery_since is not None:
            self.last_recovery = {"since": self.recovery_since,
                                  "bundle_applied_s": self.clock() - self.recovery_since}

    async def rollback(self) -> int:
        """Make the previous bundle current again (files in a worker thread, the rest here)."""
        async with self._store_lock:
            bundle = await asyncio.to_thread(self.bundles.rollback)
        self.state.set("etag", None)
        self.directory.install(bundle.directory, source=f"cloud bundle v{bundle.version} "
                               "(rolled back)", from_cloud=True)
        self.runtime.journal.record("sync", "rolled-back", f"config bundle v{bundle.version} "
                                    "is in force again", {"version": bundle.version})
        return bundle.version

    # -- uploads ---------------------------------------------------------------------------

    async def _upload_pending(self, enrolment: Enrolment) -> None:
        context = self._context(enrolment)
        while True:
            batches = self.outbox.next_batches(self.config.upload_batch)
            if not batches:
                return
            for batch in batches:
                reply = await self.client.call(batch.operation, context,
                                               path={"device_id": enrolment.device_id},
                                               body=batch.body())
                try:
                    self.outbox.confirm(batch, reply.body)
                except UploadMismatch as error:
                    raise CloudError("contract", str(error)) from None

    def _note_recovery_complete(self) -> None:
        if self.recovery_since is None:
            return
        pending = self.outbox.pending()
        if pending["call_records"]:
            return
        done = self.clock()
        # Only this recovery's figures: a summary left from an earlier one starts afresh.
        previous = self.last_recovery or {}
        summary = dict(previous) if previous.get("since") == self.recovery_since else {
            "since": self.recovery_since}
        summary["uploads_confirmed_s"] = done - self.recovery_since
        self.last_recovery = summary
        self.recovery_since = None
        self.runtime.journal.record(
            "sync", "recovery-synced", f"resynced {summary['uploads_confirmed_s']:.2f} s "
            "after entering recovery: directory current, outage records uploaded", summary)

    # -- heartbeat -------------------------------------------------------------------------

    async def enrol(self, token: str) -> dict[str, Any]:
        """'jbc sync enrol TOKEN': enrol with a one-time token now (instead of writing it to
        sync.enrollment_token); returns the cycle's outcome once it has run."""
        self._enrolment_token = token
        outcome = await asyncio.wait_for(asyncio.shield(self.trigger()),
                                         self.config.request_timeout_s * 6)
        return {**outcome, "status": self.status()}

    async def heartbeat_via_backup(self) -> dict[str, Any]:
        """Send one heartbeat through the backup uplink now, whatever the WAN state: the
        selftest and the fire drill prove with it that the failover alert path works. Raises
        a SyncError (UplinkError, IdentityError, CloudError) saying what went wrong."""
        if self.uplink is None:
            raise UplinkError("no backup uplink configured (sync.backup_interface)")
        if not self.config.configured:
            raise UplinkError(f"cloud sync is {NOT_CONFIGURED}")
        enrolment = self.identity.enrolment()
        if enrolment is None:
            raise IdentityError("not enrolled with the cloud yet ('jbc sync enrol TOKEN')")
        started = self.clock()
        route = await self.uplink.ensure()
        try:
            reply = await self.client.call(
                "heartbeat", self._context(enrolment), path={"device_id": enrolment.device_id},
                body=self._heartbeat_body("backup"), local_address=route.source)
        finally:
            if self.wan_state is not WanState.OUTAGE:
                await self.uplink.remove()
        return {"interface": route.interface, "source": route.source,
                "elapsed_s": self.clock() - started, "received_at": reply.body["received_at"]}

    def _heartbeat_body(self, uplink: str) -> dict[str, Any]:
        return {
            "state": _HEARTBEAT_STATE[self.wan_state], "wan_state": str(self.wan_state),
            "cause": self.wan_cause, "since": self.wan_since, "sent_at": self.clock(),
            "versions": {"firmware": __version__,
                         "directory": self.directory.current.version
                         if self.directory.from_cloud else None},
            "trunks": [heartbeat_trunk(t) for t in self.trunk_health()],
            "pending": self.outbox.pending(), "uplink": uplink,
        }

    async def _heartbeat(self, enrolment: Enrolment, *, via_backup: bool) -> None:
        local_address = None
        uplink = "wan"
        if via_backup and self.uplink is not None:
            route = await self.uplink.ensure()
            local_address, uplink = route.source, "backup"
        elif not via_backup and self.uplink is not None and self.uplink.active:
            await self.uplink.remove()
        body = self._heartbeat_body(uplink)
        self.heartbeat_due_now = False
        self.next_heartbeat_at = self.clock() + self.config.heartbeat_interval_s
        reply = await self.client.call("heartbeat", self._context(enrolment),
                                       path={"device_id": enrolment.device_id}, body=body,
                                       local_address=local_address)
        self.last_heartbeat = {"at": self.clock(), "state": body["state"], "uplink": uplink}
        self._note_subscription(reply.body["subscription"])
        hint = reply.body["bundle_version"]
        if hint is not None and hint > (self.applied_version() or 0) and not via_backup:
            self.next_poll_at = 0.0

    # -- emergency alerts (see alerts.py) ---------------------------------------------------

    async def _deliver_alert(self, alert: EmergencyAlert) -> str:
        if self.client is None:
            raise AlertNotSent("cloud sync is not configured (sync.cloud_url)", final=True)
        enrolment = self.identity.enrolment()
        if enrolment is None:
            raise AlertNotSent("not enrolled with the cloud", final=True)
        local_address, uplink = None, "wan"
        if self.wan_state is WanState.OUTAGE and self.uplink is not None:
            try:
                route = self.uplink.active or await self.uplink.ensure()
            except UplinkError as error:
                raise AlertNotSent(str(error)) from None
            local_address, uplink = route.source, "backup"
        body = alert.body(sent_at=self.clock(), wan_state=str(self.wan_state), uplink=uplink)
        try:
            await self.client.call("sendAlert", self._context(enrolment),
                                   path={"device_id": enrolment.device_id}, body=body,
                                   local_address=local_address)
        except CloudError as error:
            raise AlertNotSent(error.message) from None
        return uplink

    def _note_subscription(self, subscription: dict[str, Any]) -> None:
        purge_at = self.state.get("purge_at")
        if subscription["status"] == "ended" and subscription["ended_at"] is not None:
            due = purge_due_at(subscription["ended_at"])
            if purge_at != due:
                self.state.set("purge_at", due)
                self.runtime.journal.record(
                    "sync", "subscription-ended", f"the cloud reports the subscription ended "
                    f"on {utc(subscription['ended_at'])}; customer content will be purged on "
                    f"{utc(due)}", {"ended_at": subscription["ended_at"], "purge_at": due})
        elif subscription["status"] == "active" and purge_at is not None:
            self.state.delete("purge_at")
            self.runtime.journal.record("sync", "subscription-active",
                                        "the subscription is active again; purge cancelled")

    def _configured_trunks(self) -> list[dict[str, Any]]:  # before the trunk pool is wired
        return [{"name": t.name, "kind": t.kind, "state": "unknown"}
                for t in self.runtime.config.trunks]

    # -- retention, purge, erasure ---------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            try:
                self.run_retention()
                self.purge_if_due()
            except Exception:
                log.exception("daily retention failed; trying again tomorrow")
            await asyncio.sleep(DAY_S)

    def run_retention(self) -> dict[str, int]:
        cutoff = retention_cutoff(self.clock())
        deleted = {"call_records": self.call_records.delete_started_before(cutoff),
                   "events": self.runtime.journal.delete_older_than(cutoff)}
        if any(deleted.values()):
            self.runtime.journal.record(
                "sync", "retention", f"deleted {deleted['call_records']} call records and "
                f"{deleted['events']} events older than 13 months",
                {**deleted, "cutoff": cutoff})
        return deleted

    def unenrol(self) -> int:
        """Part of erasing customer content: forget the enrolment, so no bundle (passwords
        included) is fetched again until an admin enrols anew with a new one-time token. The
        token in the config now is refused from here on. Returns the files removed."""
        self.erasures += 1  # a round under way must not install what it fetched before this
        removed = self.identity.erase()
        token = self.config.enrollment_token
        if token:
            digest = hashlib.sha256(token.encode()).hexdigest()
            spent = self.state.get("spent_tokens", [])
            if digest not in spent:
                self.state.set("spent_tokens", [*spent, digest])
        for key in ("etag", "applied_at", "issued_at", "last_check"):
            self.state.delete(key)
        self.state.set("erased_at", self.clock())
        self._context_cache = None
        self.problem = None
        return removed

    def purge_if_due(self) -> dict[str, Any] | None:
        purge_at = self.state.get("purge_at")
        if purge_at is None or self.clock() < purge_at:
            return None
        report = self.content.erase_all()
        self.state.delete("purge_at")
        self.state.set("purged_at", self.clock())
        self.runtime.journal.record("sync", "content-purged", "customer content purged 30 days"
                                    " after the subscription ended", {"deleted": report})
        return report

    # -- status and commands ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        try:
            enrolment = self.identity.enrolment()
            identity_problem = None
        except IdentityError as error:
            enrolment, identity_problem = None, str(error)
        current = self.directory.current
        applied_at = self.state.get("applied_at")
        return {
            "configured": self.config.configured,
            "cloud_url": self.config.cloud_url or None,
            "enrolled": enrolment is not None,
            "device_id": enrolment.device_id if enrolment else None,
            "account": enrolment.account if enrolment else None,
            "certificate_expires_at": enrolment.not_after if enrolment else None,
            "directory_version": current.version if self.directory.from_cloud else None,
            "directory_source": self.directory.source,
            "bundle_applied_at": applied_at,
            "bundle_issued_at": self.state.get("issued_at") if self.directory.from_cloud else None,
            "bundle_age_s": None if applied_at is None else now - applied_at,
            "last_check": self.state.get("last_check"),
            "last_success": self.last_success,
            "problem": self.link_problem() or identity_problem or (
                self.problem[1] if self.problem else None) or self.renewal_problem,
            "problem_kind": self.problem[0] if self.problem else None,
            "retry_in_s": max(0.0, self.retry_at - now) if self.failures else None,
            "pending_uploads": self.outbox.pending(),
            "wan_state": str(self.wan_state),
            "last_heartbeat": self.last_heartbeat, "last_emergency_alert": self.alerts.last,
            "last_recovery": self.last_recovery,
            "purge_at": self.state.get("purge_at"),
            "backup_interface": self.config.backup_interface or None,
        }

    def link_problem(self) -> str | None:
        """Why the cloud-link task is not running right now (it crashed and waits to restart),
        or None: the supervisor's view, so 'jbc sync' never shows a dead link as alive."""
        for record in self.runtime.supervisor.tasks_of(self.name):
            if record.name == "cloud-link" and record.state == "restarting":
                wait = max(0.0, (record.restart_at or 0.0) - self.runtime.supervisor.clock())
                return (f"the cloud link crashed ({record.last_error}); it restarts by itself "
                        f"in {wait:.0f} s")
        return None

    def health(self) -> Health:
        if not self.config.configured:
            return Health(level=HealthLevel.DISABLED, summary=NOT_CONFIGURED)
        status = self.status()
        if status["problem"]:
            return Health(level=HealthLevel.WARNING, summary=status["problem"],
                          details={"kind": status["problem_kind"]})
        if not status["enrolled"] or self.last_success is None:
            return Health(level=HealthLevel.STARTING, summary="contacting the cloud")
        pending = status["pending_uploads"]
        return Health(level=HealthLevel.OK, summary=(
            f"config v{status['directory_version']}, last sync "
            f"{now_ago(self.clock() - self.last_success)}, "
            f"{pending['events'] + pending['call_records']} uploads pending"))


def now_ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"



_TRUNK_STATE = {"ready": "ok", "limited": "degraded", "starting": "degraded",
                "recovering": "degraded", "down": "down"}


def heartbeat_trunk(health: dict[str, Any]) -> dict[str, Any]:
    """One trunk's health in the cloud API's TrunkHealth shape (see cloud-api.json)."""
    shaped = {"name": health["name"], "state": _TRUNK_STATE.get(health.get("state"), "unknown")}
    if health.get("kind"):
        shaped["kind"] = health["kind"]
    facts = [health.get("reason") or ""]
    if health.get("signal_dbm") is not None:
        facts.append(f"signal {health['signal_dbm']} dBm")
    if health.get("operator"):
        facts.append(str(health["operator"]))
    detail = "; ".join(f for f in facts if f)
    if detail:
        shaped["detail"] = detail
    return shaped
