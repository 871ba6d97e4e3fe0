"""Who is calling: SO_PEERCRED and SO_PEERGROUPS, and the role those credentials earn."""

from __future__ import annotations

import array
import dataclasses
import errno
import functools
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Iterable

from .commands import Peer, Role

log = logging.getLogger(__name__)

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; Python lacks the constant


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RolePolicy:
    """Group ids resolved from the config's group names, plus the daemon's own uid."""

    admin_gids: frozenset[int]
    technician_gids: frozenset[int]
    daemon_uid: int

    @classmethod
    def from_group_names(cls, admin_group: str, technician_group: str) -> RolePolicy:
        return cls(
            admin_gids=_gids_of(admin_group),
            technician_gids=_gids_of(technician_group),
            daemon_uid=os.geteuid(),
        )

    def role_for(self, uid: int, gids: Iterable[int]) -> Role:
        gids = set(gids)
        if uid in (0, self.daemon_uid) or gids & self.admin_gids:
            return Role.ADMIN
        if gids & self.technician_gids:
            return Role.TECHNICIAN
        return Role.NONE


def _gids_of(group: str) -> frozenset[int]:
    try:
        return frozenset({grp.getgrnam(group).gr_gid})
    except KeyError:
        log.warning("control group %r does not exist; create it with 'groupadd %s' or change "
                    "the control section of appliance.toml", group, group)
        return frozenset()


def peer_of(sock: socket.socket, policy: RolePolicy) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    gids = {gid, *_peer_groups(sock, uid, gid)}
    return Peer(pid=pid, uid=uid, gid=gid, user=_user_name(uid), role=policy.role_for(uid, gids))


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    """Cached: a flood of connections must not mean a flood of /etc/passwd reads (a renamed
    user shows under the old name until jbcd restarts, which only affects log text)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> list[int]:
    size = 64
    while size <= 65536:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * 4)
        except OSError as error:
            if error.errno == errno.ERANGE:
                size *= 4
                continue
            break
        groups = array.array("I")
        groups.frombytes(raw[: len(raw) - len(raw) % 4])
        return list(groups)
    # Old kernel: fall back to the group database (misses groups added since login).
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return []
