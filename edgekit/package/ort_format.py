"""A bundle's ORT format copy of the model: the .ort and the required_operators.config a minimal ORT build
needs, or the reason it is left out (session options an .ort cannot carry)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit.package.ort_tools import convert_to_ort, ort_left_out_because, portable_ops_config
from edgekit.judge.targets import ANY_CPU

OPS_CONFIG = "required_operators.config"


@dataclass
class OrtFormat:
    """What the ORT format step wrote: the .ort's name (None when left out), why it was left out, and
    whether it was converted for ARM (session.qdqisint8allowed=1)."""

    name: str | None
    left_out: str | None
    arm: bool


def write_ort_format(sources: list[Path], staged: Path, work: Path, recipe: dict | None,
                     session_options: dict) -> OrtFormat:
    """Convert the model files (`sources`, the .onnx first) to the ORT format in `work`, and copy the .ort and
    its operators config into the staged bundle folder; nothing is written when the .ort is left out."""
    arm = bool(recipe and recipe.get("target") == "arm64")
    left_out = ort_left_out_because(session_options)
    if left_out:
        return OrtFormat(None, left_out, arm)
    ort_tmp, config_tmp = convert_to_ort(sources, work, arm, session_options.get(ANY_CPU))
    onnx_name = sources[0].name
    ort_name = onnx_name[: -len(".onnx")] + ".ort"
    shutil.copyfile(ort_tmp, staged / ort_name)
    (staged / OPS_CONFIG).write_text(portable_ops_config(config_tmp, ort_name))
    return OrtFormat(ort_name, None, arm)
