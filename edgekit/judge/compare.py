"""Metrics and tolerances for comparing a candidate's outputs with a reference (pure numpy, no I/O).

As in Polygraphy's comparator: per-output metrics, a NaN or Inf is a failure, shapes that
differ are refused rather than broadcast. Unlike it, gates depend on the file's precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.ondevice import metrics as _metrics
from edgekit.core.errors import BadInput, ShapeMismatch


@dataclass(frozen=True)
class Tolerance:
    """The gates one comparison must pass; None disables a gate."""

    atol: float | None = 1e-4
    rtol: float | None = 1e-3
    same_top1: bool = True  # every top-1 identical, except exact ties within atol+rtol
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# fp32: ONNX Runtime vs PyTorch is 1e-6..2e-6 max abs on logits of magnitude ~3 (docs/field-notes.md);
# 1e-4 / 1e-3 leaves room for other kernels and deeper nets while still catching real bugs.
# fp16 / int8: elementwise closeness is not the question; agreement of the decision and the
# signal-to-noise ratio of the logits are. Thresholds justified in the README.
DEFAULT_TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, same_top1=True),
    # fp16 (measured: 39.9-73.8 dB on five CNNs; one near-tie flip in 12 photos on textbook_resnext at 47.7 dB)
    "fp16": Tolerance(atol=None, rtol=None, same_top1=False, min_top1_agreement=0.90, min_sqnr_db=30.0),
    # int8 (measured: 15.9-38.3 dB, 78-100 % agreement; broken int8 saturates to < 5 dB): see the README
    "int8": Tolerance(atol=None, rtol=None, same_top1=False, min_top1_agreement=0.50, min_sqnr_db=10.0),
}


def trained_defaults() -> dict[str, Tolerance]:
    """Gates for files whose weights were trained (a weights file or pretrained: the metadata says).

    int8, from the digits references (trained on real labelled data): correct files agree with fp32
    on 100 % of 43 held-out top-1 decisions at 17.6-37.5 dB, while files that lose 6-8 top-1 points to
    kernel saturation agree on at most 93.7 % (docs/field-notes.md: 92.95 % top-1 against fp32's 99.24 %).
    SQNR alone cannot separate them (a correct resnext50 reads 17.6 dB, a saturated resnet18 17.2 dB),
    so the SQNR gate only catches broken files (12 dB) and agreement carries the decision (95 %);
    saturation itself is measured directly where it can happen (default vs exact kernels on an x86
    CPU without VNNI).
    """
    return {**DEFAULT_TOLERANCES, "int8": Tolerance(atol=None, rtol=None, same_top1=False,
                                                    min_top1_agreement=0.95, min_sqnr_db=12.0)}


@dataclass
class OutputMetrics:
    """How a candidate output differs from the reference."""

    name: str
    shape: tuple[int, ...]
    samples: int
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    sqnr_db: float
    top1_agreement: float
    top5_agreement: float
    top1_mismatches: int  # disagreements where the reference's top-1 was not a tie
    allclose_violations: int
    nan: int
    inf: int
    atol: float | None = None
    rtol: float | None = None
    failures: list[str] = field(default_factory=list)
    waived: list[str] = field(default_factory=list)  # failed gates explained away (fp32 noise floor), kept as evidence

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["passed"] = self.passed
        return data


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, name: str, tol: Tolerance) -> OutputMetrics:
    """All metrics for one output, and which gates of `tol` it fails (the math: edgekit.ondevice.metrics,
    the same file every bundle's check.py runs on the device)."""
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        raise ShapeMismatch(f"output {name!r}: shape {cand.shape} differs from the reference's {ref.shape}")
    metrics = OutputMetrics(name=name, **_metrics.output_metrics(ref, cand, tol.atol, tol.rtol), atol=tol.atol, rtol=tol.rtol)
    metrics.failures = gate_failures(metrics, tol)
    return metrics


def mismatched_output(name: str, reference_shape: tuple, candidate_shape: tuple) -> OutputMetrics:
    """A failed row for an output whose shape differs from the reference's (never broadcast)."""
    nan = float("nan")
    return OutputMetrics(
        name=name, shape=tuple(int(d) for d in candidate_shape), samples=0, max_abs=nan, max_rel=nan, mean_abs=nan,
        cosine=nan, sqnr_db=nan, top1_agreement=0.0, top5_agreement=0.0, top1_mismatches=0, allclose_violations=0,
        nan=0, inf=0, failures=[f"shape {tuple(candidate_shape)} differs from the reference's {tuple(reference_shape)}"],
    )


def failed_gates(m: OutputMetrics, tol: Tolerance) -> list[tuple[str, str]]:
    """(a few words for a table cell, the full sentence) for each gate of `tol` that `m` fails."""
    return _metrics.failed_gates(m, tol.to_dict())


def gate_failures(m: OutputMetrics, tol: Tolerance) -> list[str]:
    """The full sentence for each gate `m` fails (empty when it passes)."""
    return [sentence for _short, sentence in failed_gates(m, tol)]


def percentile(samples: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy computes it."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


# --- gates: one resolver for export, quantize and verify ---------------------------------------

NAN_ONLY = Tolerance(atol=None, rtol=None, same_top1=False)  # a NaN or Inf fails whatever else is allowed
# The export gate: max abs diff 1e-4 on logits, identical top-1.
EXPORT_TOLERANCE = Tolerance(atol=1e-4, rtol=0.0, same_top1=True)
# Simplification may reorder float arithmetic (BatchNorm folding); anything past this is not noise.
SIMPLIFY_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4, same_top1=True)
# A graph rewrite that must compute the same function in float (BatchNormalization as depthwise Conv).
REWRITE_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-4)


def check_gate_options(
    atol: float | None = None,
    rtol: float | None = None,
    min_top1_agreement: float | None = None,
    min_sqnr: float | None = None,
) -> None:
    """BadInput for a gate option that is not finite or out of range (before any work starts)."""
    import math

    for name, value in (("--atol", atol), ("--rtol", rtol), ("--min-sqnr", min_sqnr),
                        ("--min-top1-agreement", min_top1_agreement)):
        if value is not None and not math.isfinite(value):
            raise BadInput(f"{name} {value} is not a finite number")
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and value < 0:
            raise BadInput(f"{name} must be >= 0, got {value:g}")
    if min_top1_agreement is not None and not 0.0 <= min_top1_agreement <= 1.0:
        raise BadInput(
            f"--min-top1-agreement {min_top1_agreement:g} is not a fraction", hint="use 0..1, e.g. 0.95 for 95 %"
        )
    if min_sqnr is not None and min_sqnr < 0:
        raise BadInput(f"--min-sqnr must be >= 0 dB, got {min_sqnr:g}", hint="a negative gate would turn the check off")


TRAINED_WEIGHTS = ("file", "pretrained")  # the metadata's weights.kind of a model whose weights were trained


def weights_are_trained(weights: dict | None) -> bool:
    """The stricter gates apply: the weights came from training (a weights file or pretrained), or they are unknown
    (None: a foreign or imported file, or one derived from it) and so not seeded-random. Only weights the metadata
    records as seeded-random (kind "random") get the loose random-weight gates."""
    if weights is None:
        return True
    return isinstance(weights, dict) and weights.get("kind") in TRAINED_WEIGHTS


def weights_of_file(meta: dict | None) -> tuple[bool, str]:
    """Whether an ONNX file's int8/fp16 gates are the trained-weight ones, and why, from its raw edgekit metadata: the
    one decision quantize, verify, package and debug share. Unknown weights (a file made elsewhere, imported, or
    derived from one) count as trained, unless the user declared them untrained at import."""
    if not isinstance(meta, dict):
        return True, "weights unknown: a file made elsewhere, no edgekit metadata"
    imported = meta.get("imported")
    if isinstance(imported, dict):
        if imported.get("weights") == "untrained":
            return False, "declared untrained at import (edgekit import --untrained)"
        return True, "weights unknown: an imported file"
    parent = meta.get("parent")
    if isinstance(parent, dict) and not parent.get("metadata", True):
        return True, "weights unknown: derived from a file made elsewhere"
    weights = meta.get("weights")
    kind = weights.get("kind") if isinstance(weights, dict) else None
    why = {"random": "seeded random weights", "file": "trained weights (a weights file)",
           "pretrained": "trained weights (pretrained)"}.get(kind, "weights unknown")
    return weights_are_trained(weights), why


def untrained(meta: dict | None) -> bool:
    """The file's weights are not trained: seeded random (an edgekit export) or declared so at import. Its int8
    figures then say it computes what its parent does, never how accurate it is."""
    if not isinstance(meta, dict):
        return False
    imported = meta.get("imported")
    return (isinstance(imported, dict) and imported.get("weights") == "untrained") or (
        isinstance(meta.get("weights"), dict) and meta["weights"].get("kind") == "random")


DENSE_NOTE = "dense output: gated on SQNR (fp16, int8) or elementwise max abs (fp32), cosine shown; top-1 never gated"


def gates_for(precision: str, trained: bool, atol: float | None = None, rtol: float | None = None,
              min_top1_agreement: float | None = None, min_sqnr: float | None = None, *, task: str = "classify",
              why: str | None = None) -> tuple[Tolerance, str]:
    """The gates a file of `precision` is held to, and a line saying where they come from and why: the one place
    where trained (or unknown) weights mean stricter int8 gates (trained_defaults), and where a dense output (task
    "dense": detection or segmentation maps) drops every top-1 gate, with the user's overrides on top. `why`: the
    reason the weights count as trained or not, said in the line."""
    defaults = trained_defaults() if trained else dict(DEFAULT_TOLERANCES)
    if task == "dense":
        if min_top1_agreement is not None:
            raise BadInput("--min-top1-agreement does not apply to a dense output (no class decision to agree on)",
                           hint="gate it with --min-sqnr, --atol/--rtol")
        import dataclasses

        defaults = {k: dataclasses.replace(t, same_top1=False, min_top1_agreement=None) for k, t in defaults.items()}
    tolerance, source = resolve_tolerance(precision, atol, rtol, min_top1_agreement, min_sqnr, defaults=defaults)
    if trained:
        source = source.replace("defaults", "defaults for trained weights", 1)
    if why:
        source += f" ({why})"
    if task == "dense":
        source += f"; {DENSE_NOTE}"
    return tolerance, source


def resolve_tolerance(
    precision: str,
    atol: float | None = None,
    rtol: float | None = None,
    min_top1_agreement: float | None = None,
    min_sqnr: float | None = None,
    defaults: dict[str, Tolerance] | None = None,
) -> tuple[Tolerance, str]:
    """The precision's default gates with the user's overrides, and a line saying which is which."""
    import dataclasses

    defaults = defaults or DEFAULT_TOLERANCES
    if precision not in defaults:
        raise BadInput(
            f"unknown precision {precision!r} in the file's metadata", hint=f"one of {', '.join(defaults)}"
        )
    check_gate_options(atol, rtol, min_top1_agreement, min_sqnr)
    tol = defaults[precision]
    changes: dict = {}
    if atol is not None or rtol is not None:
        changes["atol"] = atol if atol is not None else (tol.atol if tol.atol is not None else 0.0)
        changes["rtol"] = rtol if rtol is not None else (tol.rtol if tol.rtol is not None else 0.0)
    if min_top1_agreement is not None:
        changes["min_top1_agreement"] = min_top1_agreement
    if min_sqnr is not None:
        changes["min_sqnr_db"] = min_sqnr
    source = f"{precision} defaults"
    if changes:
        source += ", overridden: " + ", ".join(f"{k}={v:g}" for k, v in changes.items())
    return dataclasses.replace(tol, **changes), source


# --- the fp32 noise floor ----------------------------------------------------------------------


def only_elementwise_failure(metrics: OutputMetrics) -> bool:
    """True when the only failed gate is elementwise closeness (no NaN/Inf, no top-1 flip)."""
    return bool(metrics.allclose_violations) and not (metrics.nan or metrics.inf or metrics.top1_mismatches)


@dataclass(frozen=True)
class NoiseFloor:
    """How far PyTorch's own fp32 result and the candidate's are from a float64 PyTorch run.

    Deep random networks amplify rounding (a random ResNet-152 turns 1e-7 into 1e-3 on logits), so
    a fixed atol cannot tell noise from error. The float64 run is the exact answer; the candidate
    passes when it is no further from it than `factor` times PyTorch's own fp32 result.
    """

    torch_fp32_error: float
    onnx_error: float
    factor: float = 2.0
    floor: float = 1e-4

    @classmethod
    def measure(cls, exact: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> "NoiseFloor":
        return cls(
            torch_fp32_error=float(np.abs(reference.astype(np.float64) - exact).max()),
            onnx_error=float(np.abs(candidate.astype(np.float64) - exact).max()),
        )

    @property
    def explains_difference(self) -> bool:
        return self.onnx_error <= max(self.factor * self.torch_fp32_error, self.floor)

    def describe(self) -> str:
        return (
            f"fp32 noise floor: PyTorch fp32 is {self.torch_fp32_error:.2g} max abs from a float64 run, "
            f"ONNX Runtime {self.onnx_error:.2g}; the ONNX file is "
            + ("as accurate as PyTorch fp32 itself" if self.explains_difference else "less accurate than that")
        )


def apply_noise_floor(
    metrics: OutputMetrics, exact: np.ndarray, reference: np.ndarray, candidate: np.ndarray
) -> NoiseFloor | None:
    """When only the elementwise gate failed, measure the noise floor; if it explains the difference,
    the elementwise failure is waived (moved to `metrics.waived`, kept as evidence). None when not applicable."""
    if not only_elementwise_failure(metrics) or len(metrics.failures) != 1:
        return None
    floor = NoiseFloor.measure(exact, reference, candidate)
    if floor.explains_difference:
        metrics.waived = metrics.failures + [floor.describe()]
        metrics.failures = []
    return floor
