"""Encryption at rest: AES-256-GCM under one key kept in the state dir (mode 0600).

A sealed blob is ``MAGIC || nonce(12) || ciphertext+tag``. The associated data names what the
blob is (for example ``b"directory-bundle"``), so a blob cannot be swapped for another kind of
blob sealed under the same key. The key file is created on first use with ``O_EXCL`` and mode
0600, fsynced, and never logged; a key file readable by others is refused.
"""

from __future__ import annotations

import logging
import os
import pathlib
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import StoreError

log = logging.getLogger(__name__)

KEY_FILE = "storage.key"
MAGIC = b"JBCS1"
NONCE_BYTES = 12


class SealError(StoreError):
    """A sealed blob could not be opened: wrong key, truncated, or tampered with."""


class SealingKey:
    def __init__(self, key: bytes, *, path: pathlib.Path | None = None,
                 problem: str | None = None) -> None:
        if len(key) != 32:
            raise ValueError("an AES-256 key is 32 bytes")
        self._aead = AESGCM(key)
        self.path = path
        self.problem = problem
        """Why the key lives only in memory (the state dir refused it); None when stored."""

    def __repr__(self) -> str:
        return "SealingKey(<secret>)"

    @classmethod
    def load_or_create(cls, state_dir: pathlib.Path) -> SealingKey:
        """The stored key, or a new one stored now. When the state dir refuses (full,
        read-only, a key file with the wrong mode) the key is kept in memory with a
        :attr:`problem`, and :meth:`ensure_stored` is tried again before anything is sealed."""
        path = state_dir / KEY_FILE
        try:
            return cls._load_or_create(path)
        except OSError as error:
            problem = (f"the sealing key {path} cannot be read or stored ({error}); sealed "
                       "files cannot be opened or written until that is fixed")
            log.error("%s", problem)
            return cls(AESGCM.generate_key(bit_length=256), path=path, problem=problem)

    @classmethod
    def _load_or_create(cls, path: pathlib.Path) -> SealingKey:
        try:
            return cls(_read_private(path), path=path)
        except FileNotFoundError:
            pass
        key = AESGCM.generate_key(bit_length=256)
        write_private_file(path, key, exclusive=True)
        # Whoever won a creation race, use what is on disk.
        return cls(_read_private(path), path=path)

    def rotate(self) -> None:
        """Replace the key (crypto-erase): whatever was sealed under the old one, including
        blocks of removed files a disk may still hold, can no longer be opened."""
        key = AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(key)
        if self.path is None:
            return
        try:
            write_private_file(self.path, key)
            self.problem = None
        except OSError as error:
            # The old key must not survive on disk: remove it (that needs no space); a new
            # one is stored by ensure_stored() before anything is sealed again.
            self.path.unlink(missing_ok=True)
            self.problem = (f"the new sealing key could not be stored in {self.path} ({error});"
                            " one is stored before anything is sealed")
            log.error("%s", self.problem)

    def ensure_stored(self) -> None:
        """Store a key that only lives in memory; raises OSError when that still fails."""
        if self.problem is None or self.path is None:
            return
        stored = self._load_or_create(self.path)
        self._aead, self.problem = stored._aead, None

    def seal(self, plaintext: bytes, *, purpose: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, plaintext, purpose)

    def open(self, blob: bytes, *, purpose: bytes) -> bytes:
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
            raise SealError("not a sealed blob (wrong format or truncated)")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], purpose)
        except InvalidTag:
            raise SealError("authentication failed (tampered, truncated or another key)") from None


def _read_private(path: pathlib.Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run 'chmod 600 {path}' and restart jbcd")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return data


def write_private_file(path: pathlib.Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600, durably (file and directory fsynced).

    ``exclusive`` creates the file only if it does not exist (FileExistsError otherwise is
    swallowed: the existing file wins). Without it the file is replaced atomically.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if exclusive:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        _write_all(fd, data)
        fsync_directory(path.parent)
        return
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    _write_all(fd, data)
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
