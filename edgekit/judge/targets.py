"""Quantization recipes per target CPU, and which one `auto` picks for this machine.

Why each choice (docs/field-notes.md, ONNX Runtime's quantize_static guidance):
- x86 kernels in ONNX Runtime (MLAS) are fast for unsigned 8-bit activations x signed 8-bit
  weights (u8s8); signed activations (ORT's default) fall to slower paths: no speedup at all.
- Without VNNI, the AVX2 u8s8 kernel adds pairs of u8*s8 products in int16 and can saturate;
  7-bit weights (reduce_range) keep those sums in range.
- With VNNI (AVX512-VNNI, AVX-VNNI, AMX) products accumulate in int32: full 8-bit weights.
- ARM64 (sdot/udot) and most accelerators (TensorRT, NPUs) want symmetric signed int8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekit.core.errors import BadInput
from edgekit.core.provenance import CpuInfo, this_cpu


# ORT's session option that makes the AVX2 u8s8 kernels accumulate exactly (in int32), as a VNNI
# or ARM CPU does by default; slower on AVX2 (docs/field-notes.md: 1.22x instead of 1.65x for resnet18).
EXACT_INT8_SESSION = {"session.x64quantprecision": "1"}


# Nodes kept in float between quantized neighbours (--exclude, the fp32 fallback) are quantized again by
# ORT's WeightBiasQuantization optimizer when a session starts, unless the session turns it off
# (measured on textbook_resnet18: an excluded Conv read 16.3 dB with it, 25.1 dB without).
KEEP_FLOAT_SESSION = {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")  # ONNX Runtime's calibrators edgekit offers

# A file with signed int8 activations (arm64, generic) as written: ORT's x86 optimizer turns its s8 activations
# and weights into u8 (QDQS8ToU8Transformer, Avx2WeightS8ToU8Transformer) for the u8s8 kernels, and that is where
# an AVX2 CPU without VNNI saturates it. With both off, ORT runs the file's s8s8 arithmetic exactly, as ARM and
# accelerators do. session.x64quantprecision=1 is no way out for these files: on DenseNet's generic file ORT
# 1.31 cannot even initialise a session with it ("Attempt to replace the existing tensor", on AVX2 and VNNI
# CPUs alike), and measured under emulated AVX2 the file then computes bit-identically to a VNNI CPU.
AS_WRITTEN_S8_SESSION = {"optimization.disable_specified_optimizers": "QDQS8ToU8Transformer;Avx2WeightS8ToU8Transformer"}
# the CPU kinds a file's session options are recorded for, and their merging: the device check's own
from edgekit.ondevice.cpu import ANY_CPU, X86_WITHOUT_VNNI, merge_session_config  # noqa: E402


def merge_session_configs(*configs: dict[str, str] | None) -> dict[str, str]:
    """Session config entries of several rules as one (ORT's list-valued entries joined with ';')."""
    merged: dict[str, str] = {}
    for config in configs:
        merged = merge_session_config(merged, config or {})
    return merged


def exact_session_for(recipe: dict | None) -> dict[str, str]:
    """The session config that makes an x86 CPU without VNNI compute a file of `recipe` exactly, as its
    target does: x64quantprecision for unsigned activations, the file's s8s8 as written for signed ones."""
    return dict(AS_WRITTEN_S8_SESSION if (recipe or {}).get("activation_type") == "int8" else EXACT_INT8_SESSION)


def kernels_label(config: dict[str, str] | None) -> str:
    """A few words for the kernels a session config selects ('' for ORT's defaults)."""
    config = config or {}
    if config.get("session.x64quantprecision") == "1":
        return "x64quantprecision=1"
    if "QDQS8ToU8Transformer" in config.get("optimization.disable_specified_optimizers", ""):
        return "s8s8 as written"
    return ""


def session_config_for(recipe: dict | None) -> dict[str, str]:
    """The session options an int8 file needs on every CPU (its metadata's recipe says which)."""
    return dict(((recipe or {}).get("session_options") or {}).get(ANY_CPU) or {})


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
    # ORT runs a grouped (not depthwise) QLinearConv as one GEMM per group: ResNeXt's 4-channel groups are
    # merged block-diagonally into groups of this many channels (0: off). Measured on VNNI: resnext50 int8
    # 1.85x -> 2.5x faster than fp32 (rewrites.merge_conv_groups).
    merge_conv_groups: int = 16
    # ORT's int8 AveragePool is slow; DenseNet's transitions pool before their 1x1 conv, as a depthwise conv.
    avgpool_as_depthwise: bool = True
    # Every activation of a Concat (DenseNet's dense block) quantized with one range, the union of theirs, so that
    # QLinearConcat copies instead of requantizing each input (quantize/static.concat_range_overrides).
    concat_shared_range: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def session_options(self, float_nodes: bool = False) -> dict[str, dict[str, str]]:
        """The ORT session options a file of this recipe needs, per kind of CPU (recorded in its metadata);
        `float_nodes`: some nodes were kept in float (--exclude, the fp32 fallback)."""
        options = {} if self.reduce_range else {X86_WITHOUT_VNNI: exact_session_for(self.to_dict())}
        if float_nodes:
            options[ANY_CPU] = dict(KEEP_FLOAT_SESSION)
        return options


RECIPES: dict[str, Recipe] = {
    "x86-vnni": Recipe(
        "x86-vnni", "uint8", "int8", per_channel=True, reduce_range=False, activation_symmetric=False, method="minmax",
        reason="u8 activations x s8 per-channel 8-bit weights, for x86 CPUs with VNNI only (int32 accumulation); "
        "an AVX2 CPU without VNNI saturates them unless the session sets session.x64quantprecision=1 (recorded in the file)",
    ),
    "x86-avx2": Recipe(
        "x86-avx2", "uint8", "int8", per_channel=True, reduce_range=True, activation_symmetric=False, method="minmax",
        reason="u8 activations x s8 per-channel 7-bit weights (reduce_range): MLAS's fast x86 kernels, and safe on every "
        "x86 CPU (without VNNI the AVX2 kernel sums u8*s8 pairs in int16; 7-bit weights keep them in range)",
    ),
    "arm64": Recipe(
        "arm64", "int8", "int8", per_channel=True, reduce_range=False, activation_symmetric=True, method="minmax",
        reason="ARM64 dot-product kernels (sdot) favour symmetric signed int8 activations and weights",
        merge_conv_groups=0, avgpool_as_depthwise=False,  # the x86 measurements do not carry over; unmeasured on ARM
    ),
    "generic": Recipe(
        "generic", "int8", "int8", per_channel=True, reduce_range=False, activation_symmetric=True, method="minmax",
        reason="symmetric s8s8 per-channel QDQ: the portable form TensorRT and most NPUs accept; not the fastest on x86 CPUs",
        # accelerators fuse BN and have their own grouped conv and pooling kernels: keep the graph as exported
        batchnorm_as_depthwise=False, merge_conv_groups=0, avgpool_as_depthwise=False,
    ),
}
TARGETS = ("auto", *RECIPES)


def detect_target(machine: str | None = None, flags: set[str] | None = None, cpu: CpuInfo | None = None) -> str:
    """The recipe for a CPU (default: this one): x86 with VNNI, x86 with AVX2, arm64, else generic."""
    if cpu is None:
        here = this_cpu()
        cpu = CpuInfo(machine or here.machine, here.model, frozenset(here.flags if flags is None else flags), here.faked)
    if cpu.is_x86:
        if cpu.has_vnni:
            return "x86-vnni"
        return "x86-avx2" if "avx2" in cpu.flags else "generic"
    return "arm64" if cpu.is_arm64 else "generic"


def auto_target(cpu: CpuInfo | None = None) -> str:
    """The recipe `auto` picks: one whose file is accurate on every CPU of this architecture.

    On x86 that is 7-bit weights (x86-avx2) even on a VNNI CPU: measured on a VNNI CPU, the 7-bit file
    ran as fast as the 8-bit one and lost no top-1 on the digits references (README, "Which recipe"),
    while an 8-bit file loses 6-8 top-1 points on the AVX2-only CPUs it may be deployed to.
    """
    kind = detect_target(cpu=cpu or this_cpu())
    return "x86-avx2" if kind == "x86-vnni" else kind


def saturates_on(recipe: dict, cpu: CpuInfo) -> bool:
    """Whether ORT's default int8 kernels on `cpu` can saturate on a file made with `recipe`:
    full 8-bit weights (no reduce_range) on an x86 CPU without VNNI."""
    return cpu.int8_saturates and not bool(recipe.get("reduce_range", False))


@dataclass(frozen=True)
class Int8Judgement:
    """How an int8 file is run for its accuracy gates on this CPU, and why."""

    gate_session: dict[str, str] | None  # session config of the gated run (None: ORT's defaults)
    also_default: bool  # also run ORT's default kernels, to measure this CPU's saturation
    for_this_cpu: bool  # the file's target is this CPU's
    note: str | None

    @property
    def kernels(self) -> str:
        """The gated run's kernels in a few words ('' for ORT's defaults)."""
        return kernels_label(self.gate_session)

    def to_dict(self) -> dict:
        return asdict(self)


def judge_int8(recipe: dict | None, cpu: CpuInfo, meant_for: str | None = None) -> Int8Judgement:
    """Which kernels an int8 file's gates run on here.

    `meant_for`: the target the user says the file is for (None: this CPU). On a CPU whose default
    kernels can saturate the file, a file meant for another target is judged the way that target
    computes (exact int32 accumulation) and this CPU's default kernels are measured beside it; a file
    meant for this CPU is judged by what this CPU computes by default, exact accumulation beside it.
    """
    recipe = recipe or {}
    here = detect_target(cpu=cpu)
    for_here = meant_for is None or meant_for == here
    if not saturates_on(recipe, cpu):
        return Int8Judgement(None, False, for_here, None)
    if for_here:
        return Int8Judgement(None, True, True, None)
    exact = exact_session_for(recipe)
    how = ("session.x64quantprecision=1 (exact int32 accumulation" if kernels_label(exact) == "x64quantprecision=1"
           else "its signed int8 arithmetic as written (x86's S8->U8 rewrites off, exact")
    note = (
        f"this CPU ({cpu.kind()}) can saturate int8 files with 8-bit weights in ORT's default kernels; the file "
        f"is meant for {meant_for}, so its gates run with {how}, what {meant_for} computes), and this CPU's "
        "default kernels are measured beside it"
    )
    return Int8Judgement(exact, True, False, note)


def resolve_recipe(
    target: str = "auto", method: str | None = None, per_channel: bool | None = None, rewrites: bool = True
) -> Recipe:
    """The target's recipe with the user's overrides applied; `rewrites=False` keeps the graph as exported
    (no BatchNorm/AveragePool-as-depthwise, no merged conv groups)."""
    name = target.lower()
    if name == "auto":
        name = auto_target()
    if name not in RECIPES:
        raise BadInput(f"unknown target {target!r}", hint=f"use one of {', '.join(TARGETS)}")
    recipe = RECIPES[name]
    changes = {}
    if method is not None:
        if method not in CALIBRATION_METHODS:
            raise BadInput(f"unknown calibration method {method!r}", hint="use minmax, entropy or percentile")
        changes["method"] = method
    if per_channel is not None:
        changes["per_channel"] = per_channel
    if not rewrites:
        changes.update(batchnorm_as_depthwise=False, merge_conv_groups=0, avgpool_as_depthwise=False,
                       concat_shared_range=False)
    return Recipe(**{**recipe.to_dict(), **changes}) if changes else recipe
