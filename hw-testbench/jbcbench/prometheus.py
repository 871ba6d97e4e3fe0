"""A real Prometheus server (Debian's ``prometheus`` package) scraping the appliance.

It runs with its own config and data directory in a temp dir, listens on a free loopback port,
scrapes the targets given every ``interval_s`` and answers PromQL over its HTTP API, which is
how the tests and the walkthrough read back what it scraped. ``exec_prefix`` runs it where the
appliance's metrics endpoint is reachable (``ip netns exec NS`` on the namespace bench).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any


def available() -> bool:
    return shutil.which("prometheus") is not None


def _free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrometheusServer:
    def __init__(self, workdir: pathlib.Path, targets: Sequence[str], *,
                 interval_s: float = 1.0, exec_prefix: Sequence[str] = ()) -> None:
        self.workdir = pathlib.Path(workdir)
        self.targets = list(targets)
        self.interval_s = interval_s
        self.exec_prefix = list(exec_prefix)
        self.port = _free_tcp_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        interval = f"{int(self.interval_s * 1000)}ms"
        targets = ", ".join(f'"{t}"' for t in self.targets)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            "scrape_configs:\n"
            "  - job_name: jbc\n"
            f"    static_configs:\n      - targets: [{targets}]\n")
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [*self.exec_prefix, shutil.which("prometheus") or "prometheus",
             f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if self.exec_prefix:  # the server lives in another namespace: ask from there
            out = subprocess.run([*self.exec_prefix, "python3", "-c",
                                  "import sys,urllib.request;sys.stdout.write(urllib.request."
                                  f"urlopen({url!r},timeout=5).read().decode())"],
                                 capture_output=True, text=True, timeout=15, check=True)
            return json.loads(out.stdout)
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.loads(reply.read())

    def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant PromQL query: [{'metric': {...labels}, 'value': [t, 'v']}, ...]."""
        return self._get("/api/v1/query", {"query": expression})["data"]["result"]

    def targets_health(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["data"]["activeTargets"]

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``expression`` has a result (Prometheus up, target scraped)."""
        deadline = time.monotonic() + timeout_s
        last_error = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("prometheus exited: "
                                   + (self.workdir / "prometheus.log").read_text()[-2000:])
            try:
                result = self.query(expression)
            except (OSError, ValueError, subprocess.SubprocessError) as error:
                last_error = f"{type(error).__name__}: {error}"
                if isinstance(error, subprocess.CalledProcessError):
                    last_error += f" {error.stderr[-300:]}"
            else:
                if result:
                    return result
                last_error = "no result yet"
            time.sleep(self.interval_s / 4)  # Prometheus has no push: ask it again
        try:
            targets = "; ".join(f"{t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}"
                                for t in self.targets_health())
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            targets = f"targets unknown: {error}"
        raise TimeoutError(f"prometheus: {expression!r} had no result within {timeout_s} s "
                           f"({last_error}; {targets})")
