"""serialize.py: strict JSON of any result."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from edgekit.core.serialize import to_json


class Color(str, Enum):
    red = "red"


@dataclass
class Row:
    value: float
    where: Path


def test_non_finite_paths_enums_dataclasses_numpy():
    data = {"inf": float("inf"), "nan": float("nan"), "row": Row(float("-inf"), Path("a/b")), "enum": Color.red,
            "array": np.arange(3), "scalar": np.float32(1.5), "set": {2, 1}}
    parsed = json.loads(to_json(data))
    assert parsed == {"inf": "inf", "nan": "nan", "row": {"value": "-inf", "where": "a/b"}, "enum": "red",
                      "array": [0, 1, 2], "scalar": 1.5, "set": [1, 2]}
