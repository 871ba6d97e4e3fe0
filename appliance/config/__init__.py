"""The appliance's configuration: one frozen object, loaded once, passed in explicitly.

Each subsystem declares its own section next to its code (``appliance/<subsystem>/config.py``,
built with ``appliance.config.schema``); ``appliance_config.py`` composes them into
:class:`ApplianceConfig` and loads ``appliance.toml``. The names below are imported lazily so
that a section module importing ``appliance.config.schema`` never pulls in every other
section (which would be a circular import when that section is imported first).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .appliance_config import (
        DEFAULT_CONFIG_PATH,
        EX_CONFIG,
        ApplianceConfig,
        LoadedConfig,
        builtin_defaults,
        load_config,
    )
    from .schema import ConfigError

_LAZY = {
    "DEFAULT_CONFIG_PATH": ".appliance_config",
    "EX_CONFIG": ".appliance_config",
    "ApplianceConfig": ".appliance_config",
    "LoadedConfig": ".appliance_config",
    "builtin_defaults": ".appliance_config",
    "load_config": ".appliance_config",
    "ConfigError": ".schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


__all__ = [
    "DEFAULT_CONFIG_PATH", "EX_CONFIG", "ApplianceConfig", "ConfigError", "LoadedConfig",
    "builtin_defaults", "load_config",
]
