"""What every schema of the project shares: a strict, frozen pydantic base and the form errors
are reported in.

The station config (plcbridge/config.py), the simulator's device file (simulators/device.py),
the model manifest (inference/manifest.py), the protocols' mapping models
(plcbridge/contract/*.py) and the benchmark budget all reject unknown keys, are immutable once
validated, and report each problem as (dotted field path, reason), so a typo is named, never
ignored, and every file's errors read the same.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys are errors and a validated model never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldsError(ValueError):
    """A cross-field problem: `fields` are the paths (relative to the model that raises it)
    it is about, so that the report names them instead of the section or "(top level)"."""

    def __init__(self, fields: tuple[str, ...] | list[str], message: str) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_problems(e: ValidationError,
                        tagged: tuple[tuple[tuple[str, ...], str], ...] = ()) -> list[tuple[str, str]]:
    """(dotted field path, reason) for each error: the form every schema error is reported in.

    `tagged`: (location prefix, tag field) of discriminated unions whose tag pydantic puts in
    the location; it is taken out (and a missing or unknown tag is reported at the tag field).
    A cross-field problem raised as FieldsError is reported at the fields it names.
    """
    out: list[tuple[str, str]] = []
    for err in e.errors():
        loc = tuple(str(p) for p in err["loc"])
        msg = err["msg"]
        for prefix, tag_field in tagged:
            n = len(prefix)
            if loc[:n] == prefix:
                if err["type"] in ("union_tag_invalid", "union_tag_not_found") and len(loc) == n:
                    loc = (*prefix, tag_field)
                    if err["type"] == "union_tag_invalid":
                        ctx = err.get("ctx") or {}
                        msg = f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
                elif len(loc) > n:
                    loc = (*prefix, *loc[n + 1:])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldsError):
            base = ".".join(loc)
            where = ", ".join(f"{base}.{f}" if base else f for f in cause.fields)
            msg = str(cause)
        else:
            where = ".".join(loc) or "(top level)"
            for pre in _VALUE_ERROR_PREFIXES:
                if msg.startswith(pre):
                    msg = msg[len(pre):]
        out.append((where, msg))
    return out
