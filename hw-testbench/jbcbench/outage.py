"""The outage scenario: a site loses its WAN, keeps calling, and gets it back -- timed.

For each outage kind (carrier loss, silent blackhole, heavy loss, cloud-only outage), on a
running :class:`~jbcbench.sitelab.SiteLab` whose desk phones are all registered to the cloud:

1. cut the WAN; measure **detection** (the appliance's WAN monitor enters 'outage');
2. measure **every handset registered locally** (each phone's own first registration at the
   appliance after the cut, confirmed by the appliance's registrar), placing the **first
   local call** as soon as two phones are registered there: answered, and each side hearing
   the other's tone;
3. place an **outside call over each trunk** (the first stays up while the next is placed, so
   the next goes out on the next trunk), each verified by tone both ways with the far end;
4. ring the site from outside on a trunk: the **inbound call reaches its target** (the front
   desk ring group), is answered and verified the same way;
5. start a local call, then **restore** the WAN; measure **recovery** (the monitor enters
   'recovering' and, after its hold-down, 'online'), **resync** (sync's outage uploads
   confirmed), **failback** (every phone registered to the cloud again); the call placed
   before the restore must still be up with audio both ways (**calls dropped**: goal 0),
   then it is hung up;
6. **records uploaded**: every call record made during the outage is at the cloud.

In-path phones (``LabSettings.mode``) are measured differently where they differ: the
appliance serves them from its mirrored bindings the moment it declares the outage, so
**every phone callable locally** is the time the appliance starts serving with a binding for
each of them, and the **first local call** and the **first outside calls** are placed right
after detection (each must work at its first attempt). Their **failback** is a fresh
registration at the cloud, relayed by the appliance, after the restore. With
``mode = "both"`` one outage measures both groups side by side: one :class:`OutageResult`
per group, sharing the cut, the detection, the restore and the WAN figures.

Every figure carries its goal; a missed goal or a failed call makes the run fail. Times are
wall-clock seconds; each handset and jbcd stamp their own events (one machine, one clock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from appliance.wan.decision import DecisionParams

from .audio import goertzel, samples_of
from .benchconfig import FarEndConfig
from .sitelab import FAR_END_HZ, OUTAGE_TITLES, SiteLab, handset_tone
from .timeline import JournalWatch, PhoneBoard, Sampler, StepFailed, Timeline
from .wanlab import CLOUD_DOMAIN

HANDSET_TONE_LEVEL = 12000.0
"""Amplitude of the tone each handset sends (see jbcbench.handset)."""
FAR_END_TONE_LEVEL = 8000.0
TONE_MIN_SHARE = 0.5
"""A heard tone must reach half the amplitude it was sent with (G.711 and the trunk path
keep it within a few per cent) for the audio path to count as working."""
TONE_MIN_LEVEL = HANDSET_TONE_LEVEL * TONE_MIN_SHARE
FAR_TONE_MIN_LEVEL = FAR_END_TONE_LEVEL * TONE_MIN_SHARE
LISTEN_S = 1.0
OUTSIDE_NUMBER = "5551230{:03d}"
FIGURE_ORDER = ("detection_s", "all_local_s", "primary_attempt_failed_s", "first_local_call_s",
                "inbound_reached_s", "recovery_s", "handback_s", "failback_s", "resync_s",
                "records_uploaded", "calls_dropped")


# ---------------------------------------------------------------------------------------------
# Figures and their goals


@dataclasses.dataclass(slots=True)
class Figure:
    name: str
    value: float | int | None
    goal: float | int
    op: str = "<="
    unit: str = "s"
    note: str = ""

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return {"<=": self.value <= self.goal, "==": self.value == self.goal,
                ">=": self.value >= self.goal}[self.op]

    def to_json(self) -> dict[str, Any]:
        value = round(self.value, 3) if isinstance(self.value, float) else self.value
        goal = round(self.goal, 3) if isinstance(self.goal, float) else self.goal
        out = {"value": value, "goal": f"{self.op} {goal}", "goal_value": goal,
               "unit": self.unit, "met": self.met}
        if self.note:
            out["note"] = self.note
        return out

    def describe(self) -> str:
        if self.value is None:
            shown = "not reached"
        elif self.unit == "s":
            shown = f"{self.value:.2f} s"
        else:
            shown = f"{self.value} {self.unit}".rstrip()
        if self.unit == "s":
            goal = f"{round(self.goal, 1):g} s"
        else:
            goal = f"{self.goal} {self.unit}".rstrip()
        return f"{shown:>12}  goal {self.op} {goal:<10} {'ok' if self.met else 'MISSED'}"


# ---------------------------------------------------------------------------------------------
# Calls


@dataclasses.dataclass(slots=True)
class CallResult:
    kind: str
    """'local', 'outside', 'inbound' or 'through-restore'."""
    caller: str
    callee: str
    attempted_at: float
    trunk: str | None = None
    reached_at: float | None = None
    """The callee's phone (or the far end) was offered the call."""
    answered_at: float | None = None
    verified_at: float | None = None
    """Both sides heard the other's tone."""
    levels: dict[str, float] = dataclasses.field(default_factory=dict)
    ended_at: float | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.verified_at is not None and self.problem is None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in dataclasses.asdict(self).items()} | {"ok": self.ok}


