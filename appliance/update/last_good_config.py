"""A config the booted release can read, after a rollback: nothing an admin set is lost.

Unknown keys are errors, so a key that a newer release knows (set while it ran, or added by
it) stops an older release: after a rollback, jbcd would exit 78 and the site would have no
appliance. jbc-boot-check (root, every boot) prevents that. Before waiting for jbcd it loads
the config with the booted release; when that fails:

1. **Keys this release does not know are commented out**, each with a note, when that is all
   that is wrong: every other setting (an admin's edits since the last boot included) stays.
   The result must parse to exactly the old settings minus those keys, or this step is not
   taken.
2. Otherwise **the slot's last good config is put back**: after every passed check
   jbc-boot-check keeps ``/etc/jbc`` as ``<update.state_dir>/config/<slot>/`` (the last
   config this slot's release ran with and passed; rewritten only when it changed: SD cards
   wear).

Either way the config directory as it was is first copied whole to
``<update.state_dir>/config/set-aside/<time>-<slot>/``: nothing is deleted, and the boot
check's record, the journal and the console say where it went. Only regular files are copied
(at most :data:`MAX_FILES`, :data:`MAX_BYTES` in all), with their modes and owners.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import time
import tomllib
from collections.abc import Callable
from typing import Any, Protocol

from .errors import UpdateError

SNAPSHOTS = "config"
SET_ASIDE = "set-aside"
MAX_FILES = 256
MAX_BYTES = 16 * 1024 * 1024
MAX_UNKNOWN_KEYS = 32
UNKNOWN_KEY = "unknown key"
"""How appliance.config.schema starts the message of a key it does not know."""


class ConfigCopyError(UpdateError):
    """The config directory could not be copied (too big, unreadable)."""


class Problem(Protocol):
    """Why a config file cannot be used: ``key`` (dotted, e.g. ``wan.probe_s`` or
    ``trunks[0].pin``) and ``message``, like appliance.config's ConfigError."""

    key: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRestored:
    """The config did not load with the booted release; now it does."""

    slot: str
    error: str
    set_aside: pathlib.Path
    commented_out: tuple[str, ...] = ()
    """Keys this release does not know, commented out (the rest of the config kept)."""
    restored_from: pathlib.Path | None = None
    """Or: the slot's last good config directory, put back."""

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "error": self.error, "set_aside": str(self.set_aside),
                "commented_out": list(self.commented_out),
                "restored_from": None if self.restored_from is None
                else str(self.restored_from)}

    def message(self) -> str:
        if self.commented_out:
            done = (f"commented out what this release does not know "
                    f"({', '.join(self.commented_out)}), kept everything else")
        else:
            done = (f"put back the config slot {self.slot} last booted with, from "
                    f"{self.restored_from}")
        return (f"the config did not load with the release in slot {self.slot} ({self.error}); "
                f"{done}; the config as it was is kept in {self.set_aside}")


def snapshot_dir(state_dir: pathlib.Path, slot: str) -> pathlib.Path:
    return state_dir / SNAPSHOTS / slot


def last_good(state_dir: pathlib.Path, slot: str) -> pathlib.Path | None:
    """The slot's last good config directory, or None. A replacement interrupted between its
    two renames left only ``.<slot>.old``: that one still counts."""
    for candidate in (snapshot_dir(state_dir, slot), state_dir / SNAPSHOTS / f".{slot}.old"):
        if candidate.is_dir():
            return candidate
    return None


def keep_last_good(config_dir: pathlib.Path, state_dir: pathlib.Path, slot: str) -> bool:
    """Keep ``config_dir`` as the slot's last good config. False when it was kept already."""
    _check_slot(slot)
    kept = last_good(state_dir, slot)
    if kept is not None and _digest(kept) == _digest(config_dir):
        return False
    root = state_dir / SNAPSHOTS
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # the config holds secrets (SIP passwords, keys)
    new, old, target = root / f".{slot}.new", root / f".{slot}.old", snapshot_dir(state_dir, slot)
    shutil.rmtree(new, ignore_errors=True)
    _copy_files(config_dir, new)
    _sync_dir(new)
    if target.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    _sync_dir(root)
    shutil.rmtree(old, ignore_errors=True)
    return True


