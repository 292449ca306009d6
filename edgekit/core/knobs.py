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


def knob(default: Any, help: str | None = None, *, low: float | None = None, high: float | None = None) -> Any:
    """A field of an options dataclass: DEFAULT, the HELP its command-line option shows (None: the shared
    declaration in cli/options.py gives it), and the closed range [LOW, HIGH] the value must lie in (ints: the
    CLI's min/max; floats: finite and within it)."""
    return dataclasses.field(default=default, metadata={"help": help, "range": (low, high)})


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
