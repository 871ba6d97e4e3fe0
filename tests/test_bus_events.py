"""Every event on the bus has someone listening, and nobody listens for an event nobody
publishes (orphan events were how stale designs hid: TrunkCallEnded, TrunkHealthChanged)."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "appliance").rglob("*.py"))


def is_the_bus(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "bus") or (
        isinstance(node, ast.Name) and node.id == "bus")


def bus_calls(method: str) -> dict[str, list[str]]:
    """Event class name -> where ``bus.<method>(EventClass...)`` is called."""
    found: dict[str, list[str]] = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == method and node.args
                    and is_the_bus(node.func.value)):
                continue
            arg = node.args[0]
            name = arg.func if isinstance(arg, ast.Call) else arg
            if isinstance(name, ast.Name):
                found.setdefault(name.id, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def event_classes() -> set[str]:
    """The dataclasses in the packages' events.py modules."""
    names = set()
    for path in (ROOT / "appliance").rglob("events.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return names


def test_every_published_event_has_a_subscriber_and_the_reverse():
    published, subscribed = bus_calls("publish"), bus_calls("subscribe")
    assert {name: where for name, where in published.items() if name not in subscribed} == {}
    assert {name: where for name, where in subscribed.items() if name not in published} == {}


def test_every_event_class_is_published():
    assert event_classes() - set(bus_calls("publish")) == set()
    assert event_classes() >= {"WanStateChanged", "DirectoryUpdated", "EmergencyCallStarted"}