def restore_last_good(config_file: pathlib.Path, state_dir: pathlib.Path, slot: str, *,
                      problem: Callable[[pathlib.Path], Problem | None],
                      now: Callable[[], float] = time.time) -> ConfigRestored | None:
    """Make ``config_file`` loadable by the booted release again, losing nothing.

    ``problem(path)`` loads a config file with the booted release and returns why it cannot
    be used (an object with ``key`` and ``message``), or None. Returns None, changing
    nothing, when the config loads, or when neither step works (then jbcd reports the
    problem itself, as on any box)."""
    _check_slot(slot)
    first = problem(config_file)
    if first is None:
        return None
    error = f"{first.key}: {first.message}"
    text = _read_text(config_file)
    trimmed = None if text is None else _without_unknown_keys(
        text, first, lambda candidate: _problem_of_text(candidate, config_file, problem))
    good = last_good(state_dir, slot)
    if trimmed is None and (good is None or problem(good / config_file.name) is not None):
        return None
    config_dir = config_file.parent
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now()))
    aside = state_dir / SNAPSHOTS / SET_ASIDE / f"{stamp}-{slot}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = aside.with_name(f"{stamp}-{slot}-{suffix}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(aside.parent.parent, 0o700)
    _copy_files(config_dir, aside)
    _sync_dir(aside)
    if trimmed is not None:
        new_text, keys = trimmed
        _write_like(config_file, new_text)
        return ConfigRestored(slot=slot, error=error, set_aside=aside,
                              commented_out=tuple(keys))
    assert good is not None
    for source in _regular_files(good):
        target = config_dir / source.relative_to(good)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.jbc-restore")
        _copy_one(source, tmp)
        os.replace(tmp, target)
        _sync_dir(target.parent)
    return ConfigRestored(slot=slot, error=error, set_aside=aside, restored_from=good)


# --- commenting out the keys a release does not know -----------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*(\]\]?)\s*(#.*)?$")
_PATH_PART = re.compile(r"^([^\[\]]+)(?:\[(\d+)\])?$")


def _without_unknown_keys(text: str, first: Problem,
                          problem_of: Callable[[str], Problem | None]
                          ) -> tuple[str, list[str]] | None:
    """``text`` with every key the release does not know commented out, and those keys; or
    None when something else is wrong or a key cannot be cut out cleanly."""
    try:
        original = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    keys: list[str] = []
    current: Problem | None = first
    while current is not None:
        if not current.message.startswith(UNKNOWN_KEY) or len(keys) >= MAX_UNKNOWN_KEYS:
            return None
        cut = _comment_out(text, current.key)
        if cut is None:
            return None
        text = cut
        keys.append(current.key)
        current = problem_of(text)
    expected = original
    for key in keys:
        expected = _without(expected, key)
        if expected is None:
            return None
    try:
        return (text, keys) if tomllib.loads(text) == expected else None
    except tomllib.TOMLDecodeError:
        return None


def _split_path(key: str) -> list[tuple[str, int | None]] | None:
    parts = []
    for part in key.split("."):
        match = _PATH_PART.match(part)
        if match is None:
            return None
        parts.append((match.group(1), None if match.group(2) is None else int(match.group(2))))
    return parts


def _without(data: dict, key: str) -> dict | None:
    """A deep copy of parsed TOML ``data`` without ``key``; None when it is not there."""
    parts = _split_path(key)
    if parts is None:
        return None
    copy = _deep_copy(data)
    node: Any = copy
    for name, index in parts[:-1]:
        node = node.get(name) if isinstance(node, dict) else None
        if index is not None:
            node = node[index] if isinstance(node, list) and index < len(node) else None
        if not isinstance(node, dict):
            return None
    name, index = parts[-1]
    if index is not None or not isinstance(node, dict) or name not in node:
        return None
    del node[name]
    return copy


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _comment_out(text: str, key: str) -> str | None:
    """``text`` with the lines that set ``key`` commented out; None if they cannot be found
    as plain lines (dotted keys, inline tables and the like are left to the other step)."""
    parts = _split_path(key)
    if parts is None or parts[-1][1] is not None:
        return None
    lines = text.split("\n")
    table = ".".join(name for name, _ in parts[:-1])
    wanted_index = parts[-2][1] if len(parts) > 1 else None
    leaf = parts[-1][0]
    spans = _key_spans(lines, table, wanted_index, leaf)
    if not table:
        spans += _table_spans(lines, leaf)
    if not spans:
        return None
    note = f"# jbc-boot-check: '{key}' is unknown to this release; commented out after a rollback"
    for start, end in sorted(spans, reverse=True):
        block = [f"# {line}" if line.strip() else line for line in lines[start:end]]
        lines[start:end] = [note, *block]
    return "\n".join(lines)


