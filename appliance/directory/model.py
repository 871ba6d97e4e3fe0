"""The directory as frozen objects, parsed and validated from its JSON shape.

JSON shape (schema 1)::

    {
      "schema": 1, "version": 42, "site": "hq",
      "locations":  [{"id": "hq", "address": "1 Main St, Springfield, IL 62701",
                      "floor": "2", "room": "Reception"}],
      "extensions": [{"number": "101", "name": "Alice Ames", "location": "hq"}],
      "devices":    [{"id": "alice-desk", "extension": "101", "username": "101",
                      "password": "..."}],        # or "ha1_md5" / "ha1_sha256" instead
      "ring_groups": [{"number": "600", "name": "Front desk", "strategy": "simultaneous",
                       "members": ["101", "102"], "member_timeout_s": 15, "timeout_s": 45,
                       "fallback": "101"}],
      "dial_plan":  {"outside_prefix": "9", "external_patterns": ["\\\\+?[0-9]{7,15}"]},
      "emergency":  {"numbers": ["911", "112"], "notify_extensions": ["101"],
                     "callback_window_s": 3600, "default_location": "hq"},
      "inbound":    [{"trunk": "*", "target": "600", "fallback": "101"}]
    }

Every problem is a :class:`DirectoryError` naming the source and the JSON path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

SCHEMA_VERSION = 1
EXTENSION_RE = re.compile(r"^[0-9]{2,8}$")


class DirectoryError(Exception):
    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    id: str
    address: str
    floor: str = ""
    room: str = ""

    def dispatchable(self) -> str:
        """The civic address plus floor/room, as read to an emergency dispatcher."""
        extra = ", ".join(p for p in (f"floor {self.floor}" if self.floor else "",
                                      self.room) if p)
        return f"{self.address} ({extra})" if extra else self.address


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Extension:
    number: str
    name: str
    location: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    """One SIP identity a handset registers with. Exactly one secret form is present."""

    id: str
    extension: str
    username: str
    password: str | None = dataclasses.field(default=None, repr=False)
    ha1_md5: str | None = dataclasses.field(default=None, repr=False)
    ha1_sha256: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RingGroup:
    number: str
    name: str
    strategy: Literal["simultaneous", "sequential"]
    members: tuple[str, ...]
    member_timeout_s: float = 15.0
    timeout_s: float = 60.0
    fallback: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DialPlan:
    outside_prefix: str = ""
    """Digits a user dials before an outside number (e.g. "9"); stripped before the trunk."""
    external_patterns: tuple[str, ...] = (r"\+?[0-9]{3,15}",)
    """Full-match regular expressions for numbers that may go out on a trunk."""

    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.external_patterns)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EmergencySettings:
    numbers: tuple[str, ...] = ("911", "112")
    notify_extensions: tuple[str, ...] = ()
    callback_window_s: float = 3600.0
    default_location: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InboundRoute:
    trunk: str
    """A trunk name from appliance.toml, or "*" for any trunk."""
    target: str
    """An extension or ring-group number."""
    fallback: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    version: int
    site: str
    locations: tuple[Location, ...] = ()
    extensions: tuple[Extension, ...] = ()
    devices: tuple[Device, ...] = ()
    ring_groups: tuple[RingGroup, ...] = ()
    dial_plan: DialPlan = dataclasses.field(default_factory=DialPlan)
    emergency: EmergencySettings = dataclasses.field(default_factory=EmergencySettings)
    inbound: tuple[InboundRoute, ...] = ()
    _by_key: dict[str, dict[str, Any]] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._by_key.update({
            "extension": {e.number: e for e in self.extensions},
            "ring_group": {g.number: g for g in self.ring_groups},
            "username": {d.username: d for d in self.devices},
            "location": {loc.id: loc for loc in self.locations},
        })

    # -- lookups ---------------------------------------------------------------------------

    def extension(self, number: str) -> Extension | None:
        return self._by_key["extension"].get(number)

    def ring_group(self, number: str) -> RingGroup | None:
        return self._by_key["ring_group"].get(number)

    def device_for_username(self, username: str) -> Device | None:
        return self._by_key["username"].get(username)

    def location(self, location_id: str | None) -> Location | None:
        if location_id is None:
            return None
        return self._by_key["location"].get(location_id)

    def location_of_extension(self, number: str) -> Location | None:
        extension = self.extension(number)
        located = self.location(extension.location) if extension else None
        return located or self.location(self.emergency.default_location)

    def inbound_route(self, trunk: str) -> InboundRoute | None:
        for route in self.inbound:
            if route.trunk == trunk:
                return route
        for route in self.inbound:
            if route.trunk == "*":
                return route
        return None

    def is_emergency(self, number: str) -> bool:
        return number in self.emergency.numbers

    def to_json(self, *, include_secrets: bool = True) -> dict[str, Any]:
        data = _to_plain(self)
        data["schema"] = SCHEMA_VERSION
        if not include_secrets:
            for device in data["devices"]:
                for key in ("password", "ha1_md5", "ha1_sha256"):
                    if device.get(key) is not None:
                        device[key] = "<redacted>"
        return data


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.init}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Parsing


def parse_directory(data: Any, *, source: str) -> Directory:
    """Build and cross-check a Directory from its JSON shape."""
    reader = _Reader(source)
    root = reader.table(data, "")
    reader.keys(root, "", required={"version", "site"},
                optional={"schema", "locations", "extensions", "devices", "ring_groups",
                          "dial_plan", "emergency", "inbound"})
    schema = root.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise DirectoryError(source, "schema", f"is {schema!r}; this jbcd reads schema "
                             f"{SCHEMA_VERSION} (update jbcd)")
    version = reader.integer(root["version"], "version", minimum=0)
    site = reader.text(root["site"], "site")

    locations = tuple(
        Location(**reader.record(item, f"locations[{i}]", required={"id", "address"},
                                 optional={"floor", "room"}))
        for i, item in enumerate(reader.array(root.get("locations", []), "locations")))
    extensions = tuple(
        Extension(**reader.record(item, f"extensions[{i}]", required={"number", "name"},
                                  optional={"location"}))
        for i, item in enumerate(reader.array(root.get("extensions", []), "extensions")))
    devices = tuple(
        Device(**reader.record(item, f"devices[{i}]", required={"id", "extension", "username"},
                               optional={"password", "ha1_md5", "ha1_sha256"}))
        for i, item in enumerate(reader.array(root.get("devices", []), "devices")))
    ring_groups = tuple(
        _ring_group(reader, item, f"ring_groups[{i}]")
        for i, item in enumerate(reader.array(root.get("ring_groups", []), "ring_groups")))
    dial_plan = _dial_plan(reader, root.get("dial_plan", {}))
    emergency = _emergency(reader, root.get("emergency", {}))
    inbound = tuple(
        InboundRoute(**reader.record(item, f"inbound[{i}]", required={"trunk", "target"},
                                     optional={"fallback"}))
        for i, item in enumerate(reader.array(root.get("inbound", []), "inbound")))

    directory = Directory(version=version, site=site, locations=locations,
                          extensions=extensions, devices=devices, ring_groups=ring_groups,
                          dial_plan=dial_plan, emergency=emergency, inbound=inbound)
    for path, message in _cross_check(directory):
        raise DirectoryError(source, path, message)
    return directory


def _ring_group(reader: _Reader, item: Any, path: str) -> RingGroup:
    fields = reader.record(item, path, required={"number", "name", "strategy", "members"},
                           optional={"member_timeout_s", "timeout_s", "fallback"},
                           numbers={"member_timeout_s", "timeout_s"},
                           lists={"members"})
    if fields["strategy"] not in ("simultaneous", "sequential"):
        raise DirectoryError(reader.source, f"{path}.strategy",
                             "must be 'simultaneous' or 'sequential'")
    return RingGroup(**fields)


def _dial_plan(reader: _Reader, data: Any) -> DialPlan:
    fields = reader.record(data, "dial_plan", required=set(),
                           optional={"outside_prefix", "external_patterns"},
                           lists={"external_patterns"})
    for i, pattern in enumerate(fields.get("external_patterns", ())):
        try:
            re.compile(pattern)
        except re.error as error:
            raise DirectoryError(reader.source, f"dial_plan.external_patterns[{i}]",
                                 f"not a valid regular expression: {error}") from None
    return DialPlan(**fields)


def _emergency(reader: _Reader, data: Any) -> EmergencySettings:
    fields = reader.record(data, "emergency", required=set(),
                           optional={"numbers", "notify_extensions", "callback_window_s",
                                     "default_location"},
                           numbers={"callback_window_s"},
                           lists={"numbers", "notify_extensions"})
    if "numbers" in fields and not fields["numbers"]:
        raise DirectoryError(reader.source, "emergency.numbers",
                             "must list at least one emergency number")
    return EmergencySettings(**fields)


def _cross_check(directory: Directory) -> Iterator[tuple[str, str]]:
    numbers: dict[str, str] = {}
    for i, ext in enumerate(directory.extensions):
        if not EXTENSION_RE.match(ext.number):
            yield f"extensions[{i}].number", f"{ext.number!r} is not 2 to 8 digits"
        if ext.number in numbers:
            yield f"extensions[{i}].number", f"{ext.number} is also {numbers[ext.number]}"
        numbers[ext.number] = f"extensions[{i}]"
        if ext.location is not None and directory.location(ext.location) is None:
            yield f"extensions[{i}].location", f"no location with id {ext.location!r}"
    for i, group in enumerate(directory.ring_groups):
        if not EXTENSION_RE.match(group.number):
            yield f"ring_groups[{i}].number", f"{group.number!r} is not 2 to 8 digits"
        if group.number in numbers:
            yield f"ring_groups[{i}].number", f"{group.number} is also {numbers[group.number]}"
        numbers[group.number] = f"ring_groups[{i}]"
        for j, member in enumerate(group.members):
            if directory.extension(member) is None:
                yield f"ring_groups[{i}].members[{j}]", f"no extension {member}"
        if group.fallback is not None and directory.extension(group.fallback) is None:
            yield f"ring_groups[{i}].fallback", f"no extension {group.fallback}"
    usernames: set[str] = set()
    for i, device in enumerate(directory.devices):
        if directory.extension(device.extension) is None:
            yield f"devices[{i}].extension", f"no extension {device.extension}"
        if device.username in usernames:
            yield f"devices[{i}].username", f"{device.username!r} is used by two devices"
        usernames.add(device.username)
        secrets = [k for k in ("password", "ha1_md5", "ha1_sha256")
                   if getattr(device, k) is not None]
        if len(secrets) != 1:
            yield f"devices[{i}]", "needs exactly one of password, ha1_md5, ha1_sha256"
    emergency = directory.emergency
    for j, number in enumerate(emergency.notify_extensions):
        if directory.extension(number) is None:
            yield f"emergency.notify_extensions[{j}]", f"no extension {number}"
    if emergency.default_location is not None and directory.location(
            emergency.default_location) is None:
        yield "emergency.default_location", f"no location with id {emergency.default_location!r}"
    for i, route in enumerate(directory.inbound):
        for key in ("target", "fallback"):
            number = getattr(route, key)
            if number is not None and number not in numbers:
                yield f"inbound[{i}].{key}", f"no extension or ring group {number}"


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> DirectoryError:
        return DirectoryError(self.source, path, message)

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a JSON object")
        return value

    def array(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a JSON array")
        return value

    def keys(self, table: Mapping[str, Any], path: str, *, required: set[str],
             optional: set[str]) -> None:
        prefix = f"{path}." if path else ""
        for key in sorted(set(table) - required - optional):
            raise self.fail(f"{prefix}{key}", "unknown key")
        for key in sorted(required - set(table)):
            raise self.fail(f"{prefix}{key}", "is required but missing")

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "must be a non-empty string")
        return value

    def integer(self, value: Any, path: str, *, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(path, f"must be an integer >= {minimum}")
        return value

    def record(self, value: Any, path: str, *, required: set[str], optional: set[str],
               numbers: set[str] = frozenset(), lists: set[str] = frozenset()) -> dict[str, Any]:
        table = self.table(value, path)
        self.keys(table, path, required=required, optional=optional)
        fields: dict[str, Any] = {}
        for key, item in table.items():
            where = f"{path}.{key}"
            if key in numbers:
                if isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
                    raise self.fail(where, "must be a positive number")
                fields[key] = float(item)
            elif key in lists:
                items = self.array(item, where)
                fields[key] = tuple(self.text(x, f"{where}[{i}]") for i, x in enumerate(items))
            elif item is None and key in optional:
                fields[key] = None
            else:
                fields[key] = self.text(item, where)
        return fields
