"""Who may even connect to the control socket: its owner (jbcd's user), root, and the members
of the technician and admin groups, as the design says; nobody else.

The socket file gets mode 0600 plus a POSIX access ACL granting read/write to each of the two
groups (the owner of a file may set its ACL without being in the groups, so jbcd needs no extra
privilege). ``ls -l`` shows ``srw-rw----+``. A user in neither group gets EACCES from
connect(2), which 'jbc' turns into "ask an admin to add you to jbc-tech". Where the file
system has no ACLs, one group is set as the file's group (mode 0660) if jbcd may; otherwise the
socket stays 0666 with a warning, and the role check at accept (no-role peers closed at once)
is what keeps others out.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import struct
from collections.abc import Iterable

log = logging.getLogger(__name__)

ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_READ_WRITE = 0o6


def encode_acl(group_ids: Iterable[int]) -> bytes:
    """The kernel's xattr form of ``u::rw-, g::---, g:<gid>:rw- ..., m::rw-, o::---``."""
    entries = [(_USER_OBJ, _READ_WRITE, _UNDEFINED_ID), (_GROUP_OBJ, 0, _UNDEFINED_ID)]
    entries += [(_GROUP, _READ_WRITE, gid) for gid in sorted(set(group_ids))]
    entries += [(_MASK, _READ_WRITE, _UNDEFINED_ID), (_OTHER, 0, _UNDEFINED_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


def decode_acl(data: bytes) -> list[tuple[str, int | None, int]]:
    """``[(tag, id, perm)]`` with tags user_obj, user, group_obj, group, mask, other."""
    names = {0x01: "user_obj", 0x02: "user", 0x04: "group_obj", 0x08: "group", 0x10: "mask",
             0x20: "other"}
    (version,) = struct.unpack_from("<I", data)
    if version != _ACL_VERSION:
        raise ValueError(f"unknown ACL version {version}")
    entries = []
    for offset in range(4, len(data), 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, offset)
        entries.append((names.get(tag, hex(tag)), None if ident == _UNDEFINED_ID else ident,
                        perm))
    return entries


def restrict(path: pathlib.Path, group_ids: Iterable[int]) -> str:
    """Limit who may connect to ``path`` to its owner, root and ``group_ids``; returns how."""
    gids = sorted(set(group_ids))
    if not gids:
        os.chmod(path, 0o600)
        return "0600: jbcd's user and root only (neither control group exists)"
    os.chmod(path, 0o600)
    try:
        os.setxattr(path, ACL_XATTR, encode_acl(gids))
        return f"0600 plus an ACL for the groups {', '.join(map(str, gids))}"
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            raise
        reason = error.strerror
    if len(gids) == 1:
        try:
            os.chown(path, -1, gids[0])
            os.chmod(path, 0o660)
            return f"0660 for group {gids[0]} (no ACLs here: {reason})"
        except PermissionError:
            pass
    os.chmod(path, 0o666)
    log.warning("cannot limit the control socket %s to the control groups (%s; the file system "
                "has no POSIX ACLs): any local user may connect, and those without a role are "
                "closed at once", path, reason)
    return f"0666 (no ACLs here: {reason}); roles are checked at accept"
