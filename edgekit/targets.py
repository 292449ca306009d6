"""Quantization recipes per target CPU, and which one `auto` picks for this machine.

Why each choice (field-notes.md, ONNX Runtime's quantize_static guidance):
- x86 kernels in ONNX Runtime (MLAS) are fast for unsigned 8-bit activations x signed 8-bit
  weights (u8s8); signed activations (ORT's default) fall to slower paths: no speedup at all.
- Without VNNI, the AVX2 u8s8 kernel adds pairs of u8*s8 products in int16 and can saturate;
  7-bit weights (reduce_range) keep those sums in range.
- With VNNI (AVX512-VNNI, AVX-VNNI, AMX) products accumulate in int32: full 8-bit weights.
- ARM64 (sdot/udot) and most accelerators (TensorRT, NPUs) want symmetric signed int8.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.errors import BadInput


@dataclass(frozen=True)
class Recipe:
    """How to quantize for one target."""

    target: str
    activation_type: str  # uint8 | int8
    weight_type: str  # int8
    per_channel: bool
    reduce_range: bool
    activation_symmetric: bool
    method: str  # minmax | entropy | percentile
    reason: str
    # BatchNormalization that could not be folded into a conv (DenseNet's pre-activation BN) has
    # no int8 kernel on CPUs: rewritten as a depthwise 1x1 Conv it runs as QLinearConv instead of
    # DequantizeLinear -> float BN -> QuantizeLinear with layout transposes around it.
    batchnorm_as_depthwise: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "x86-vnni": Recipe(
        "x86-vnni", "uint8", "int8", per_channel=True, reduce_range=False, activation_symmetric=False, method="minmax",
        reason="u8 activations x s8 per-channel weights hit MLAS's fast x86 int8 kernels; VNNI accumulates in int32, so full 8-bit weights",
    ),
    "x86-avx2": Recipe(
        "x86-avx2", "uint8", "int8", per_channel=True, reduce_range=True, activation_symmetric=False, method="minmax",
        reason="u8s8 for MLAS's fast kernels; without VNNI the AVX2 kernel sums u8*s8 pairs in int16 and can saturate, so 7-bit weights (reduce_range)",
    ),
    "arm64": Recipe(
        "arm64", "int8", "int8", per_channel=True, reduce_range=False, activation_symmetric=True, method="minmax",
        reason="ARM64 dot-product kernels (sdot) favour symmetric signed int8 activations and weights",
    ),
    "generic": Recipe(
        "generic", "int8", "int8", per_channel=True, reduce_range=False, activation_symmetric=True, method="minmax",
        reason="symmetric s8s8 per-channel QDQ: the portable form TensorRT and most NPUs accept; not the fastest on x86 CPUs",
        batchnorm_as_depthwise=False,  # accelerators fuse BN themselves; keep the graph as exported
    ),
}
TARGETS = ("auto", *RECIPES)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def detect_target(machine: str | None = None, flags: set[str] | None = None) -> str:
    """The recipe for this CPU: x86 with VNNI, x86 with AVX2, arm64, else generic."""
    machine = (machine or platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64", "i686", "x86"):
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"}:
            return "x86-vnni"
        if "avx2" in flags:
            return "x86-avx2"
        return "generic"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    return "generic"


def resolve_recipe(
    target: str = "auto", method: str | None = None, per_channel: bool | None = None
) -> Recipe:
    """The target's recipe with the user's overrides applied."""
    name = target.lower()
    if name == "auto":
        name = detect_target()
    if name not in RECIPES:
        raise BadInput(f"unknown target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    recipe = RECIPES[name]
    changes = {}
    if method is not None:
        if method not in ("minmax", "entropy", "percentile"):
            raise BadInput(f"unknown calibration method {method!r}", hint="use minmax, entropy or percentile")
        changes["method"] = method
    if per_channel is not None:
        changes["per_channel"] = per_channel
    return Recipe(**{**recipe.to_dict(), **changes}) if changes else recipe
