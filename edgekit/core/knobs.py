"""Options objects: a stage's knobs declared once, each with its default, its help and its range.

A stage's options are a frozen dataclass whose fields are made with `knob` (quantize/, verify/,
package/ and bench/options.py; at the top of the single-file stages export.py and convert.py).
The stage function reads them; its CLI command takes each option's default, help and range from them
(cli/options.py: `option`), so none of the three is written twice. Ranges are the CLI's: the stage functions keep
their own checks of what a caller may pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def knob(default: Any, help: str | None = None, *, low: float | None = None, high: float | None = None,
         choices: tuple[str, ...] | None = None) -> Any:
    """A field of an options dataclass: DEFAULT, the HELP its command-line option shows (None: the shared
    declaration in cli/options.py gives it), the closed range [LOW, HIGH] the value must lie in (ints: the
    CLI's min/max; floats: finite and within it), and for a name, the CHOICES it must be one of (None: any)."""
    return dataclasses.field(default=default, metadata={"help": help, "range": (low, high), "choices": choices})


def described(cls, name: str) -> dataclasses.Field:
    """The field NAME of the options dataclass CLS (KeyError naming it when there is none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no knob {name!r}")


def with_knobs(cls, options, knobs: dict):
    """OPTIONS (or CLS's defaults) with the keyword KNOBS replaced: `stage(path, samples=64)` is
    `stage(path, Options(samples=64))`. An unknown name is a TypeError naming it, as a function's would be."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))} (the knobs of {cls.__name__})")
    return dataclasses.replace(options if options is not None else cls(), **knobs)


def knob_range(cls, name: str) -> tuple[float | None, float | None]:
    """The closed range [low, high] the knob NAME of CLS declares ((None, None): unbounded). The one bound of that
    range: the CLI, the stage function and the sweep read it from here."""
    return described(cls, name).metadata["range"]


def checked_knob(cls, name: str, value: Any, where: str) -> Any:
    """VALUE as the knob NAME of the options dataclass CLS takes it: converted to the field's type by pydantic (lax
    mode: "0.5" is 0.5, "false" is False), one of its choices and within its range; else one BadInput line naming
    WHERE, the knob and what it takes."""
    import math
    import typing

    from pydantic import TypeAdapter, ValidationError

    from edgekit.core.errors import BadInput

    field = described(cls, name)
    kind = typing.get_type_hints(cls)[name]
    try:
        converted = TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"]
        raise BadInput(f"{where}: {name} = {value!r}: {why[:120]}", hint=f"{name} takes {_type_text(kind)}") from None
    choices = field.metadata.get("choices")
    if choices and converted is not None and converted not in choices:
        raise BadInput(f"{where}: unknown {name} {value!r}", hint=f"use one of {', '.join(choices)}")
    low, high = field.metadata["range"]
    if isinstance(converted, (int, float)) and not isinstance(converted, bool):
        if isinstance(converted, float) and not math.isfinite(converted):
            raise BadInput(f"{where}: {name} = {value!r} is not a finite number")
        if (low is not None and converted < low) or (high is not None and converted > high):
            span = f"{low:g} to {high:g}" if low is not None and high is not None else (
                f"at least {low:g}" if low is not None else f"at most {high:g}")
            raise BadInput(f"{where}: {name} must be {span}, got {value!r}")
    return converted


def _type_text(kind) -> str:
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in (args or [kind])]
    return " or ".join(dict.fromkeys(names)) + (" (or none)" if type(None) in typing.get_args(kind) else "")