def _key_spans(lines: list[str], table: str, index: int | None,
               leaf: str) -> list[tuple[int, int]]:
    """Where ``leaf = ...`` is set in ``[table]`` (the ``index``-th ``[[table]]``)."""
    current = ""
    counts: dict[str, int] = {}
    assignment = re.compile(rf'^\s*("?){re.escape(leaf)}\1\s*=')
    for number, line in enumerate(lines):
        header = _HEADER.match(line)
        if header is not None:
            current = header.group(2).replace(" ", "")
            if header.group(1) == "[[":
                counts[current] = counts.get(current, -1) + 1
            continue
        if current != table or (index is not None and counts.get(current) != index):
            continue
        if assignment.match(line):
            end = _value_end(lines, number)
            return [] if end is None else [(number, end)]
    return []


def _value_end(lines: list[str], start: int) -> int | None:
    """The line after a key's value, which may span lines (arrays, multi-line strings)."""
    for end in range(start + 1, min(len(lines), start + 200) + 1):
        try:
            tomllib.loads("\n".join(lines[start:end]))
        except tomllib.TOMLDecodeError:
            continue
        return end
    return None


def _table_spans(lines: list[str], name: str) -> list[tuple[int, int]]:
    """Every table named ``name`` or under it (``[name]``, ``[[name]]``, ``[name.sub]``),
    each from its header to the next header."""
    headers = [(number, _HEADER.match(line)) for number, line in enumerate(lines)]
    starts = [(number, match.group(2).replace(" ", "")) for number, match in headers
              if match is not None]
    spans = []
    for position, (number, table) in enumerate(starts):
        if table == name or table.startswith(name + "."):
            end = starts[position + 1][0] if position + 1 < len(starts) else len(lines)
            spans.append((number, end))
    return spans


def _problem_of_text(text: str, config_file: pathlib.Path,
                     problem: Callable[[pathlib.Path], Problem | None]) -> Problem | None:
    candidate = config_file.with_name(f".{config_file.name}.jbc-check")
    try:
        candidate.write_text(text)
        return problem(candidate)
    finally:
        candidate.unlink(missing_ok=True)


def _read_text(path: pathlib.Path) -> str | None:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _write_like(path: pathlib.Path, text: str) -> None:
    """Replace ``path``'s content atomically, keeping its mode and owner."""
    info = path.stat()
    tmp = path.with_name(f".{path.name}.jbc-restore")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, info.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(tmp, info.st_uid, info.st_gid)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _check_slot(slot: str) -> None:
    if not (slot.isalnum() and len(slot) <= 16):
        raise ValueError(f"not a slot name: {slot!r}")


def _regular_files(directory: pathlib.Path) -> list[pathlib.Path]:
    """Every regular file under ``directory`` (symlinks are not followed), bounded."""
    files: list[pathlib.Path] = []
    total = 0
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(names):
            path = pathlib.Path(root, name)
            if name.endswith(".jbc-restore") or path.is_symlink() or not path.is_file():
                continue
            files.append(path)
            total += path.stat().st_size
            if len(files) > MAX_FILES or total > MAX_BYTES:
                raise ConfigCopyError(f"{directory}: more than {MAX_FILES} files or "
                                      f"{MAX_BYTES} bytes; not a config directory to copy")
    return files


def _copy_files(source_dir: pathlib.Path, target_dir: pathlib.Path) -> None:
    target_dir.mkdir(parents=True, mode=0o700)
    for source in _regular_files(source_dir):
        target = target_dir / source.relative_to(source_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_one(source, target)


def _copy_one(source: pathlib.Path, target: pathlib.Path) -> None:
    shutil.copy2(source, target)
    info = source.stat()
    if os.geteuid() == 0:
        os.chown(target, info.st_uid, info.st_gid)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def _digest(directory: pathlib.Path) -> str:
    digest = hashlib.sha256()
    try:
        for path in _regular_files(directory):
            info = path.stat()
            digest.update(f"{path.relative_to(directory)}\0{info.st_mode}\0{info.st_uid}\0"
                          f"{info.st_gid}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    except OSError:
        return ""
    return digest.hexdigest()


def _sync_dir(directory: pathlib.Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
