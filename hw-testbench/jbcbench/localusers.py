"""Other local users on the control socket, for tests and benchmarks (needs root): a forked
child drops to a uid and groups and holds connections open, the way a user with a shell on
the appliance could::

    with HeldConnections(socket_path, uid=65534, gids=[65534], count=40) as held:
        held.answers   # what jbcd said to each (its first answer, or how connect failed)
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import signal
import socket
import tempfile
import time

NOBODY = 65534


def shared_workdir(prefix: str) -> pathlib.Path:
    """A temp dir other users may traverse (pytest's and mkdtemp's are root-only)."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir


class HeldConnections:
    """``count`` connections held open by a child running as ``uid``/``gids``; each sends
    ``status`` once and keeps the socket open (if jbcd lets it) until the context ends."""

    def __init__(self, path: pathlib.Path, *, uid: int, gids: list[int], count: int,
                 command: str = "status", timeout_s: float = 10.0) -> None:
        self.path = path
        self.uid = uid
        self.gids = gids
        self.count = count
        self.command = command
        self.timeout_s = timeout_s
        self.answers: list[dict] = []
        self._pid = 0
        self._release_w = -1

    def __enter__(self) -> HeldConnections:
        report_r, report_w = os.pipe()
        release_r, self._release_w = os.pipe()
        self._pid = os.fork()
        if self._pid == 0:  # child
            try:
                close_all_but(report_w, release_r)  # a sibling must not keep our pipes open
                os.setgroups(self.gids)
                os.setgid(self.gids[0])
                os.setuid(self.uid)
                held, answers = [], []
                for _ in range(self.count):
                    sock, answer = _open_and_ask(self.path, self.command, self.timeout_s)
                    held.append(sock)
                    answers.append(answer)
                os.write(report_w, json.dumps(answers).encode() + b"\n")
                os.close(report_w)
                select.select([release_r], [], [])  # hold until the parent closes its end
            finally:
                os._exit(0)
        os.close(report_w)
        os.close(release_r)
        data = b""
        while not data.endswith(b"\n"):
            chunk = os.read(report_r, 1 << 20)
            if not chunk:
                break
            data += chunk
        os.close(report_r)
        self.answers = json.loads(data) if data.strip() else []
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._release_w)
        os.waitpid(self._pid, 0)

    def codes(self) -> list[str | None]:
        """Per connection: None if served, else the error code or 'connect:<errno>'."""
        return [a.get("error", {}).get("code") if "ok" in a else a.get("failure")
                for a in self.answers]


def close_all_but(*keep: int) -> None:
    """In a forked child: close every inherited descriptor except stdio and ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_and_ask(path: pathlib.Path, command: str,
                  timeout_s: float) -> tuple[socket.socket | None, dict]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(timeout_s)
    try:
        sock.connect(str(path))
    except OSError as error:
        sock.close()
        return None, {"failure": f"connect:{error.errno}"}
    with contextlib.suppress(BrokenPipeError):  # refused at accept: the reason waits to be read
        sock.sendall(json.dumps({"id": 1, "command": command}).encode() + b"\n")
    buffer = b""
    try:
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
    except OSError as error:
        return sock, {"failure": f"recv:{error.errno}"}
    if not buffer:
        return sock, {"failure": "closed"}
    return sock, json.loads(buffer.split(b"\n")[0])


class ConnectionFlood:
    """A child as ``uid`` (default: nobody, no groups) keeping ``connections`` control
    connections open or opening, as fast as it can, until :meth:`stop`."""

    def __init__(self, path: pathlib.Path, *, connections: int = 40, uid: int = NOBODY,
                 gids: list[int] | None = None) -> None:
        self.path = path
        self.connections = connections
        self.uid = uid
        self.gids = gids or [NOBODY]
        self._pid = 0

    def start(self) -> ConnectionFlood:
        self._pid = os.fork()
        if self._pid == 0:
            try:
                close_all_but()
                os.setgroups(self.gids)
                os.setgid(self.gids[0])
                os.setuid(self.uid)
                self._flood()
            finally:
                os._exit(0)
        return self

    def stop(self) -> None:
        if self._pid:
            os.kill(self._pid, signal.SIGTERM)
            os.waitpid(self._pid, 0)
            self._pid = 0

    def _flood(self) -> None:
        open_now: list[socket.socket] = []
        while True:
            while len(open_now) < self.connections:
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    sock.connect(str(self.path))
                    open_now.append(sock)
                except OSError:
                    sock.close()
                    break
            for sock in list(open_now):  # drop the ones jbcd closed, reconnect next round
                try:
                    if sock.recv(65536) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                open_now.remove(sock)
                sock.close()
            time.sleep(0.001)