# ---------------------------------------------------------------------------------------------
# The scenario


@dataclasses.dataclass(slots=True)
class OutageResult:
    kind: str
    cut_at: float
    how: str
    mode: str = "backup-registrar"
    """The phones these figures are about (see LabSettings.mode)."""
    restored_at: float | None = None
    restored_how: str = ""
    figures: dict[str, Figure] = dataclasses.field(default_factory=dict)
    trunk_figures: dict[str, Figure] = dataclasses.field(default_factory=dict)
    calls: list[CallResult] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    untested: list[str] = dataclasses.field(default_factory=list)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """The call records the appliance made for calls started during the outage."""

    @property
    def ok(self) -> bool:
        return (not self.problems and all(f.met for f in self.figures.values())
                and all(f.met for f in self.trunk_figures.values())
                and all(call.ok for call in self.calls))

    def ordered_figures(self) -> dict[str, Figure]:
        return dict(sorted(self.figures.items(), key=lambda item: FIGURE_ORDER.index(item[0])
                           if item[0] in FIGURE_ORDER else len(FIGURE_ORDER)))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": OUTAGE_TITLES[self.kind], "mode": self.mode,
                "how": self.how, "cut_at": self.cut_at, "restored_at": self.restored_at,
                "restored_how": self.restored_how, "ok": self.ok,
                "figures": {name: f.to_json() for name, f in self.ordered_figures().items()},
                "first_trunk_call_s": {name: f.to_json()
                                       for name, f in self.trunk_figures.items()},
                "calls": [call.to_json() for call in self.calls],
                "call_records": self.records,
                "problems": self.problems, "untested": self.untested}


