"""What every schema of the project shares: a strict, frozen pydantic base and the form errors
are reported in.

The station config (plcbridge/config.py), the simulator's device file (simulators/device.py),
the model manifest (inference/manifest.py), the protocols' mapping models
(plcbridge/contract/*.py) and the benchmark budget all reject unknown keys, are immutable once
validated, and report each problem as (dotted field path, reason), so a typo is named, never
ignored, and every file's errors read the same.

Numbers and booleans are taken as written, never converted: pydantic's lax mode would read
`port = "5020"` as 5020 and `enabled = 1` as true, so a quoted number in a station file
would pass unnoticed (and the same file with `"5020 "` would not). Every other type keeps
pydantic's conversions (a TOML string for a path, an array for a tuple).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

_SCALARS: dict[type, str] = {bool: "a boolean (true or false)", int: "an integer", float: "a number"}


def _scalar_of(annotation: Any) -> type | None:
    """bool, int or float when a field holds exactly that (with constraints, or optional)."""
    tp = annotation
    for _ in range(2):  # Annotated[X, ...] | None: unwrap, drop None, unwrap again
        while typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return None
            tp = args[0]
    return tp if tp in _SCALARS else None


def _fits(value: Any, want: type) -> bool:
    if want is bool or isinstance(value, bool):
        return isinstance(value, bool) and want is bool
    return isinstance(value, int) or (want is float and isinstance(value, float))


def wrong_scalar(name: str, value: Any, want: type) -> str:
    """Why `value` is not taken for the bool/int/float field `name`, and how to write it."""
    what = _SCALARS[want]
    if isinstance(value, str):
        text = value.strip().lower()
        example = text if (want is bool and text in ("true", "false")) else None
        if want is not bool:
            try:
                example = str(int(text, 10)) if want is int else f"{float(text):g}"
            except ValueError:
                example = None
        how = f": write {name} = {example}" if example is not None else ""
        return f"{value!r} is text (in quotes), not {what}; numbers and booleans are written without quotes{how}"
    if want is bool:
        return f"{value!r} is not {what}: write {name} = true or {name} = false"
    if want is int and isinstance(value, float):
        return f"{value!r} is not {what}: write it without a fractional part"
    return f"{value!r} ({type(value).__name__}) is not {what}"


class Strict(BaseModel):
    """Unknown keys are errors, numbers and booleans are never converted from another type,
    and a validated model never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_as_written(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if value is None or name is None:
            return value
        want = _scalar_of(cls.model_fields[name].annotation)
        if want is None or _fits(value, want):
            return value
        raise ValueError(wrong_scalar(name, value, want))


class FieldsError(ValueError):
    """A cross-field problem: `fields` are the paths (relative to the model that raises it)
    it is about, so that the report names them instead of the section or "(top level)"."""

    def __init__(self, fields: tuple[str, ...] | list[str], message: str) -> None:
        super().__init__(message)
        self.fields = tuple(fields)


_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")


def _models_in(annotation: Any) -> list[tuple[type[BaseModel], set[str]]]:
    """The models a field holds, each with the tags that select it in a union (a `Tag`, or the
    value of a one-value Literal field such as `source`)."""
    tp, meta = annotation, []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        meta += extra
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _models_in(arg)]
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return []
    tags = {str(t.tag) for t in meta if hasattr(t, "tag")}
    for field in tp.model_fields.values():
        inner = field.annotation
        if typing.get_origin(inner) is typing.Literal and len(typing.get_args(inner)) == 1:
            tags.add(str(typing.get_args(inner)[0]))
    return [(tp, tags)]


def _model_at(root: type[BaseModel], loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The model a raw error location (union tags included, as pydantic gives it) points into."""
    model, parts = root, list(loc)
    while parts:
        field = model.model_fields.get(parts.pop(0))
        found = _models_in(field.annotation) if field is not None else []
        if len(found) > 1 and parts:  # a union: the next part is the tag pydantic put in
            tag = parts.pop(0)
            found = [(m, tags) for m, tags in found if tag in tags]
        if len(found) != 1:
            return None
        model = found[0][0]
    return model


def unknown_key(root: type[BaseModel] | None, raw_loc: tuple[str, ...], where: tuple[str, ...]) -> str:
    """"unknown key `adress` in [plc] (did you mean `address`?)": the key, its section, and the
    closest known key of that section."""
    key = where[-1] if where else "?"
    section = f"[{'.'.join(where[:-1])}]" if len(where) > 1 else "at the top level"
    text = f"unknown key `{key}` {'in ' if len(where) > 1 else ''}{section}"
    model = _model_at(root, raw_loc[:-1]) if root is not None else None
    if model is None:
        return text
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    return f"{text} (did you mean `{close[0]}`?)" if close else f"{text}; its keys: {', '.join(model.model_fields)}"


def validation_problems(e: ValidationError, tagged: tuple[tuple[tuple[str, ...], str], ...] = (),
                        root: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """(dotted field path, reason) for each error: the form every schema error is reported in.

    `tagged`: (location prefix, tag field) of discriminated unions whose tag pydantic puts in
    the location; it is taken out (and a missing or unknown tag is reported at the tag field).
    A cross-field problem raised as FieldsError is reported at the fields it names. `root`: the
    model validated, so that an unknown key is named with the closest known one.
    """
    out: list[tuple[str, str]] = []
    for err in e.errors():
        loc = raw_loc = tuple(str(p) for p in err["loc"])
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
        elif err["type"] == "extra_forbidden":
            where, msg = ".".join(loc), unknown_key(root, raw_loc, loc)
        else:
            where = ".".join(loc) or "(top level)"
            for pre in _VALUE_ERROR_PREFIXES:
                if msg.startswith(pre):
                    msg = msg[len(pre):]
        out.append((where, msg))
    return out
