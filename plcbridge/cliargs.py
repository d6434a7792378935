"""Argument types shared by the command lines (`plcbridge`, `plcbridge bench`, `plcbridge gate`).

Stdlib only: every `plcbridge` invocation builds the parsers that use these.
"""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def positive(kind: type[N]) -> Callable[[str], N]:
    """An argparse `type=` that parses with `kind` (int, float) and refuses zero and negatives.

    A value `kind` cannot parse raises ValueError, which argparse reports as
    "invalid int value: 'x'" (the function carries `kind`'s name for that); NaN is refused
    too, since it is not > 0.
    """
    def parse(text: str) -> N:
        value = kind(text)  # ValueError -> argparse's "invalid ... value"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse
