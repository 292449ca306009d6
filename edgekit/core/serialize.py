"""Results as strict JSON: every command's `--json` and every `--report` file."""

from __future__ import annotations

import dataclasses
import json
import math
from enum import Enum
from pathlib import Path


def json_safe(value):
    """Plain JSON types: non-finite floats as strings ("inf", "nan"), paths and enums as strings,
    dataclasses through their to_dict (or asdict), numpy scalars and arrays as Python numbers and lists."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return json_safe(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v) for v in items]
    if isinstance(value, (Path, Enum)):
        return str(value.value if isinstance(value, Enum) else value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    return str(value)


def to_json(value, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN/Infinity tokens) of a result object, dict or list."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n"
