"""The metric core shared by `edgekit verify` (through edgekit.judge.compare) and a bundle's check.py.

Pure numpy, no edgekit imports: `edgekit package` copies this file beside check.py in every
bundle, so the device computes exactly what edgekit computes, from the same source.

`output_metrics` measures how a candidate output differs from the reference; `failed_gates`
says which of a precision's gates those numbers fail (a NaN or Inf always fails).
Gates are a plain dict: atol, rtol, same_top1, min_top1_agreement, min_sqnr_db (None: off).
Also here, because both sides need it and must agree: a file's sha256 (edgekit.core.files imports it).
"""

from __future__ import annotations

import numpy as np

GATE_KEYS = ("atol", "rtol", "same_top1", "min_top1_agreement", "min_sqnr_db")
# what failed_gates reads from a metrics dict (or an object with these attributes)
GATE_FIELDS = ("nan", "inf", "allclose_violations", "max_abs", "top1_mismatches", "samples", "top1_agreement", "sqnr_db")


def sha256_file(path) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safe(value: float) -> float:
    return float(value) if np.isfinite(value) else float("nan")


def output_metrics(reference, candidate, atol: float | None = None, rtol: float | None = None) -> dict:
    """max/mean abs, max rel, cosine, SQNR (dB), top-1/top-5 agreement, top-1 flips that are not ties,
    elementwise violations of atol + rtol*|ref|, NaN and Inf counts. Shapes must be equal (ValueError)."""
    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"shape {cand.shape} differs from the reference's {ref.shape}")
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
    tie_band = (atol or 0.0) + (rtol or 0.0) * np.abs(flat_ref.max(axis=1))
    ref_at_cand = flat_ref[np.arange(len(top1_cand)), top1_cand]
    tie = (flat_ref.max(axis=1) - ref_at_cand) <= tie_band
    mismatches = int(np.sum(~agree & ~tie))

    violations = 0
    if atol is not None or rtol is not None:
        bound = (atol or 0.0) + (rtol or 0.0) * np.abs(ref64)
        violations = int(np.sum(~(diff <= bound)))

    return {
        "shape": tuple(int(d) for d in cand.shape),
        "samples": int(flat_ref.shape[0]),
        "max_abs": _safe(max_abs) if finite.all() else float("inf"),
        "max_rel": _safe(max_rel) if finite.all() else float("inf"),
        "mean_abs": _safe(mean_abs),
        "cosine": _safe(cosine),
        "sqnr_db": float(sqnr),
        "top1_agreement": float(agree.mean()),
        "top5_agreement": float(top5),
        "top1_mismatches": mismatches,
        "allclose_violations": violations,
        "nan": nan,
        "inf": inf,
    }


def failed_gates(m, gates: dict) -> list[tuple[str, str]]:
    """(a few words for a table cell, the full sentence) for each gate in `gates` that the metrics `m`
    (a dict from output_metrics, or an object with the GATE_FIELDS attributes) fail."""
    get = m.get if isinstance(m, dict) else (lambda key: getattr(m, key))
    atol, rtol = gates.get("atol"), gates.get("rtol")
    min_agree, min_sqnr = gates.get("min_top1_agreement"), gates.get("min_sqnr_db")
    failed = []
    if get("nan") or get("inf"):
        failed.append(("NaN/Inf", f"{get('nan')} NaN and {get('inf')} Inf values"))
    if (atol is not None or rtol is not None) and get("allclose_violations"):
        failed.append((
            f"atol/rtol ({get('allclose_violations')} el.)",
            f"max abs diff {get('max_abs'):.3g} > atol {atol or 0:g} + rtol {rtol or 0:g}*|ref| "
            f"({get('allclose_violations')} elements)",
        ))
    if gates.get("same_top1") and get("top1_mismatches"):
        failed.append((
            f"top-1 ({get('top1_mismatches')}/{get('samples')} differ)",
            f"top-1 differs on {get('top1_mismatches')} of {get('samples')} samples",
        ))
    if min_agree is not None and get("top1_agreement") < min_agree:
        failed.append((
            f"top-1 agreement < {min_agree:.0%}",
            f"top-1 agreement {get('top1_agreement'):.1%} < {min_agree:.1%}",
        ))
    if min_sqnr is not None and not (get("sqnr_db") >= min_sqnr):
        failed.append((f"SQNR < {min_sqnr:g} dB", f"SQNR {get('sqnr_db'):.1f} dB < {min_sqnr:g} dB"))
    return failed


def gate_failures(m, gates: dict) -> list[str]:
    """The full sentence for each gate `m` fails (empty when it passes)."""
    return [sentence for _short, sentence in failed_gates(m, gates)]


# How far another format of the same file (the .ort beside the .onnx) may compute from it, on the same CPU and
# provider: the precision's noise, relative to the outputs' peak magnitude (at least 1). The same graph in the
# same kernels is bit-identical or within layout noise; a saturating int8 kernel is off by ~20 % of the peak.
FORMAT_NOISE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 1e-3}


def format_difference_failure(precision: str, max_abs: float, peak: float) -> str | None:
    """Why a second format of the file differs from the verified one by more than its precision's noise."""
    allowed = FORMAT_NOISE.get(precision, FORMAT_NOISE["fp32"]) * max(1.0, float(peak))
    if max_abs == max_abs and max_abs <= allowed:
        return None
    return (f"computes {max_abs:.3g} max abs away from the .onnx on the same CPU (noise for {precision}: "
            f"<= {allowed:.3g}): a different computation, not the verified file")
