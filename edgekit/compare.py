"""Metrics and tolerances for comparing a candidate's outputs with a reference (pure numpy, no I/O).

As in Polygraphy's comparator: per-output metrics, a NaN or Inf is a failure, shapes that
differ are refused rather than broadcast. Unlike it, gates depend on the file's precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.errors import CheckFailed


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


# fp32: ONNX Runtime vs PyTorch is 1e-6..2e-6 max abs on logits of magnitude ~3 (field-notes);
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

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["passed"] = self.passed
        return data


def _safe(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, name: str, tol: Tolerance) -> OutputMetrics:
    """All metrics for one output, and which gates of `tol` it fails."""
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        raise CheckFailed(f"output {name!r}: shape {cand.shape} differs from the reference's {ref.shape}")
    ref64 = ref.astype(np.float64)
    cand64 = cand.astype(np.float64)
    nan = int(np.isnan(cand64).sum())
    inf = int(np.isinf(cand64).sum())
    finite = np.isfinite(cand64) & np.isfinite(ref64)
    diff = np.where(finite, np.abs(cand64 - ref64), np.inf)
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff[finite].mean()) if finite.any() else float("nan")
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    max_rel = float(rel.max()) if rel.size else 0.0
    r = ref64[finite]
    c = cand64[finite]
    denom = np.linalg.norm(r) * np.linalg.norm(c)
    cosine = float(np.dot(r, c) / denom) if denom > 0 else (1.0 if np.array_equal(r, c) else 0.0)
    noise = float(np.sum((r - c) ** 2))
    signal = float(np.sum(r**2))
    sqnr = float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal > 0 else float("-inf"))

    flat_ref = ref64.reshape(ref64.shape[0], -1) if ref64.ndim > 1 else ref64.reshape(1, -1)
    flat_cand = cand64.reshape(flat_ref.shape)
    top1_ref = np.argmax(np.nan_to_num(flat_ref, nan=-np.inf), axis=1)
    top1_cand = np.argmax(np.nan_to_num(flat_cand, nan=-np.inf), axis=1)
    agree = top1_ref == top1_cand
    k = min(5, flat_ref.shape[1])
    top5_ref = np.argsort(-flat_ref, axis=1)[:, :k]
    top5_cand = np.argsort(-flat_cand, axis=1)[:, :k]
    top5 = np.mean([set(a) == set(b) for a, b in zip(top5_ref, top5_cand)])
    # A flip between two reference logits closer than the tolerance is a tie, not an error.
    tie_band = (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(flat_ref.max(axis=1))
    ref_at_cand = flat_ref[np.arange(len(top1_cand)), top1_cand]
    tie = (flat_ref.max(axis=1) - ref_at_cand) <= tie_band
    mismatches = int(np.sum(~agree & ~tie))

    violations = 0
    if tol.atol is not None or tol.rtol is not None:
        bound = (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(ref64)
        violations = int(np.sum(~(diff <= bound)))

    metrics = OutputMetrics(
        name=name,
        shape=tuple(int(d) for d in cand.shape),
        samples=int(flat_ref.shape[0]),
        max_abs=_safe(max_abs) if finite.all() else float("inf"),
        max_rel=_safe(max_rel) if finite.all() else float("inf"),
        mean_abs=_safe(mean_abs),
        cosine=_safe(cosine),
        sqnr_db=float(sqnr),
        top1_agreement=float(agree.mean()),
        top5_agreement=float(top5),
        top1_mismatches=mismatches,
        allclose_violations=violations,
        nan=nan,
        inf=inf,
        atol=tol.atol,
        rtol=tol.rtol,
    )
    metrics.failures = gate_failures(metrics, tol)
    return metrics


def failed_gates(m: OutputMetrics, tol: Tolerance) -> list[tuple[str, str]]:
    """(a few words for a table cell, the full sentence) for each gate of `tol` that `m` fails."""
    failed = []
    if m.nan or m.inf:
        failed.append(("NaN/Inf", f"{m.nan} NaN and {m.inf} Inf values"))
    if (tol.atol is not None or tol.rtol is not None) and m.allclose_violations:
        failed.append((
            f"atol/rtol ({m.allclose_violations} el.)",
            f"max abs diff {m.max_abs:.3g} > atol {tol.atol or 0:g} + rtol {tol.rtol or 0:g}*|ref| "
            f"({m.allclose_violations} elements)",
        ))
    if tol.same_top1 and m.top1_mismatches:
        failed.append((
            f"top-1 ({m.top1_mismatches}/{m.samples} differ)",
            f"top-1 differs on {m.top1_mismatches} of {m.samples} samples",
        ))
    if tol.min_top1_agreement is not None and m.top1_agreement < tol.min_top1_agreement:
        failed.append((
            f"top-1 agreement < {tol.min_top1_agreement:.0%}",
            f"top-1 agreement {m.top1_agreement:.1%} < {tol.min_top1_agreement:.1%}",
        ))
    if tol.min_sqnr_db is not None and not (m.sqnr_db >= tol.min_sqnr_db):
        failed.append((f"SQNR < {tol.min_sqnr_db:g} dB", f"SQNR {m.sqnr_db:.1f} dB < {tol.min_sqnr_db:g} dB"))
    return failed


def gate_failures(m: OutputMetrics, tol: Tolerance) -> list[str]:
    """The full sentence for each gate `m` fails (empty when it passes)."""
    return [sentence for _short, sentence in failed_gates(m, tol)]


def percentile(samples: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy computes it."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))
