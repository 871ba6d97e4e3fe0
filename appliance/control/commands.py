"""The commands the control socket offers, who may run them, and how handlers report errors.

Subsystems register their commands when they are built::

    runtime.commands.register("wan.status", self._wan_status, role=Role.TECHNICIAN,
                              summary="WAN state, cause and per-target figures")

A handler receives a :class:`CommandContext` and returns a JSON-able result; a streaming
handler (``streaming=True``) is an async generator whose items are sent as they come.
Handlers raise :class:`CommandError` for anything the client did wrong or that cannot be done;
the message is shown to the technician as it is, so it says what to do next.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from .errors import ControlError


class Role(enum.IntEnum):
    NONE = 0
    TECHNICIAN = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        return {Role.NONE: "no access", Role.TECHNICIAN: "technician", Role.ADMIN: "admin"}[self]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """Who is on the other end of a control connection, from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int
    user: str
    role: Role

    def describe(self) -> str:
        return f"{self.user} (uid {self.uid}, {self.role.label})"


class CommandError(ControlError):
    """A request that cannot be carried out. ``code`` is stable for scripts; ``message`` human."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CommandContext:
    peer: Peer
    args: Mapping[str, Any]

    def arg(self, name: str, kind: type | tuple[type, ...], default: Any = ..., *,
            choices: tuple[Any, ...] | None = None) -> Any:
        """One argument, type-checked; a missing required one or a wrong type is a bad_request."""
        if name not in self.args:
            if default is ...:
                raise CommandError("bad_request", f"missing argument {name!r}")
            return default
        value = self.args[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise CommandError("bad_request", f"argument {name!r} must be {_kind_names(kinds)}")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise CommandError("bad_request", f"argument {name!r} must be {_kind_names(kinds)}")
        if choices is not None and value not in choices:
            raise CommandError("bad_request", f"argument {name!r} must be one of {list(choices)}")
        return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


Handler = Callable[[CommandContext], Awaitable[Any] | AsyncIterator[Any]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    name: str
    handler: Handler
    role: Role
    summary: str
    streaming: bool = False

    @property
    def changes_behaviour(self) -> bool:
        """Admin commands change behaviour; every run of one is journalled with who ran it."""
        return self.role is Role.ADMIN


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, *, role: Role, summary: str,
                 streaming: bool = False) -> None:
        if name in self._commands:
            raise ValueError(f"control command {name!r} registered twice")
        if role is Role.NONE:
            raise ValueError("a command must need at least the technician role")
        self._commands[name] = Command(name=name, handler=handler, role=role, summary=summary,
                                       streaming=streaming)

    def unregister(self, name: str) -> None:
        self._commands.pop(name, None)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def all(self) -> list[Command]:
        return sorted(self._commands.values(), key=lambda c: c.name)
