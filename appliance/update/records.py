"""What the update scheme keeps on the data partition (``update.state_dir``): the committed
slot (the last one that passed its boot check) and the outcome of recent boot checks."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any

COMMITTED = "committed"
BOOT_CHECKS = "boot-checks.json"
KEEP_BOOT_CHECKS = 20
FACTORY_SLOT = "A"
"""A freshly flashed box boots slot A, which is committed by definition."""


def read_committed(state_dir: pathlib.Path) -> str:
    try:
        slot = (state_dir / COMMITTED).read_text().strip()
    except OSError:
        return FACTORY_SLOT
    return slot if slot.isalnum() and len(slot) <= 16 else FACTORY_SLOT


def write_committed(state_dir: pathlib.Path, slot: str) -> None:
    _write_atomically(state_dir / COMMITTED, slot + "\n")


def read_boot_checks(state_dir: pathlib.Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((state_dir / BOOT_CHECKS).read_text())
    except (OSError, ValueError):
        return []
    return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []


def append_boot_check(state_dir: pathlib.Path, entry: dict[str, Any]) -> None:
    entries = [*read_boot_checks(state_dir), entry][-KEEP_BOOT_CHECKS:]
    _write_atomically(state_dir / BOOT_CHECKS, json.dumps(entries, indent=1) + "\n")


def _write_atomically(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
