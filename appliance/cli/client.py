"""A small synchronous client for the control socket, with errors that map to exit codes."""

from __future__ import annotations

import errno
import itertools
import json
import os
import pathlib
import socket
from collections.abc import Iterator, Mapping
from typing import Any

from appliance.control import protocol

DEFAULT_SOCKET = pathlib.Path("/run/jbc/control.sock")
MAX_RESPONSE_BYTES = 64 * 1024 * 1024

EXIT_OK = 0
EXIT_ATTENTION = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_DENIED = 4


class ClientError(Exception):
    exit_code = EXIT_ATTENTION

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DaemonUnreachable(ClientError):
    exit_code = EXIT_UNREACHABLE


class PermissionDenied(ClientError):
    exit_code = EXIT_DENIED


class BadRequest(ClientError):
    exit_code = EXIT_USAGE


def default_socket_path(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
    if environ.get("JBC_SOCKET"):
        return pathlib.Path(environ["JBC_SOCKET"])
    if environ.get("JBC_RUNTIME_DIR"):
        return pathlib.Path(environ["JBC_RUNTIME_DIR"]) / "control.sock"
    return DEFAULT_SOCKET


class ControlClient:
    def __init__(self, path: pathlib.Path, *, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buffer = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as error:
            sock.close()
            if error.errno in (errno.EACCES, errno.EPERM):
                raise PermissionDenied(
                    f"no permission to open {self.path}; ask an admin to add you to the "
                    "jbc-tech group, or use sudo") from None
            reason = {errno.ENOENT: "no such socket", errno.ECONNREFUSED: "connection refused"
                      }.get(error.errno, error.strerror or str(error))
            raise DaemonUnreachable(
                f"cannot reach jbcd at {self.path}: {reason}. Is it running? Check "
                "'systemctl status jbcd' (or pass --socket / set JBC_SOCKET)") from None
        self._sock = sock
        return sock

    def _read_message(self) -> dict[str, Any]:
        sock = self._connect()
        while b"\n" not in self._buffer:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise DaemonUnreachable(
                    f"jbcd did not answer within {self.timeout_s:g} s") from None
            if not chunk:
                raise DaemonUnreachable("jbcd closed the connection before answering")
            self._buffer += chunk
            if len(self._buffer) > MAX_RESPONSE_BYTES:
                raise ClientError("response from jbcd is too large")
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise ClientError("jbcd sent a malformed response") from None
        if not message.get("ok"):
            _raise_for(message.get("error") or {})
        return message

    def _send(self, command: str, args: Mapping[str, Any] | None) -> int:
        request_id = next(self._ids)
        try:
            self._connect().sendall(protocol.request_message(command, args, request_id))
        except (BrokenPipeError, ConnectionResetError):
            # jbcd may have refused the connection at accept (no role, busy) and closed it:
            # its one-line reason is still waiting to be read.
            self._read_message()
            raise DaemonUnreachable("jbcd closed the connection") from None
        return request_id

    def call(self, command: str, args: Mapping[str, Any] | None = None) -> Any:
        self._send(command, args)
        return self._read_message().get("result")

    def stream(self, command: str, args: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Items of a streaming command, until the daemon says it is done."""
        sock = self._connect()
        sock.settimeout(None)
        self._send(command, args)
        while True:
            message = self._read_message()
            if message.get("done"):
                return
            yield message.get("item")


def _raise_for(error: Mapping[str, Any]) -> None:
    code = error.get("code", "failed")
    message = error.get("message", "jbcd refused the request")
    if code == "permission_denied":
        raise PermissionDenied(message, code)
    if code in ("bad_request", "unknown_command"):
        raise BadRequest(message, code)
    raise ClientError(message, code)
