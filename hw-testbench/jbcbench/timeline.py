"""What happened during an outage run, as it happened: the printed timeline, every desk
phone's events, jbcd's journal, and the series sampled for the plot."""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from appliance.cli.client import ClientError

from .sitelab import SiteLab


class StepFailed(Exception):
    """A step of the scenario could not be done (what follows it is skipped until the
    restore; the outage is reported as failed)."""


class Timeline:
    """Events with their wall time, printed as they come (relative to the run's start)."""

    def __init__(self, start: float, stream: TextIO = sys.stdout) -> None:
        self.start = start
        self.stream = stream
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.color = stream.isatty()

    def add(self, source: str, text: str, *, at: float | None = None, bold: bool = False,
            **details: Any) -> None:
        at = time.time() if at is None else at
        entry = {"t": at, "rel_s": round(at - self.start, 3), "source": source, "text": text}
        if details:
            entry["details"] = details
        with self.lock:
            self.entries.append(entry)
            line = f"{at - self.start:9.2f} s  {source:<8} {text}"
            if bold and self.color:
                line = f"\033[1m{line}\033[0m"
            print(line, file=self.stream, flush=True)

    def heading(self, text: str) -> None:
        with self.lock:
            bar = f"\n== {text}"
            print(f"\033[1m{bar}\033[0m" if self.color else bar, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        with self.lock:
            print(f"{'':13}{text}", file=self.stream, flush=True)


class PhoneBoard:
    """Every desk phone's events, kept in order, and what they say about each phone."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.lock = threading.Condition()
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.working: dict[str, str] = {}
        self.in_call: dict[str, bool] = collections.defaultdict(bool)
        self.expect_end: set[str] = set()
        self.dropped: list[dict[str, Any]] = []
        self.closing = False
        """Set before the handsets are switched off (their exits are expected then)."""

    def on_event(self, who: str, event: dict[str, Any]) -> None:
        kind = event.get("event")
        with self.lock:
            event.setdefault("t", time.time())
            self.log.append((who, event))
            if kind == "moved":
                self.working[who] = event["server"]
            elif kind == "call":
                if event["state"] == "CONFIRMED":
                    self.in_call[who] = True
                elif event["state"] == "DISCONNECTED":
                    if self.in_call[who] and who not in self.expect_end:
                        self.dropped.append({"handset": who, **event})
                    self.in_call[who] = False
                    self.expect_end.discard(who)
            self.lock.notify_all()
        if kind == "moved":
            where = "the appliance" if event["server"] == "backup" else "the cloud"
            self.timeline.add(f"ext {who}", f"moves to {where} ({event['reason']})",
                              at=event["t"])
        elif kind == "call" and event["state"] == "DISCONNECTED" and event["code"] == 487:
            self.timeline.add(f"ext {who}", "stops ringing (cancelled: answered elsewhere or "
                              "given up)", at=event["t"])
        elif kind == "call" and event["state"] == "DISCONNECTED" and event["code"] >= 300:
            self.timeline.add(f"ext {who}", f"call failed: {event['code']} {event['reason']}",
                              at=event["t"])
        elif kind == "exited" and not self.closing:
            self.timeline.add(f"ext {who}", "handset process exited unexpectedly")

    def events(self) -> list[dict[str, Any]]:
        """Every phone's events (level replies left out), for the run's JSON."""
        with self.lock:
            return [{"handset": who, **event} for who, event in self.log
                    if event.get("event") != "level"]

    def first(self, who: str, since: float,
              predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        with self.lock:
            for name, event in self.log:
                if name == who and event["t"] >= since and predicate(event):
                    return event
        return None

    def event(self, who: str, since: float, predicate: Callable[[dict[str, Any]], bool],
              timeout_s: float, what: str) -> dict[str, Any]:
        """The first event of ``who`` at or after ``since`` matching ``predicate``; waits for
        it up to ``timeout_s`` (StepFailed naming ``what`` when it does not come)."""
        found = self.wait(lambda: self.first(who, since, predicate), timeout_s)
        if not found:
            raise StepFailed(f"ext {who}: no {what} within {timeout_s:g} s")
        return found

    def registered_at(self, who: str, server: str, since: float) -> float | None:
        event = self.first(who, since, lambda e: e["event"] == "reg" and e.get("server") ==
                           server and e["code"] // 100 == 2 and e["active"])
        return None if event is None else event["t"]

    def wait(self, predicate: Callable[[], Any], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return value
                self.lock.wait(min(remaining, 0.2))


class Sampler:
    """Every half second: WAN state and probe RTTs, registrations at the appliance and at the
    cloud, calls through the appliance -- the series for the plot."""

    def __init__(self, lab: SiteLab, period_s: float = 0.5) -> None:
        self.lab = lab
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.samples.append(self._sample())
            except (OSError, ConnectionError, RuntimeError, KeyError):
                continue  # a sample missed while jbcd is busy: the plot has a gap

    def _sample(self) -> dict[str, Any]:
        daemon = self.lab.daemon
        at = time.time()
        wan = daemon.call("wan.status")
        rtts = {}
        for target in wan.get("targets", []):
            fresh = target.get("last_age_s") is not None and target["last_age_s"] < 3.0
            answered = target.get("last_outcome") in ("ok", "degraded")
            rtt = target.get("rtt_ms")
            rtts[target["name"]] = rtt["last"] if rtt and fresh and answered else None
        listing = daemon.call("sip.phones")
        phones = listing["phones"]
        calls = daemon.call("sip.calls")["calls"]
        local = {p["aor"] for p in phones if p.get("origin", "local") == "local"}
        bound = {p["aor"] for p in phones}
        served = {}
        for mode, group in self.lab.settings.groups.items():
            # what the appliance would serve right now: a backup-registrar phone once it has
            # registered here; an in-path phone at once, from its binding, when serving
            reachable = bound if mode == "in-path" else local
            served[mode] = len(reachable & set(group)) if listing["serving"] else 0
        return {"t": at, "wan": wan["state"], "rtt_ms": rtts, "local": len(local),
                "mirrored": len(bound - local), "served": served,
                "cloud": len(self.lab.cloud_registered()), "calls": len(calls)}


class JournalWatch:
    """Follows jbcd's event journal (WAN transitions, SIP mode, sync, trunks, gateway) into
    the timeline and keeps the WAN transitions for the figures."""

    SHOWN = {("wan", "transition"), ("sip", "mode"), ("sync", "recovery-synced"),
             ("sync", "bundle-applied"), ("sync", "problem")}

    def __init__(self, lab: SiteLab, timeline: Timeline) -> None:
        self.lab = lab
        self.timeline = timeline
        self.seen: set[int] = set()
        self.transitions: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-watch", daemon=True)

    def start(self) -> JournalWatch:
        self._poll(since_s=3600)
        self.seen.update(e["id"] for e in self.entries)
        self.transitions.clear()
        self.entries.clear()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._poll(since_s=30)
            except (OSError, ConnectionError, RuntimeError, ClientError):
                continue  # jbcd restarting (the chaos bench kills it): poll again

    def _poll(self, since_s: float) -> None:
        events = self.lab.daemon.call("events", {"since_s": since_s, "limit": 10000})["events"]
        for entry in events:
            if entry["id"] in self.seen:
                continue
            self.seen.add(entry["id"])
            with self.lock:
                self.entries.append(entry)
                if entry["subsystem"] == "wan" and entry["kind"] == "transition":
                    self.transitions.append(entry)
                self.lock.notify_all()
            if self._thread.is_alive() and (entry["subsystem"], entry["kind"]) in self.SHOWN:
                state = entry["details"].get("state") if entry["kind"] == "transition" else None
                text = f"{state}: {entry['reason']}" if state else entry["reason"]
                self.timeline.add(f"jbcd {entry['subsystem']}", text, at=entry["time"],
                                  bold=entry["kind"] == "transition")

    def entry(self, subsystem: str, kind: str, since: float, timeout_s: float,
              predicate: Callable[[dict[str, Any]], bool] = lambda e: True
              ) -> dict[str, Any] | None:
        """The first journal entry of ``subsystem``/``kind`` after ``since`` that matches."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                for entry in self.entries:
                    if entry["time"] >= since and entry["subsystem"] == subsystem \
                            and entry["kind"] == kind and predicate(entry):
                        return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.lock.wait(min(remaining, 0.2))

    def state_before(self, when: float) -> dict[str, Any] | None:
        """The last transition before ``when`` (what the monitor said at that moment)."""
        with self.lock:
            earlier = [entry for entry in self.transitions if entry["time"] < when]
        return max(earlier, key=lambda entry: entry["time"], default=None)

    def transition(self, state: str | set[str], since: float,
                   timeout_s: float) -> dict[str, Any] | None:
        """The first transition into ``state`` (or any of a set of states) after ``since``."""
        states = {state} if isinstance(state, str) else state
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while True:
                for entry in self.transitions:
                    if entry["time"] >= since and entry["details"].get("state") in states:
                        return entry
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.lock.wait(min(remaining, 0.2))
