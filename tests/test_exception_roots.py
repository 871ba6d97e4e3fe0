"""One exception root per package: every exception a subsystem package (appliance/<name>/) or
the drivers raise derives from that package's one root, so a caller catches one class, never
a list (SipError, WanError, GatewayError, SyncError, DriverError, ...)."""

from __future__ import annotations

import collections
import importlib
import inspect
import pkgutil

import appliance
import drivers

PROJECT = ("appliance", "drivers")


def package_of(module: str) -> str | None:
    """appliance.sip.core -> appliance.sip; drivers.at.core -> drivers; the modules directly
    in appliance/ (lifecycle, boundedjson, ...) are each on their own: None."""
    parts = module.split(".")
    if parts[0] == "drivers":
        return "drivers"
    return ".".join(parts[:2]) if len(parts) > 2 else None


def roots_by_package() -> dict[str, set[str]]:
    roots: dict[str, set[str]] = collections.defaultdict(set)
    for top in (appliance, drivers):
        for info in pkgutil.walk_packages(top.__path__, top.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            package = package_of(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                    continue
                own_bases = [b for b in cls.__mro__[1:]
                             if b.__module__.split(".")[0] in PROJECT]
                if package is not None and not own_bases:
                    roots[package].add(f"{cls.__module__}.{cls.__qualname__}")
    return roots


def test_every_package_has_at_most_one_exception_root():
    several = {package: sorted(found) for package, found in roots_by_package().items()
               if len(found) > 1}
    assert several == {}


def test_the_walk_sees_the_known_roots():
    roots = roots_by_package()
    assert roots["appliance.sip"] == {"appliance.sip.errors.SipError"}
    assert roots["appliance.gateway"] == {"appliance.gateway.errors.GatewayError"}
    assert roots["drivers"] == {"drivers.errors.DriverError"}
    assert "appliance.drill" in roots  # packages without __init__.py would be missed
