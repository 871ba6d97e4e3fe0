"""Storage faults for tests and the chaos bench: a state dir on its own small filesystem that
can be filled, freed, made read-only and writable again, and a database whose pages can be
damaged the way a failing disk damages them.

Needs root (it mounts a tmpfs); :func:`can_mount` says whether this process may::

    with SmallFilesystem(tmp_path / "state", size_kib=4096) as state:
        state.fill()          # every write now fails with ENOSPC
        state.free()
        state.read_only()     # EROFS
        state.writable()
    corrupt_table(state_dir / "jbc.sqlite3", "events", pages=3)
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import random
import sqlite3
import subprocess

FILLER = ".filler"


def can_mount() -> bool:
    return os.geteuid() == 0


class SmallFilesystem:
    """A tmpfs of ``size_kib`` mounted at ``path`` (created if missing), unmounted on exit."""

    def __init__(self, path: pathlib.Path, *, size_kib: int = 4096) -> None:
        self.path = path
        self.size_kib = size_kib
        self.mounted = False

    def __enter__(self) -> SmallFilesystem:
        self.path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size_kib}k,mode=0750", "tmpfs",
             str(self.path))
        self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            # Lazy: a daemon that still has files open there must not make this fail.
            _run("umount", "-l", str(self.path))
            self.mounted = False

    def fill(self) -> int:
        """Take every free byte; returns how many were taken."""
        taken = 0
        size = 1 << 20
        with open(self.path / FILLER, "ab", buffering=0) as filler:
            while size:
                try:
                    taken += filler.write(b"\0" * size)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    size //= 2  # the last stretch: halve until not even a byte fits
        return taken

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / FILLER).unlink()

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.path))

    def writable(self) -> None:
        _run("mount", "-o", "remount,rw", str(self.path))


def corrupt_table(database: pathlib.Path, table: str, *, pages: int = 2,
                  seed: int = 14) -> list[int]:
    """Overwrite ``pages`` leaf pages of ``table`` in the database file with random bytes (as
    a failing disk would); returns the page numbers. Checkpoint first if the rows should be in
    the main file rather than the WAL."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        leaves = [row[0] for row in db.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,))]
    if not leaves:
        raise ValueError(f"{database}: table {table!r} has no leaf pages to damage")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(leaves, min(pages, len(leaves))))
    with open(database, "r+b") as file:
        for page in chosen:
            file.seek((page - 1) * page_size)
            file.write(rng.randbytes(page_size))
        file.flush()
        os.fsync(file.fileno())
    return chosen


def corrupt_header(database: pathlib.Path) -> None:
    """Destroy the file header: SQLite no longer recognises the file at all."""
    with open(database, "r+b") as file:
        file.write(os.urandom(100))


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100


class FileWatch:
    """Calls ``action`` the moment a file named ``name`` in ``directory`` sees one of
    ``events`` (inotify; default IN_CREATE, the file opened for writing): a bench kills a
    process while it writes a file it will rename into place. ``fired`` is set once the
    action ran."""

    def __init__(self, directory: pathlib.Path, name: str, action, *,
                 events: int = IN_CREATE) -> None:
        import ctypes
        import threading

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.events = events
        if self._libc.inotify_add_watch(self.fd, os.fsencode(directory), events) < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"cannot watch {directory}")
        self.name = name
        self.action = action
        self.fired = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select
        import struct

        header = struct.calcsize("iIII")
        while True:
            ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            data = os.read(self.fd, 65536)
            offset = 0
            while offset + header <= len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                raw = data[offset + header:offset + header + length]
                offset += header + length
                if raw.rstrip(b"\0").decode() == self.name and mask & self.events:
                    self.action()
                    self.fired.set()
                    return

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for fd in (self.fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
