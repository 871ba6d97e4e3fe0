"""Run the real jbcd as a child process in temporary directories, and talk to it.

Used by the integration tests, the benchmarks and the demo. The daemon is started with the
Python running this code (``python -m appliance.daemon``) from the checkout this file is
in, so tests always exercise the working tree, not some installed copy.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.cli.client import ControlClient

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


class DaemonStartFailed(RuntimeError):
    pass


class DaemonProcess:
    """One jbcd child process with its own config, state dir and runtime dir."""

    def __init__(self, workdir: pathlib.Path, config_text: str | None = "", *,
                 env: Mapping[str, str] | None = None, extra_args: Sequence[str] = (),
                 runtime_dir: pathlib.Path | None = None) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.runtime_dir = runtime_dir or workdir / "run"
        self.config_path = workdir / "appliance.toml"
        self.log_path = workdir / "jbcd.log"
        # None: no config file at all, the daemon's built-in defaults with dirs from flags.
        self.builtin_defaults = config_text is None
        if not self.builtin_defaults:
            self.config_path.write_text(self.full_config(config_text))
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    def full_config(self, config_text: str) -> str:
        """The caller's config with [daemon] dirs pointing into the work dir."""
        text = textwrap.dedent(config_text)
        daemon_lines = (f'state_dir = "{self.state_dir}"\n'
                        f'runtime_dir = "{self.runtime_dir}"\n')
        if "[daemon]" in text:
            return text.replace("[daemon]\n", "[daemon]\n" + daemon_lines, 1)
        return text + "\n[daemon]\n" + daemon_lines

    def write_config(self, config_text: str) -> None:
        self.config_path.write_text(self.full_config(config_text))

    @property
    def socket_path(self) -> pathlib.Path:
        return self.runtime_dir / "control.sock"

    def command(self) -> list[str]:
        if self.builtin_defaults:
            where = ["--state-dir", str(self.state_dir), "--runtime-dir", str(self.runtime_dir)]
        else:
            where = ["--config", str(self.config_path)]
        return [sys.executable, "-m", "appliance.daemon", *where, *self.extra_args]

    def start(self, *, wait: bool = True, timeout_s: float = 15.0) -> DaemonProcess:
        env = {**os.environ, "PYTHONPATH": _pythonpath(), "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("JBC_CONFIG", None)
        if "NOTIFY_SOCKET" not in self.env:
            env.pop("NOTIFY_SOCKET", None)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)
        if wait:
            self.wait_until_serving(timeout_s)
        return self

    def wait_until_serving(self, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonStartFailed(f"jbcd exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path.exists():
                with contextlib.suppress(OSError):
                    probe = socket.socket(socket.AF_UNIX)
                    try:
                        probe.connect(str(self.socket_path))
                        return
                    finally:
                        probe.close()
            time.sleep(0.02)
        raise DaemonStartFailed(f"jbcd did not open its control socket in {timeout_s} s:\n"
                                f"{self.log()}")

    def client(self, timeout_s: float = 10.0) -> ControlClient:
        return ControlClient(self.socket_path, timeout_s=timeout_s)

    def call(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        with self.client() as client:
            return client.call(command, args)

    def cli(self, *argv: str, timeout_s: float = 30.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the real 'jbc' CLI against this daemon."""
        full_env = {**os.environ, "PYTHONPATH": _pythonpath(),
                    "JBC_SOCKET": str(self.socket_path), "COLUMNS": "80", **(env or {})}
        return subprocess.run([sys.executable, "-m", "appliance.cli.main", *argv],
                              cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout_s)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pythonpath() -> str:
    parts = [str(REPO_ROOT), str(REPO_ROOT / "hw-testbench")]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)
