"""The control socket server: a thin asyncio shell around the protocol and the registry.

Nothing a client sends can crash or block the daemon: only the control groups may connect
(:mod:`.socket_access`), the role is decided at accept and a peer without one is closed at
once, connections are limited per user with slots kept for admins (:mod:`.admission`),
refusals are journalled (rate-limited), request lines are bounded in size and depth, idle
connections time out, every handler error becomes a JSON error, and one slow or hostile
client only ever holds up its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import pathlib
import socket
import time
from collections.abc import Callable

from appliance.control.config import ControlConfig
from appliance.daemon_config import CONTROL_SOCKET
from appliance.journal import EventJournal

from . import protocol, socket_access
from .admission import ConnectionLimits, RefusalLog
from .commands import CommandContext, CommandError, CommandRegistry, Peer, Role
from .peer import RolePolicy, peer_of

log = logging.getLogger(__name__)

SOCKET_NAME = CONTROL_SOCKET
WRITE_TIMEOUT_S = 10.0


class ControlServer:
    name = "control"

    def __init__(self, *, config: ControlConfig, runtime_dir: pathlib.Path,
                 registry: CommandRegistry, journal: EventJournal,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.path = runtime_dir / SOCKET_NAME
        self.registry = registry
        self.journal = journal
        self.clock = clock
        self.policy = RolePolicy.from_group_names(config.admin_group, config.technician_group)
        self.limits = ConnectionLimits(max_clients=config.max_clients,
                                       per_user=config.max_clients_per_user,
                                       admin_reserved=config.admin_reserved_clients)
        self.refusals = RefusalLog()
        self.access = ""
        """How the socket file is limited to the control groups (for 'jbc status')."""
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task, asyncio.StreamWriter] = {}
        self.requests_served = 0
        self.requests_refused = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(self.path)
        self._server = await asyncio.start_unix_server(
            self._serve_connection, path=str(self.path), limit=self.config.max_request_bytes,
        )
        self.access = socket_access.restrict(self.path, self._control_gids())
        log.info("control socket listening on %s (%s)", self.path, self.access)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if self._server is not None:
            self._server.close()
        # Closing each transport ends its handler's read cleanly; cancel only what lingers.
        for writer in list(self._connections.values()):
            writer.close()
        if self._connections:
            _, lingering = await asyncio.wait(list(self._connections), timeout=2.0)
            for task in lingering:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def reconfigure(self, config: ControlConfig) -> None:
        if (config.max_request_bytes, ) != (self.config.max_request_bytes, ):
            log.warning("control.max_request_bytes changes take effect after a restart")
        self.config = config
        self.policy = RolePolicy.from_group_names(config.admin_group, config.technician_group)
        self.limits.reconfigure(max_clients=config.max_clients,
                                per_user=config.max_clients_per_user,
                                admin_reserved=config.admin_reserved_clients)
        if self._server is not None:
            self.access = socket_access.restrict(self.path, self._control_gids())

    def _control_gids(self) -> frozenset[int]:
        return self.policy.admin_gids | self.policy.technician_gids

    # -- one connection --------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections[task] = writer
        peer: Peer | None = None
        try:
            sock: socket.socket = writer.get_extra_info("socket")
            candidate = peer_of(sock, self.policy)
            refusal = self.limits.admit(candidate, _refusal(candidate, Role.TECHNICIAN,
                                                            self.policy, self.config))
            if refusal is not None:
                self._refused(candidate, refusal.code, refusal.message)
                await self._send(writer, protocol.error_message(None, refusal.code,
                                                                refusal.message))
                return
            peer = candidate
            await self._serve_requests(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            if peer is not None:
                self.limits.release(peer)
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _refused(self, peer: Peer, code: str, message: str, command: str | None = None) -> None:
        """Journal a refusal, at most once a minute per user and code (with the count)."""
        details = self.refusals.note(peer, code, self.clock())
        if details is None:
            return
        if command is not None:
            details["command"] = command
        left_out = details["left_out_since_last_entry"]
        more = f" (and {left_out} more since the last entry)" if left_out else ""
        what = f"{command}: " if command else "connection: "
        self.journal.record("control", "access-refused", f"{what}{code}: {message}{more}",
                            details, actor=peer.describe())

    async def _serve_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                              peer: Peer) -> None:
        while True:
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):
                    line = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                self.requests_refused += 1
                await self._send(writer, protocol.error_message(
                    None, "too_large",
                    f"request longer than {self.config.max_request_bytes} bytes; "
                    "connection closed"))
                return
            except asyncio.IncompleteReadError:
                return  # client closed
            except TimeoutError:
                await self._send(writer, protocol.error_message(
                    None, "timeout",
                    f"idle for {self.config.idle_timeout_s:g} s; connection closed"))
                return
            if not line.strip():
                continue
            keep_open = await self._handle_line(line, reader, writer, peer)
            if not keep_open:
                return

    async def _handle_line(self, line: bytes, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, peer: Peer) -> bool:
        try:
            request = protocol.parse_request(line)
        except protocol.ProtocolError as error:
            self.requests_refused += 1
            await self._send(writer, protocol.error_message(error.request_id, error.code,
                                                            error.message))
            return True
        command = self.registry.get(request.command)
        if command is None:
            self.requests_refused += 1
            await self._send(writer, protocol.error_message(
                request.id, "unknown_command",
                f"no command {request.command!r}; 'jbc --help' lists what this daemon offers"))
            return True
        if peer.role < command.role:
            self.requests_refused += 1
            message = _refusal(peer, command.role, self.policy, self.config)
            self._refused(peer, "permission_denied", message, command=command.name)
            await self._send(writer, protocol.error_message(request.id, "permission_denied",
                                                            message))
            return True
        context = CommandContext(peer=peer, args=request.args)
        self.requests_served += 1
        if command.streaming:
            await self._stream(command, context, request, reader, writer)
            return False
        try:
            result = command.handler(context)
            if inspect.isawaitable(result):
                result = await result
        except CommandError as error:
            self._journal_action(command.name, context, f"refused: {error.message}")
            await self._send(writer, protocol.error_message(request.id, error.code, error.message))
            return True
        except Exception as error:
            log.exception("control command %s failed", command.name)
            self._journal_action(command.name, context, f"failed: {error}")
            await self._send(writer, protocol.error_message(
                request.id, "failed", f"{command.name} failed inside the daemon: {error} "
                "(see 'journalctl -u jbcd')"))
            return True
        self._journal_action(command.name, context, "done")
        await self._send(writer, protocol.result_message(request.id, result))
        return True

    async def _stream(self, command, context: CommandContext, request: protocol.Request,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Send a streaming command's items until it ends or the client goes away."""
        client_gone = asyncio.ensure_future(reader.read(1))
        items = command.handler(context)
        try:
            while True:
                next_item = asyncio.ensure_future(anext(items))
                done, _ = await asyncio.wait({next_item, client_gone},
                                             return_when=asyncio.FIRST_COMPLETED)
                if next_item not in done:
                    next_item.cancel()
                    return
                try:
                    item = next_item.result()
                except StopAsyncIteration:
                    await self._send(writer, protocol.done_message(request.id))
                    return
                except CommandError as error:
                    await self._send(writer, protocol.error_message(request.id, error.code,
                                                                    error.message))
                    return
                await self._send(writer, protocol.item_message(request.id, item))
        finally:
            client_gone.cancel()
            with contextlib.suppress(Exception):
                await items.aclose()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    def _journal_action(self, name: str, context: CommandContext, outcome: str) -> None:
        if context.peer.role is not Role.NONE and self.registry.get(name).changes_behaviour:
            self.journal.record("control", "technician-action", f"{name}: {outcome}",
                                {"command": name, "args": dict(context.args)},
                                actor=context.peer.describe())


def _refusal(peer: Peer, needed: Role, policy: RolePolicy, config: ControlConfig) -> str:
    if needed is Role.ADMIN:
        group = config.admin_group
        what = "change the appliance's behaviour"
    else:
        group = config.technician_group
        what = "read the appliance's status"
    missing = "" if (policy.admin_gids if needed is Role.ADMIN else policy.technician_gids) else (
        f" (the group {group!r} does not exist on this system)")
    return (f"{peer.user} may not {what}: this needs the {needed.label} role. Ask an admin to "
            f"add you to the {group!r} group{missing}, or run it with sudo.")


def _remove_stale_socket(path: pathlib.Path) -> None:
    """Remove a socket left by a crashed daemon, but never steal a live daemon's socket."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as error:
        if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)
            return
        raise
    else:
        raise RuntimeError(f"another jbcd is already serving {path}; stop it first "
                           "('systemctl stop jbcd') or use a different daemon.runtime_dir")
    finally:
        probe.close()