class OutageScenario:
    def __init__(self, lab: SiteLab, timeline: Timeline, *, settle_s: float = 2.0,
                 far_end: FarEndConfig | None = None, board: PhoneBoard | None = None) -> None:
        self.lab = lab
        self.far_end_config = far_end
        """Real trunks: the number to dial out to, its tone, how long to wait for a ring."""
        self.timeline = timeline
        self.settle_s = settle_s
        self.board = board or PhoneBoard(timeline)
        self.journal = JournalWatch(lab, timeline)
        self.sampler = Sampler(lab)
        self.groups = lab.settings.groups
        """The phones of each mode taking part (one group, or both side by side)."""
        self.extensions = lab.settings.extensions
        self.tones = {ext: handset_tone(i) for i, ext in enumerate(self.extensions)}
        self.wan = _wan_params(lab.settings.wan)
        self.outside_calls = 0
        self._tags = 0
        self.trunks = [entry["name"] for entry in lab.trunk_entries] if lab.gateway else []

    # -- running --

    def start(self) -> None:
        self.journal.start()
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop()
        self.journal.stop()

    def run_one(self, kind: str) -> list[OutageResult]:
        """One outage; one result per phone group (see LabSettings.mode)."""
        lab, timeline = self.lab, self.timeline
        timeline.heading(f"outage: {OUTAGE_TITLES[kind]}")
        self._steady()
        cut_at = time.time()
        how = lab.site.cut(kind)
        results = {mode: OutageResult(kind=kind, cut_at=cut_at, how=how, mode=mode)
                   for mode in self.groups}
        timeline.add("bench", f"WAN cut: {how}", at=cut_at, bold=True)
        try:
            self._during(results)
        except StepFailed as error:
            self._failed(results, error)
        finally:
            if next(iter(results.values())).restored_at is None:
                self._restore(results)
        try:
            self._after_restore(results)
        except StepFailed as error:
            self._failed(results, error)
        self._hang_up_everything()
        return list(results.values())

    def _failed(self, results: dict[str, OutageResult], error: StepFailed) -> None:
        mode = getattr(error, "mode", None)
        for result in results.values():
            if mode is None or result.mode == mode:
                result.problems.append(str(error))
        self.timeline.add("bench", f"FAILED: {error}", bold=True)

    def _steady(self) -> None:
        """Every phone on the cloud, the WAN online, nobody in a call; the in-path phones'
        registrations mirrored by the appliance."""
        lab = self.lab
        lab.wait_for(lambda: lab.daemon.call("wan.status")["state"] == "online", 120,
                     "the WAN back online before the next outage")
        lab.wait_for(lambda: len(lab.cloud_registered()) == len(self.extensions) and all(
            self.board.working.get(ext, "primary") == "primary" for ext in self.extensions),
            120, "every phone registered to the cloud")
        in_path = self.groups.get("in-path")
        if in_path:
            lab.wait_for(lambda: lab.mirrored() >= set(in_path), 60,
                         "the appliance mirroring every in-path phone's cloud registration")
        time.sleep(self.settle_s)

    # -- during the outage --

    def _during(self, results: dict[str, OutageResult]) -> None:
        first = next(iter(results.values()))
        kind, cut_at = first.kind, first.cut_at
        detection_goal = self.goals(kind)["detection_s"]
        outage = self.journal.transition("outage", cut_at, detection_goal * 3 + 10)
        for result in results.values():
            result.figures["detection_s"] = Figure(
                "detection_s", None if outage is None else outage["time"] - cut_at,
                detection_goal, note="WAN cut until the WAN monitor says 'outage'")
        if outage is None:
            raise StepFailed("the WAN monitor never declared the outage")
        if "in-path" in results:
            self._in_path_served(results["in-path"])
        if "backup-registrar" in results:
            self._backup_registrar_served(results["backup-registrar"])
        self._inbound(results)
        for result in results.values():
            # A call that must survive the restore.
            a, b = self._restore_pair(self.groups[result.mode])
            survivor = self.local_call(a, b, kind="through-restore", hang_up=False)
            result.calls.append(survivor)
            if not survivor.ok:
                raise _failed_in(result, "the call to keep through the restore failed: "
                                 f"{survivor.problem}")
        self._restore(results)

    def _in_path_served(self, result: OutageResult) -> None:
        """In-path phones: served from the appliance's mirrored bindings the moment it
        declares the outage; the first local and outside calls are placed right away."""
        lab, cut_at = self.lab, result.cut_at
        group = self.groups["in-path"]
        goals = self.goals(result.kind, "in-path")
        serving = self.journal.entry("sip", "mode", cut_at, goals["all_local_s"] + 10,
                                     lambda e: e["details"].get("serving") is True)
        bound = set(serving["details"].get("phones", [])) if serving else set()
        complete = serving is not None and bound >= set(group)
        result.figures["all_local_s"] = Figure(
            "all_local_s", serving["time"] - cut_at if complete else None,
            goals["all_local_s"], note="WAN cut until the appliance serves with a binding "
            "for every in-path phone (mirrored from the cloud: no phone re-registers)")
        if not complete:
            raise _failed_in(result, "the appliance did not serve every in-path phone at "
                             f"once: it had {sorted(bound)} of {group}")
        self.timeline.add("bench", f"every in-path phone is callable at the appliance "
                          f"({result.figures['all_local_s'].value:.1f} s after the cut)",
                          bold=True)
        first_call = self.local_call(group[0], group[1], kind="local")
        result.calls.append(first_call)
        result.figures["first_local_call_s"] = Figure(
            "first_local_call_s", None if first_call.verified_at is None
            else first_call.verified_at - cut_at, goals["first_local_call_s"],
            note="WAN cut until a local call placed right after detection (its first "
            "attempt) is answered and each side hears the other")
        if not first_call.ok:
            raise _failed_in(result, f"first local call failed: {first_call.problem}")
        lab.wait_for(lambda: lab.bound_at_appliance() >= set(group), 5,
                     "the appliance listing every in-path phone")
        self._outside(result, group, goals)

    def _backup_registrar_served(self, result: OutageResult) -> None:
        """Backup-registrar phones move as their own timers say; the first two at the
        appliance make a call."""
        lab, timeline, cut_at = self.lab, self.timeline, result.cut_at
        settings = lab.settings
        profile = settings.phone_profile
        figures = result.figures
        group = self.groups["backup-registrar"]
        goals = self.goals(result.kind, "backup-registrar")
        bound = goals["all_local_s"] + 20
        pair = self.board.wait(lambda: self._local_since(group, cut_at, 2), bound)
        if not pair:
            raise _failed_in(result, "fewer than two phones registered at the appliance "
                             f"within {bound:g} s of the cut")
        first_call = self.local_call(pair[0], pair[1], kind="local")
        result.calls.append(first_call)
        figures["first_local_call_s"] = Figure(
            "first_local_call_s", None if first_call.verified_at is None
            else first_call.verified_at - cut_at, goals["first_local_call_s"],
            note="WAN cut until a local call is answered and each side hears the other")
        if not first_call.ok:
            raise _failed_in(result, f"first local call failed: {first_call.problem}")
        everyone = self.board.wait(
            lambda: len(self._local_since(group, cut_at, len(group))) == len(group),
            max(bound - (time.time() - cut_at), 1))
        if not everyone:
            figures["all_local_s"] = Figure("all_local_s", None, goals["all_local_s"])
            raise _failed_in(result, "not every phone registered at the appliance")
        times = [self.board.registered_at(ext, "backup", cut_at) for ext in group]
        figures["all_local_s"] = Figure(
            "all_local_s", max(times) - cut_at, goals["all_local_s"],
            note=f"WAN cut until the last phone registered at the appliance (the "
            f"{profile.name} profile notices at its next refresh: cloud grants "
            f"{settings.cloud_granted_s} s)")
        try:  # what the phones say, the appliance's registrar must say too
            lab.wait_for(lambda: lab.locally_registered() >= set(group), 10,
                         "the appliance's registrar to list every phone")
        except TimeoutError as error:
            raise _failed_in(result, str(error)) from None
        timeline.add("bench", f"every phone is registered at the appliance "
                     f"({figures['all_local_s'].value:.1f} s after the cut)", bold=True)
        failed = [took for ext in group
                  if (took := self._primary_attempt_failed(ext, cut_at)) is not None]
        if failed:
            # Under heavy loss an attempt may get its 401 through late and then lose the
            # authenticated REGISTER: two transactions, each up to the profile's timeout.
            transactions = 2 if result.kind == "loss" else 1
            figures["primary_attempt_failed_s"] = Figure(
                "primary_attempt_failed_s", max(failed),
                transactions * profile.attempt_timeout_s + 1.0,
                note="longest a phone's first registration attempt at the dead cloud took to "
                "fail: the profile's timeout (twice under loss: challenge, then the "
                "authenticated REGISTER), unless the appliance refuses it (sip.fast_fail: at "
                "once over TCP)")
        self._outside(result, group, goals)

    def _primary_attempt_failed(self, who: str, since: float) -> float | None:
        """How long ``who``'s first failed registration at the primary after ``since`` took:
        from when it was due (the last success + the profile's refresh delay for what the
        cloud grants; pjsua reports that delay in whole seconds only) to its failure."""
        failed = self.board.first(who, since, lambda e: e["event"] == "reg" and e.get(
            "server") == "primary" and not (e["code"] // 100 == 2 and e["active"]))
        if failed is None:
            return None
        with self.board.lock:
            done = [e for name, e in self.board.log if name == who and e["t"] < failed["t"]
                    and e["event"] == "reg" and e.get("server") == "primary"
                    and e["code"] // 100 == 2 and e["active"]]
        if not done:
            return None
        settings = self.lab.settings
        due = done[-1]["t"] + settings.phone_profile.refresh_after_s(settings.cloud_granted_s)
        return max(failed["t"] - due, 0.0)

    def _local_since(self, group: list[str], since: float, count: int) -> list[str]:
        got = [(t, ext) for ext in group
               if (t := self.board.registered_at(ext, "backup", since)) is not None]
        got.sort()
        return [ext for _, ext in got] if len(got) >= count else []

    @staticmethod
    def _restore_pair(group: list[str]) -> tuple[str, str]:
        if len(group) >= 4:
            return group[-2], group[-1]
        return group[0], group[1]

    def _outside(self, result: OutageResult, group: list[str],
                 goals: dict[str, float]) -> None:
        if not self.trunks:
            why = ("no trunk configured" if not self.lab.trunk_entries else
                   "the gateway is turned off")
            result.untested.append(f"outside and inbound calls: {why}")
            return
        up: list[tuple[str, CallResult]] = []
        for index, trunk in enumerate(self.trunks):
            caller = group[index % len(group)]
            call = self.outside_call(caller, trunk)
            result.calls.append(call)
            result.trunk_figures[trunk] = Figure(
                trunk, None if call.verified_at is None else call.verified_at - result.cut_at,
                goals["first_local_call_s"] + self._trunk_setup_goal(trunk),
                note="WAN cut until an outside call on this trunk is answered and audio "
                "flows both ways")
            if not call.ok:
                raise _failed_in(result, f"outside call over {trunk} failed: {call.problem}")
            up.append((caller, call))
        for caller, call in up:
            self.hang_up(caller, call)

    def _inbound(self, results: dict[str, OutageResult]) -> None:
        """One call from outside to the front desk (in 'both', one phone of each group):
        when each group's member rings is that group's figure."""
        if not self.trunks:
            return
        real = self.far_end_config
        if real is not None and not real.inbound_wait_s:
            for result in results.values():
                result.untested.append("inbound call: real trunks and [far_end] "
                                       "inbound_wait_s is 0")
            return
        inbound = self.inbound_call(self.trunks[0])
        owner = results[self.lab.settings.mode_of(inbound.callee)] \
            if inbound.callee in self.extensions else next(iter(results.values()))
        owner.calls.append(inbound)
        for result in results.values():
            member = next(ext for ext in self.lab.settings.front_desk
                          if self.lab.settings.mode_of(ext) == result.mode)
            rang = self.board.first(member, inbound.attempted_at,
                                    lambda e: e["event"] == "incoming")
            result.figures["inbound_reached_s"] = Figure(
                "inbound_reached_s", None if rang is None
                else rang["t"] - inbound.attempted_at, self._inbound_goal(self.trunks[0]),
                note=f"call arriving on a trunk until ext {member} (front desk) rings")
        if not inbound.ok:
            raise _failed_in(owner, f"inbound call on {self.trunks[0]} failed: "
                             f"{inbound.problem}")

    # -- restore and after --

    def _restore(self, results: dict[str, OutageResult]) -> None:
        restored_at = time.time()
        first = next(iter(results.values()))
        how = self.lab.site.restore(first.kind)
        for result in results.values():
            result.restored_at, result.restored_how = restored_at, how
        self.timeline.add("bench", f"WAN restored: {how}", at=restored_at, bold=True)

    def _after_restore(self, results: dict[str, OutageResult]) -> None:
        lab = self.lab
        first = next(iter(results.values()))
        restored = first.restored_at
        goals = self.goals(first.kind)
        recovering = self._recovering_after(restored)
        hold = (recovering or {}).get("details", {}).get("evidence", {}).get(
            "hold_down_s", self.wan.hold_down_s)
        shared = {"recovery_s": Figure(
            "recovery_s", None if recovering is None else max(0.0, recovering["time"] - restored),
            goals["recovery_s"], note="WAN restored until the monitor says 'recovering' (0 "
            "when it already did at the restore: under heavy loss some probes get through)")}
        failback_goal = max(self.goals(first.kind, mode)["failback_s"] for mode in results)
        try:
            lab.wait_for(lambda: len(lab.cloud_registered_since(restored)) ==
                         len(self.extensions), failback_goal + 60,
                         "every phone registered to the cloud again")
        except TimeoutError as error:
            first.problems.append(str(error))
        # When the cloud accepted each phone's first REGISTER after the restore.
        back = lab.cloud_registered_since(restored)
        for result in results.values():
            group = self.groups[result.mode]
            mine = [back[ext] for ext in group if ext in back]
            complete = len(mine) == len(group)
            result.figures["failback_s"] = Figure(
                "failback_s", max(mine) - restored if complete else None,
                self.goals(result.kind, result.mode)["failback_s"],
                note="WAN restored until the cloud accepted a registration from the last "
                "phone" + (" (relayed by the appliance)" if result.mode == "in-path" else ""))
            if complete:
                self.timeline.add("bench", f"every {result.mode} phone is registered to the "
                                  f"cloud again ({result.figures['failback_s'].value:.1f} s "
                                  "after the restore)", bold=True)
        # The hold-down over, the appliance hands the phones back: 'online', or 'degraded'
        # when some probes still count losses from the outage in their windows.
        handback = self.journal.transition({"online", "degraded"}, restored, 90 + hold)
        shared["handback_s"] = Figure(
            "handback_s", None if handback is None else handback["time"] - restored,
            goals["recovery_s"] + hold + 1.0,
            note=f"WAN restored until the appliance hands the phones back to the cloud "
            f"(hold-down {round(hold, 1):g} s, flap damping included; state reached: "
            f"{(handback or {}).get('details', {}).get('state', 'none')})")
        if recovering is not None:
            try:
                synced = lab.wait_for(lambda: self._recovery_synced(recovering["time"]), 60,
                                      "sync's outage uploads confirmed")
            except TimeoutError:
                synced = {}
            shared["resync_s"] = Figure(
                "resync_s", synced.get("uploads_confirmed_s"), goals["resync_s"],
                note="'recovering' until the directory is current and the outage's records "
                "and events are confirmed by the cloud")
        for result in results.values():
            result.figures.update({name: dataclasses.replace(figure)
                                   for name, figure in shared.items()})
            survivor = next((c for c in result.calls if c.kind == "through-restore"), None)
            if survivor is not None and survivor.ok:
                self._verify_survivor(survivor)
        self._hang_up_everything()
        self._records(first, [c for r in results.values() for c in r.calls])
        with self.board.lock:
            dropped = [d for d in self.board.dropped if d["t"] >= first.cut_at]
        for result in results.values():
            group = set(self.groups[result.mode])
            mine = [d for d in dropped if d["handset"] in group]
            result.figures["calls_dropped"] = Figure(
                "calls_dropped", len(mine), 0, "==", "",
                note="answered calls that ended without the bench hanging up")
            for drop in mine:
                result.problems.append(f"call on ext {drop['handset']} dropped: "
                                       f"{drop['code']} {drop['reason']}")

    def _recovering_after(self, restored: float) -> dict[str, Any] | None:
        """The 'recovering' transition that led to the hand-back after the restore. Under heavy
        loss the monitor may already be recovering when the WAN is restored (enough probes got
        through the loss): then that earlier transition, unless it fell back to 'outage' and
        recovered again before handing back."""
        before = self.journal.state_before(restored)
        if before is None or before["details"].get("state") != "recovering":
            return self.journal.transition("recovering", restored, 60)
        hold = before["details"].get("evidence", {}).get("hold_down_s", self.wan.hold_down_s)
        handback = self.journal.transition({"online", "degraded"}, restored, 90 + hold)
        again = self.journal.transition("recovering", restored, 0)
        if again is not None and (handback is None or again["time"] <= handback["time"]):
            return again
        return before

    def _recovery_synced(self, since: float) -> dict[str, Any] | None:
        last = self.lab.daemon.call("sync.status").get("last_recovery") or {}
        if last.get("since", 0) >= since - 0.5 and last.get("uploads_confirmed_s") is not None:
            return last
        return None

    def _verify_survivor(self, call: CallResult) -> None:
        a, b = call.caller, call.callee
        ok, levels = self._hear_each_other(a, b)
        call.levels.update({f"after_restore_{k}": v for k, v in levels.items()})
        if not ok:
            call.problem = f"after the restore the audio is gone: {levels}"
            self.timeline.add("bench", f"the call {a} -> {b} lost its audio after the restore",
                              bold=True)
        else:
            self.timeline.add("bench", f"the call {a} -> {b} placed during the outage is still "
                              "up after failback, audio both ways")
        self.hang_up(a, call, other=b)

    def _records(self, result: OutageResult, calls: list[CallResult]) -> None:
        """The outage's call records (one for every call of every group), in ``result``."""
        lab = self.lab
        lab.daemon.call("sip.calls", {"recent": 1})  # flushes the proxy's records
        records = [r for r in lab.daemon.call("sip.calls", {"recent": 200})["recent"]
                   if (r.get("started_at") or 0) >= result.cut_at
                   and (r.get("started_at") or 0) <= (result.restored_at or time.time())]
        result.records = [{k: r.get(k) for k in ("id", "direction", "from", "to", "trunk",
                                                 "result", "cause")} for r in records]
        made = {r["id"] for r in records}
        cloud = lab.site.cloud_api

        def uploaded() -> set[str]:
            with cloud.lock:
                return made & set(cloud.call_records)

        with contextlib.suppress(TimeoutError):
            lab.wait_for(lambda: uploaded() == made, 40, "the outage's call records at the "
                         "cloud")
        # Every call the bench placed during the outage must have left a record, and every
        # record must reach the cloud: the goal is the larger of the two counts.
        expected = max(len(made), len(calls))
        if len(made) < len(calls):
            result.problems.append(f"jbcd recorded {len(made)} calls, the bench placed "
                                   f"{len(calls)} during the outage")
        result.figures["records_uploaded"] = Figure(
            "records_uploaded", len(uploaded()), expected, "==", "records",
            note="call records of calls started during the outage that the cloud confirmed "
            "(goal: one for every call the bench placed, all of them at the cloud)")
        self.timeline.add("bench", f"{len(uploaded())} of {expected} call records from the "
                          "outage are at the cloud")

    # -- calls --

    def _uri(self, user: str, caller: str | None = None) -> str:
        """What ``caller`` dials to reach ``user``: an in-path phone the cloud's domain (its
        outbound proxy, the appliance, takes it from there), a backup-registrar phone the
        server it is registered at."""
        if caller is not None and self.lab.settings.mode_of(caller) == "in-path":
            return f"sip:{user}@{CLOUD_DOMAIN}"
        site = self.lab.site
        port = "" if site.sip_port == 5060 else f":{site.sip_port}"
        return f"sip:{user}@{site.appliance_lan}{port}"

    def local_call(self, caller: str, callee: str, *, kind: str,
                   hang_up: bool = True) -> CallResult:
        lab = self.lab
        a, b = lab.handsets[caller], lab.handsets[callee]
        call = CallResult(kind=kind, caller=caller, callee=callee, attempted_at=time.time())
        self.timeline.add("bench", f"ext {caller} calls ext {callee}")
        since = time.time()
        a.send("call", uri=self._uri(callee, caller))
        try:
            call.reached_at = self.board.event(callee, since, _is("incoming"), 10,
                                               "incoming call")["t"]
            b.send("answer")
            call.answered_at = self.board.event(callee, since, _call_state("CONFIRMED"), 10,
                                                "answered call")["t"]
            self.board.event(caller, since, _call_state("CONFIRMED"), 10, "answered call")
        except StepFailed as error:
            call.problem = f"not answered: {error}"
            self._abandon(caller, callee)
            return call
        time.sleep(LISTEN_S + 0.3)
        ok, levels = self._hear_each_other(caller, callee)
        call.levels = levels
        if ok:
            call.verified_at = time.time()
            self.timeline.add("bench", f"ext {caller} <-> ext {callee}: answered, each hears "
                              f"the other ({levels[caller]:.0f} / {levels[callee]:.0f})")
        else:
            call.problem = f"no audio both ways: {levels}"
        if hang_up or not ok:
            self.hang_up(caller, call, other=callee)
        return call

    def _hear_each_other(self, a: str, b: str) -> tuple[bool, dict[str, float]]:
        levels = {a: self._level(a, self.tones[b]), b: self._level(b, self.tones[a])}
        return all(level >= TONE_MIN_LEVEL for level in levels.values()), levels

    def _level(self, who: str, hz: float) -> float:
        self._tags += 1
        tag, since = self._tags, time.time()
        self.lab.handsets[who].send("level", hz=hz, seconds=LISTEN_S, tag=tag)
        return self.board.event(who, since, lambda e: e["event"] == "level" and
                                e.get("tag") == tag, 5, "level measurement")["level"]

    def hang_up(self, who: str, call: CallResult, other: str | None = None) -> None:
        with self.board.lock:
            self.board.expect_end.add(who)
            if other:
                self.board.expect_end.add(other)
        self.lab.handsets[who].send("hangup")
        with self.board.lock:
            self.board.lock.wait_for(lambda: not self.board.in_call[who], 10)
        call.ended_at = time.time()

    def _abandon(self, *who: str) -> None:
        for ext in who:
            with self.board.lock:
                self.board.expect_end.add(ext)
            self.lab.handsets[ext].send("hangup")

    def _hang_up_everything(self) -> None:
        for ext in self.extensions:
            if self.board.in_call[ext]:
                with self.board.lock:
                    self.board.expect_end.add(ext)
                self.lab.handsets[ext].send("hangup")
        self.board.wait(lambda: not any(self.board.in_call[e] for e in self.extensions), 10)

    def outside_call(self, caller: str, trunk: str) -> CallResult:
        lab = self.lab
        self.outside_calls += 1
        real = self.far_end_config
        number = real.number if real else OUTSIDE_NUMBER.format(self.outside_calls)
        expected_hz = real.tone_hz if real else FAR_END_HZ
        call = CallResult(kind="outside", caller=caller, callee=number, trunk=trunk,
                          attempted_at=time.time())
        far = self._far_end(trunk)
        self.timeline.add("bench", f"ext {caller} dials 9 {number} (expecting {trunk})")
        lab.handsets[caller].send("call", uri=self._uri(f"9{number}", caller))
        try:
            call.answered_at = self.board.event(caller, call.attempted_at,
                                                _call_state("CONFIRMED"), 60,
                                                "answered outside call")["t"]
        except StepFailed as error:
            call.problem = f"not answered: {error}"
            self._abandon(caller)
            return call
        used = self._trunk_of_call(number)
        if used != trunk:
            call.problem = f"went out on {used or 'no trunk that lists it'}, not {trunk}"
        if expected_hz is None:
            time.sleep(LISTEN_S)
            call.verified_at = time.time()
            call.levels = {"note": "audio not checked: [far_end] tone_hz not given"}
            self.timeline.add("bench", f"ext {caller} -> {number} over {trunk}: answered "
                              "(audio not checked)")
            return call
        # The handset's call is up as soon as the gateway answers it; on an analog line that
        # is before the far end picks up (no answer supervision), so listen until the far
        # end's tone comes through, both ways.
        deadline = time.monotonic() + (45.0 if real else 30.0)
        time.sleep(LISTEN_S)
        while True:
            heard = self._level(caller, expected_hz)
            far_heard = far.level(self.tones[caller]) if far is not None else None
            call.levels = {caller: heard, "far_end": far_heard}
            if heard >= FAR_TONE_MIN_LEVEL and (far_heard is None or
                                                far_heard >= TONE_MIN_LEVEL):
                call.verified_at = time.time()
                both = "audio both ways" if far is not None else "far-end tone heard"
                self.timeline.add("bench", f"ext {caller} <-> {number} over {trunk}: "
                                  f"answered, {both} ({heard:.0f} / {far_heard or 0:.0f})")
                return call
            if time.monotonic() > deadline:
                call.problem = call.problem or f"no audio both ways: {call.levels}"
                return call
            time.sleep(0.5)

    def inbound_call(self, trunk: str) -> CallResult:
        lab = self.lab
        caller_number = "+15557654321"
        members = list(lab.settings.front_desk)
        call = CallResult(kind="inbound", caller=caller_number, callee="600", trunk=trunk,
                          attempted_at=time.time())
        self._wait_trunk_idle(trunk)
        far = self._far_end(trunk)
        real = self.far_end_config
        if real is None:
            self.timeline.add("bench", f"{caller_number} calls the site on {trunk} (the front "
                              f"desk, ext {' and '.join(members)}, should ring)")
            self._ring_in(trunk, caller_number)
        else:
            self.timeline.add("bench", f"RING {trunk}'s number from a phone now (waiting "
                              f"{real.inbound_wait_s:g} s; ext {' and '.join(members)} "
                              "should ring)", bold=True)
        rang = self.board.wait(lambda: [ext for ext in members if self.board.first(
            ext, call.attempted_at, lambda e: e["event"] == "incoming")],
            real.inbound_wait_s if real else 45)
        if not rang:
            call.problem = "no phone of the front desk rang"
            return call
        who = rang[0]
        call.reached_at = self.board.first(who, call.attempted_at,
                                           lambda e: e["event"] == "incoming")["t"]
        call.callee = who
        lab.handsets[who].send("answer")
        try:
            call.answered_at = self.board.event(who, call.reached_at, _call_state("CONFIRMED"),
                                                10, "answered inbound call")["t"]
        except StepFailed as error:
            call.problem = f"not answered: {error}"
            return call
        time.sleep(LISTEN_S + 0.5)
        if far is None:  # a person on a real line: answered is all we can tell
            call.verified_at = time.time()
            call.levels = {"note": "audio not checked (real line)"}
            self.hang_up(who, call)
            return call
        heard = self._level(who, FAR_END_HZ)
        far_heard = far.level(self.tones[who])
        call.levels = {who: heard, "far_end": far_heard}
        if heard >= FAR_TONE_MIN_LEVEL and far_heard >= TONE_MIN_LEVEL:
            call.verified_at = time.time()
            self.timeline.add("bench", f"{caller_number} -> ext {who} over {trunk}: answered, "
                              f"audio both ways ({heard:.0f} / {far_heard or 0:.0f})")
        else:
            call.problem = f"no audio both ways: {call.levels}"
        self.hang_up(who, call)
        for ext in members:
            if ext != who and self.board.first(ext, call.attempted_at,
                                               lambda e: e["event"] == "incoming"):
                with self.board.lock:
                    self.board.expect_end.add(ext)
        return call

    # -- trunk helpers (simulated modems) --

    def _far_end(self, trunk: str) -> FarEndEar | None:
        trunks = self.lab.trunks
        if trunks is None or trunk not in trunks.sims:
            return None
        return FarEndEar.install(trunks, trunk)

    def _ring_in(self, trunk: str, number: str) -> None:
        trunks = self.lab.trunks
        if trunks is None:
            raise StepFailed(f"cannot ring {trunk} from outside: not a simulated modem (call "
                             "its number from a phone now)")
        trunks.ring_in(trunk, number)

    def _wait_trunk_idle(self, trunk: str) -> None:
        """Until the modem has no call left (its side of a hang-up ends a moment after the
        handset's): a call arriving meanwhile would be a waiting call."""
        def idle() -> bool:
            return not any(t["calls"] for t in self.lab.daemon.call("trunks.list")["trunks"]
                           if t["name"] == trunk)

        self.lab.wait_for(idle, 15, f"{trunk} idle")

    def _trunk_of_call(self, number: str) -> str | None:
        """The trunk whose modem has a call to ``number`` up (as 'jbc trunks' shows it)."""
        digits = "".join(c for c in number if c.isdigit())[-7:]
        deadline = time.monotonic() + 3.0
        while True:
            for trunk in self.lab.daemon.call("trunks.list")["trunks"]:
                for call in trunk["calls"]:
                    if "".join(c for c in call.get("number") or "" if c.isdigit()).endswith(
                            digits):
                        return trunk["name"]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def _trunk_setup_goal(self, trunk: str) -> float:
        entry = next(e for e in self.lab.trunk_entries if e["name"] == trunk)
        # LTE: dial, one ring, answer; analog: the driver counts a call as answered when the
        # ringback stops (ringback_goes_away_s, 7 s) after the far end's first ring (4 s).
        return 15.0 if entry["kind"] == "lte" else 25.0

    def _inbound_goal(self, trunk: str) -> float:
        entry = next(e for e in self.lab.trunk_entries if e["name"] == trunk)
        # LTE: RING and +CLIP together; analog: caller ID comes between the first two rings
        # (the driver waits up to caller_id_wait_s, 4 s).
        return 5.0 if entry["kind"] == "lte" else 10.0

    # -- goals --

    def goals(self, kind: str, mode: str = "backup-registrar") -> dict[str, float]:
        settings = self.lab.settings
        profile = settings.phone_profile
        wan = self.wan
        blackhole = wan.detection_bound_s
        detection = {"carrier": 1.0, "blackhole": blackhole, "cloud": blackhole,
                     # at heavy loss a round still gets an answer now and then, which
                     # restarts the count of failed rounds: allow a few such restarts
                     "loss": blackhole + 4 * wan.fall_rounds * wan.interval_s}
        if self.lab.mode == "loopback" and kind == "carrier":
            detection["carrier"] = blackhole  # no netlink without root: a blackhole
        rise = (wan.rise_rounds - 1) * wan.interval_s + wan.round_timeout_s
        if mode == "in-path":
            # Issue 11: every phone callable locally <= detection + 1 s (4 s after a silent
            # blackhole, 1 s after carrier loss; +0.5 s slack as for detection); a fresh
            # cloud binding for every phone <= hold-down + 35 s after the restore.
            all_local = detection[kind] + (0.5 if kind == "carrier" else 1.5)
            failback = wan.hold_down_s + 35.0
        else:
            all_local = profile.failover_bound_s(settings.cloud_granted_s) + 3.0
            failback = (profile.failback_bound_s(settings.appliance_outage_expires_s)
                        + profile.attempt_timeout_s + wan.hold_down_s + 3.0)
            if settings.phone_transport != "udp" and not settings.fast_fail:
                # Phones on TCP: the outage stalled their connection to the cloud (nothing
                # refused it), and its retransmission backoff can cost one more probe.
                failback += profile.primary_probe_s
        return {
            "detection_s": detection[kind] + 0.5,
            "all_local_s": all_local,
            "first_local_call_s": all_local + LISTEN_S + 4.0,
            "recovery_s": rise + (1.0 if kind == "carrier" else wan.interval_s) + 1.0,
            "resync_s": 10.0,
            "failback_s": failback,
        }


def _failed_in(result: OutageResult, text: str) -> StepFailed:
    """A failed step that concerns one group's phones."""
    error = StepFailed(f"{result.mode}: {text}" if result.mode != "backup-registrar" else text)
    error.mode = result.mode
    return error


def _is(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["event"] == kind


def _call_state(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["event"] == "call" and event["state"] == state


def _wan_params(overrides: dict[str, Any]) -> DecisionParams:
    names = {f.name for f in dataclasses.fields(DecisionParams)}
    return DecisionParams(**{k: v for k, v in overrides.items() if k in names})


class FarEndEar:
    """Measures what the far end of an outside call heard (our uplink)."""

    def __init__(self, audio) -> None:
        self.audio = audio

    @classmethod
    def install(cls, trunks, name: str) -> FarEndEar:
        return cls(trunks.far_end(name))

    def level(self, hz: float) -> float:
        heard = self.audio.heard[-int(LISTEN_S * 16000):]
        frames = [heard[i:i + 320] for i in range(0, len(heard) - 319, 320)]
        levels = [goertzel(samples_of(frame), hz) for frame in frames]
        return sum(levels) / len(levels) if levels else 0.0
