"""jbc-boot-check: commit the booted root slot, or give it back to the boot loader.

Runs as root once per boot (jbc-boot-check.service, after jbcd). It waits, up to
``update.boot_check_timeout_s`` after the kernel started, for jbcd to be ready and for the
self-check to pass, then:

* passed: ``rauc status mark-good booted``, and the slot becomes the committed one;
* failed on a trial boot (the booted slot is not the committed one, i.e. an update is being
  tried): ``rauc status mark-bad booted`` and reboot, so the boot loader starts the committed
  slot again, with no one at the console;
* failed on the committed slot: still marked good (the previous slot is older, not better;
  what is wrong is the site's config or hardware) and the unit fails, for 'systemctl --failed'
  and 'jbc update status'.

Before the wait, a config the booted release cannot load (after a rollback: keys only the
newer release knows) is made loadable without losing anything: those keys are commented out,
or else the slot's last good config (kept at each passed check) is put back; the config as it
was is set aside on /data first, and jbcd restarted (:mod:`appliance.update.last_good_config`).

A boot that never gets this far (hang, panic) is reset by the hardware watchdog or the
kernel (panic=10) and, never marked good, falls back the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from appliance.cli.client import ClientError, ControlClient, default_socket_path
from appliance.config import DEFAULT_CONFIG_PATH, ConfigError, builtin_defaults, load_config

from .config import UpdateConfig
from .last_good_config import ConfigCopyError, keep_last_good, restore_last_good
from .records import append_boot_check, read_committed, write_committed

POLL_S = 2.0

Action = Literal["commit", "roll-back", "keep"]


def decide(*, booted: str, committed: str, passed: bool) -> Action:
    """What to do with the booted slot once the check has passed or run out of time."""
    if passed:
        return "commit"
    if booted != committed:
        return "roll-back"
    return "keep"


def judge_status(status: Mapping[str, Any]) -> tuple[bool, str]:
    """The 'status' self-check: jbcd answered, and none of its subsystems has failed.

    Warnings (no trunk configured, WAN down, not enrolled) describe the site, not the new
    software, so they do not fail an update."""
    subsystems = status.get("subsystems")
    if not isinstance(subsystems, list) or not subsystems:
        return False, "jbcd's status lists no subsystems"
    failed = [f"{s.get('name')}: {s.get('summary')}" for s in subsystems
              if isinstance(s, dict) and s.get("level") in ("failed", "starting")]
    if failed:
        return False, "not healthy: " + "; ".join(failed)
    return True, f"jbcd {status.get('version', '?')} ready, state {status.get('state', '?')}, " \
        f"{len(subsystems)} subsystems healthy"


@dataclasses.dataclass(slots=True, kw_only=True)
class Probe:
    """One look at the system: is jbcd ready, and does the self-check pass?"""

    config: UpdateConfig
    socket: pathlib.Path
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run

    def jbcd_ready(self) -> bool:
        done = self.run(["systemctl", "is-active", "--quiet", "jbcd.service"], check=False)
        return done.returncode == 0

    def self_check(self) -> tuple[bool, str]:
        if self.config.self_check == "selftest":
            # fieldops' commissioning checklist, without its test call; exit 0: no failure
            done = self.run(["jbc", "selftest", "--no-call", "--json"], check=False,
                            capture_output=True, text=True, timeout=120)
            return done.returncode == 0, f"jbc selftest exited {done.returncode}"
        try:
            with ControlClient(self.socket, timeout_s=20.0) as client:
                status = client.call("status")
        except ClientError as error:
            return False, f"jbc status: {error.message}"
        return judge_status(status)


def uptime_s() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def booted_slot(cmdline: pathlib.Path = pathlib.Path("/proc/cmdline")) -> str:
    words = cmdline.read_text().split()
    return next((w.split("=", 1)[1] for w in words if w.startswith("rauc.slot=")), "")


def wait_for_verdict(probe: Probe, *, timeout_s: float, clock: Callable[[], float] = uptime_s,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str]:
    """Poll until jbcd is ready and the self-check passes, or ``timeout_s`` after boot."""
    reason = "jbcd never became ready"
    while True:
        if probe.jbcd_ready():
            passed, reason = probe.self_check()
            if passed:
                return True, reason
        else:
            reason = "jbcd is not ready (see 'systemctl status jbcd')"
        if clock() >= timeout_s:
            return False, f"{reason} ({timeout_s:.0f} s after boot)"
        sleep(POLL_S)


def load_update_config(path: pathlib.Path) -> UpdateConfig:
    """The [update] section; the defaults when the config is missing or broken (a broken
    config stops jbcd too, and that is exactly what the check will then see)."""
    try:
        loaded = load_config(path) if path.exists() else builtin_defaults()
    except ConfigError as error:
        print(f"jbc-boot-check: {error}; using the default [update] settings", flush=True)
        loaded = builtin_defaults()
    return loaded.config.update


def config_problem(path: pathlib.Path) -> ConfigError | None:
    """Why this release cannot use the config file at ``path``, or None when it can."""
    if not path.exists():
        return None  # jbcd runs on its built-in defaults
    try:
        load_config(path)
    except ConfigError as error:
        return error
    return None


def put_back_last_good_config(config_path: pathlib.Path, config: UpdateConfig, slot: str,
                              run: Callable[..., subprocess.CompletedProcess] = subprocess.run
                              ) -> dict[str, Any] | None:
    """Before waiting: a config this release cannot load is made loadable (keys it does not
    know commented out, or else the slot's last good config put back; the config as it was
    set aside), and jbcd, stopped by it, started again."""
    try:
        restored = restore_last_good(config_path, config.state_dir, slot,
                                     problem=config_problem)
    except (OSError, ConfigCopyError) as error:
        print(f"jbc-boot-check: could not put back the last good config: {error}", flush=True)
        return {"error": str(error)}
    if restored is None:
        return None
    print(f"jbc-boot-check: {restored.message()}", flush=True)
    _console(f"jbc: {restored.message()}")
    run(["systemctl", "reset-failed", "jbcd.service"], check=False)
    run(["systemctl", "restart", "--no-block", "jbcd.service"], check=False)
    return restored.to_json()


def rauc_mark(state: str, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
              ) -> str:
    done = run(["rauc", "status", f"mark-{state}", "booted"], check=False,
               capture_output=True, text=True, timeout=60)
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise RuntimeError(f"rauc status mark-{state} failed: {text}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jbc-boot-check",
        description="Mark the booted root slot good once jbcd is ready and the self-check "
        "passes; roll a failed trial boot back to the previous slot. Run by "
        "jbc-boot-check.service at every boot.")
    parser.add_argument("--config", type=pathlib.Path, default=DEFAULT_CONFIG_PATH)
    parser.add_argument("--socket", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config = load_update_config(args.config)
    slot = booted_slot()
    if not slot:
        print("jbc-boot-check: not booted from an A/B slot (no rauc.slot=); nothing to do")
        return 0
    config_restored = put_back_last_good_config(args.config, config, slot)
    if config_restored is not None and "error" not in config_restored:
        config = load_update_config(args.config)
    committed = read_committed(config.state_dir)
    trial = slot != committed
    print(f"jbc-boot-check: slot {slot} booted ({'trial of an update' if trial else 'committed'}"
          f"); waiting up to {config.boot_check_timeout_s:.0f} s after boot for jbcd and the "
          f"'{config.self_check}' check", flush=True)
    probe = Probe(config=config, socket=args.socket or default_socket_path())
    started = uptime_s()
    passed, reason = wait_for_verdict(probe, timeout_s=config.boot_check_timeout_s)
    action = decide(booted=slot, committed=committed, passed=passed)
    entry = {"slot": slot, "committed_before": committed, "trial": trial, "passed": passed,
             "reason": reason, "action": action, "at": time.time(),
             "after_boot_s": round(uptime_s(), 1), "waited_s": round(uptime_s() - started, 1)}
    if config_restored is not None:
        entry["config_restored"] = config_restored
    try:
        if action == "roll-back":
            entry["rauc"] = rauc_mark("bad")
        else:
            entry["rauc"] = rauc_mark("good")
            if action == "commit":
                write_committed(config.state_dir, slot)
    except RuntimeError as error:
        entry["rauc"] = str(error)
    if passed:
        try:
            entry["config_kept"] = keep_last_good(args.config.parent, config.state_dir, slot)
        except (OSError, ConfigCopyError) as error:
            entry["config_kept"] = f"not kept: {error}"
    append_boot_check(config.state_dir, entry)
    print("jbc-boot-check: " + json.dumps(entry), flush=True)
    if action == "roll-back":
        print(f"jbc-boot-check: slot {slot} failed its check ({reason}); rebooting into "
              f"slot {committed}", flush=True)
        _console(f"jbc: update in slot {slot} failed its boot check ({reason}); going back to "
                 f"slot {committed}")
        subprocess.run(["systemctl", "reboot"], check=False)
        return 1
    if action == "keep":
        _console(f"jbc: boot check failed on the committed slot {slot}: {reason}")
        return 1
    return 0


def _console(message: str) -> None:
    try:
        with open("/dev/console", "w") as console:
            console.write(message + "\n")
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
