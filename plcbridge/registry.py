"""Implementations chosen by name and imported only when chosen (python-can's interface registry).

Importing lazily keeps a synthetic-camera, Modbus-only station from loading OpenCV's video
backends, asyncua or pycomm3 at all. The camera sources (adapters/camera/base.py) and the PLC
protocols (plcbridge/protocols.py) are tables of "module:attribute" strings resolved here.
An unknown name is a ValueError listing the known ones; a module that fails to import raises
its own ImportError, so a typo and a broken installation never look alike.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load(target: str) -> Any:
    """Import and return what a "module:attribute" string names."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve(registry: Mapping[str, str], name: str, what: str) -> Any:
    """Import and return the attribute registered under `name`."""
    try:
        target = registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None
    return load(target)
