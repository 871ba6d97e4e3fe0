"""The applied config bundles on disk: sealed (AES-256-GCM), replaced atomically, previous kept.

Layout under ``<state_dir>/bundles/`` (directory mode 0700, files 0600)::

    current.sealed    the bundle in force
    previous.sealed   the one before it, for rollback
    *.new             half-written files of an interrupted apply (removed at start)

Applying writes the new blob to ``incoming.new`` and fsyncs it, points ``previous`` at the
old current (a hard link renamed into place), renames ``incoming.new`` over ``current`` and
fsyncs the directory. Every rename is atomic, so a process killed at any instant leaves
``current.sealed`` as either the complete old or the complete new bundle, never a mix; a
power cut after the directory fsync cannot lose the new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.directory.model import Directory
from appliance.store.sealed import SealError, SealingKey, fsync_directory

from .bundle import BundleRejected, VerifiedBundle, verify_bundle
from .errors import SyncError

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundles"
CURRENT = "current.sealed"
PREVIOUS = "previous.sealed"
INCOMING = "incoming.new"
PURPOSE = b"jbc directory bundle"


class StoredBundleUnreadable(SyncError):
    """The stored bundle failed its seal or its checks; details say which file and why."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoredBundle:
    bundle: VerifiedBundle
    which: str
    """'current' or 'previous' (the latter when current was unreadable)."""

    @property
    def directory(self) -> Directory:
        return self.bundle.directory


class BundleStore:
    def __init__(self, state_dir: pathlib.Path, key: SealingKey,
                 public_key: Ed25519PublicKey | None) -> None:
        self.path = state_dir / BUNDLE_DIR
        self.key = key
        self.public_key = public_key
        self.problems: list[str] = []

    # -- reading ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Remove leftovers of an interrupted apply. Call once at start."""
        if not self.path.exists():
            return
        for leftover in self.path.glob("*.new"):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:  # a read-only state dir: harmless, removed next time
                log.warning("cannot remove %s left by an interrupted apply: %s", leftover, error)

    def read(self, which: str = "current") -> VerifiedBundle | None:
        """One stored bundle, checked; None if absent. Raises StoredBundleUnreadable."""
        file = self.path / (CURRENT if which == "current" else PREVIOUS)
        try:
            blob = file.read_bytes()
        except FileNotFoundError:
            return None
        try:
            envelope = self.key.open(blob, purpose=PURPOSE)
            return verify_bundle(envelope, self.public_key, account=None, applied_version=None,
                                 source=f"stored {which} bundle")
        except (SealError, BundleRejected) as error:
            raise StoredBundleUnreadable(f"{file}: {error}") from None

    def load(self) -> StoredBundle | None:
        """The bundle to run with: current, or previous if current is damaged."""
        self.problems = [self.key.problem] if self.key.problem else []
        for which in ("current", "previous"):
            try:
                bundle = self.read(which)
            except StoredBundleUnreadable as error:
                self.problems.append(str(error))
                log.error("stored config bundle unusable: %s", error)
                continue
            if bundle is not None:
                return StoredBundle(bundle=bundle, which=which)
        return None

    def load_applied(self) -> tuple[Directory, str] | None:
        """For DirectoryService at start: the directory of the stored bundle, if any."""
        self.recover()
        stored = self.load()
        if stored is None:
            return None
        suffix = "" if stored.which == "current" else " (previous: the current one is damaged)"
        return stored.directory, f"cloud bundle v{stored.bundle.version}{suffix}"

    # -- writing ---------------------------------------------------------------------------

    def apply(self, bundle: VerifiedBundle) -> None:
        """Make ``bundle`` current, durably and atomically; the old current becomes previous."""
        self.key.ensure_stored()
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        blob = self.key.seal(bundle.envelope, purpose=PURPOSE)
        incoming = self.path / INCOMING
        _write_synced(incoming, blob)
        current = self.path / CURRENT
        if current.exists():
            _link_replace(current, self.path / PREVIOUS)
        os.replace(incoming, current)
        fsync_directory(self.path)

    def rollback(self) -> VerifiedBundle:
        """Swap current and previous; returns the bundle now current."""
        current, previous = self.path / CURRENT, self.path / PREVIOUS
        older = self.read("previous")
        if older is None:
            raise FileNotFoundError("no previous config bundle is kept; nothing to roll back to")
        incoming = self.path / INCOMING
        with contextlib.suppress(FileNotFoundError):
            incoming.unlink()
        os.link(previous, incoming)
        _link_replace(current, previous)
        os.replace(incoming, current)
        fsync_directory(self.path)
        return older

    def erase(self) -> int:
        """Delete every stored bundle and replace the sealing key (so no copy of one a disk
        may still hold opens again); returns how many files were removed."""
        removed = 0
        if self.path.exists():
            for file in self.path.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
                    removed += 1
            fsync_directory(self.path)
        self.key.rotate()
        return removed


def _write_synced(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_replace(source: pathlib.Path, target: pathlib.Path) -> None:
    """Make ``target`` another name of ``source``, atomically replacing what was there."""
    staging = target.with_name(target.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    os.link(source, staging)
    os.replace(staging, target)
