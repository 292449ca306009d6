"""check.py's report: the table of a bundle's checks, one image's top-5, and strict JSON (no NaN literals).
One copy: edgekit prints a bundle's check with the same table (edgekit.bundle.BundleCheck.describe). numpy only.
"""

from __future__ import annotations

import json

import numpy as np

from .check import EXIT_FAILED


def _num(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not np.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return format(value, spec)


def format_report(result: dict) -> str:
    lines = [f"bundle {result['bundle']}: {result['model']} ({result['precision']}), "
             f"{result['golden_samples']} golden inputs, reference PyTorch fp32",
             f"manifest sha256 {result.get('manifest_sha256')} (pin it: --expect-manifest)"]
    cpu = result["cpu"]
    lines.append(f"cpu: {cpu.get('model')} ({cpu.get('machine')}{', flags faked' if cpu.get('faked') else ''})")
    gates = ", ".join(f"{k} {v}" for k, v in result["gates"].items() if v not in (None, False))
    lines.append(f"gates: {gates}")
    bad = [c for c in result["checksums"] if not c["ok"]]
    lines.append(f"checksums: {len(result['checksums']) - len(bad)}/{len(result['checksums'])} files match the manifest"
                 + ("" if not bad else " -- FAIL"))
    for c in bad:
        lines.append(f"  FAIL {c['reason']}")
    for note in result["notes"]:
        lines.append(f"note: {note}")
    header = ("format", "provider", "batch", "max abs", "SQNR dB", "cosine", "top-1", "top-5", "NaN/Inf", "result")
    table = [header]
    for r in result["rows"]:
        m = r["metrics"] or {}
        provider = r["provider"].replace("ExecutionProvider", "")
        reason = "; ".join(r.get("short") or r["failures"])
        table.append((
            r["format"], provider, _num(r["batch"], "d"), _num(m.get("max_abs"), ".2e"), _num(m.get("sqnr_db"), ".1f"),
            _num(m.get("cosine"), ".6f"), _num(m.get("top1_agreement"), ".0%"), _num(m.get("top5_agreement"), ".0%"),
            f"{m['nan']}/{m['inf']}" if m else "-", r["status"] + (f": {reason}" if reason else ""),
        ))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        lines.append("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for r in result["rows"]:  # not gates: how far the .ort is from the .onnx, and both from the packaging machine
        extra = []
        if r.get("vs_onnx_max_abs") is not None:
            extra.append(f"vs the .onnx {r['vs_onnx_max_abs']:.2e}")
        if r.get("vs_packaging_max_abs") is not None:
            extra.append(f"vs the packaging machine's ORT {r['vs_packaging_max_abs']:.2e}")
        if extra:
            lines.append(f"  {r['format']} on {r['provider'].replace('ExecutionProvider', '')} batch {r['batch']}: max abs "
                         + ", ".join(extra))
    lines.append(("PASS" if result["passed"] else "FAIL" if result["exit_code"] == EXIT_FAILED else "UNAVAILABLE")
                 + (": " + " | ".join(result["reasons"]) if result["reasons"] else ""))
    return "\n".join(lines)


def format_image(result: dict) -> str:
    lines = [f"{result['image']} -> {result['model']}", f"preprocessing: {result['preprocessing']}",
             f"input tensor sha256 {result['input_sha256'][:16]}..., min {result['input_stats']['min']:.4f}, "
             f"max {result['input_stats']['max']:.4f}, mean {result['input_stats']['mean']:.4f}"]
    lines += [f"note: {n}" for n in result["notes"]]
    for t in result["top5"]:
        label = f"  {t['label']}" if t["label"] is not None else ""
        lines.append(f"{t['rank']}. class {t['class']:>5}{label}  logit {t['logit']:.4f}  p {t['probability']:.4f}")
    return "\n".join(lines)


def to_json(value) -> str:
    def clean(v):
        if isinstance(v, float) and not np.isfinite(v):
            return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=2, allow_nan=False)
