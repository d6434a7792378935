"""Implementations chosen by name and imported only when chosen (python-can's interface registry).

Importing lazily keeps a synthetic-camera, Modbus-only station from loading OpenCV's video
backends, asyncua or pycomm3 at all.
"""

from __future__ import annotations

import importlib
from typing import Any


def resolve(registry: dict[str, str], name: str, what: str) -> Any:
    """Import and return the class registered as "module:Class" under `name`."""
    try:
        target = registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
