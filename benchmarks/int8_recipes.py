"""Int8 across CPUs on models trained on real labelled data (the digits references).

For each reference: export it with the preprocessing it was trained with, quantize it with each x86
and portable recipe (calibration split, no fp32 fallback), and measure top-1 on the held-out test split
with ORT's default kernels and with exact int32 accumulation (session.x64quantprecision=1), plus the
logit SQNR against fp32. Also: the fp32 top-1 through torchvision's ImageNet recipe (edgekit's old,
only preprocessing) against the declared one, and the accuracy-budget fallback with a budget that
full int8 misses. Writes benchmarks/INT8.md and benchmarks/int8_results.json; says which CPU.

    .venv/bin/python benchmarks/int8_recipes.py [--models resnet18,...] [--fallback-model resnext50_32x4d]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import digits  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "int8"
RECIPES = ("x86-avx2", "x86-vnni", "generic")
MODELS = ("resnet18", "resnext50_32x4d", "densenet121")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(logits), -1).argmax(1) == labels).mean() * 100)


def split(data: Path, name: str, preprocessing) -> tuple[np.ndarray, np.ndarray]:
    from edgekit.data.images import load_image_folder

    xs, ys = [], []
    for c in digits.CLASSES:
        images = load_image_folder(data / name / c, preprocessing)
        xs.append(images.tensors)
        ys.append(np.full(len(images), int(c)))
    return np.concatenate(xs), np.concatenate(ys)


def measure_model(name: str, data: Path, weights: Path) -> dict:
    from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
    from edgekit.core.errors import CheckFailed
    from edgekit.export import export
    from edgekit.models.reference import build_model
    from edgekit.models.registry import get_spec
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.quantize import quantize
    from edgekit.runtimes.runners import run_onnx, run_torch
    from edgekit.judge.targets import EXACT_INT8_SESSION

    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    declared = digits.preprocessing()
    fp32 = export(name, weights=weights, input_size=digits.INPUT, preprocessing=declared, output=folder / f"{name}.onnx")
    x, y = split(data, "test", declared)
    fp32_out = run_onnx(fp32.path, x, 1)
    model, _ = build_model(get_spec(name), None, weights, False, 0, digits.INPUT)
    old_x, _ = split(data, "test", Preprocessing.for_input_size(digits.INPUT))
    row = {
        "model": name, "test_images": int(len(y)), "pytorch_top1": top1(run_torch(model, x), y),
        "fp32_top1": top1(fp32_out, y), "pytorch_top1_old_default_preprocessing": top1(run_torch(model, old_x), y),
        "recipes": {},
    }
    log(f"{name}: fp32 {row['fp32_top1']:.2f} % (old default preprocessing: {row['pytorch_top1_old_default_preprocessing']:.2f} %)")
    for recipe in RECIPES:
        out = folder / f"{name}.{recipe}.int8.onnx"
        t0 = time.perf_counter()
        try:
            q = quantize(fp32.path, target=recipe, calibration=data / "calib", output=out, fallback=False)
        except CheckFailed as exc:
            row["recipes"][recipe] = {"quantize_failed": str(exc)}
            log(f"{name} {recipe}: quantize refused it: {exc}")
            continue
        entry = {"quantize_seconds": time.perf_counter() - t0, "holdout_sqnr_db": q.holdout.sqnr_db}
        for kernels, config in (("default", None), ("exact", EXACT_INT8_SESSION)):
            logits = run_onnx(q.path, x, 1, config)
            metrics = compare_outputs(fp32_out, logits, "logits", DEFAULT_TOLERANCES["int8"])
            entry[kernels] = {"top1": top1(logits, y), "sqnr_db": metrics.sqnr_db, "agreement": metrics.top1_agreement}
        row["recipes"][recipe] = entry
        log(f"{name} {recipe}: default {entry['default']['top1']:.2f} % / {entry['default']['sqnr_db']:.1f} dB, "
            f"exact {entry['exact']['top1']:.2f} % / {entry['exact']['sqnr_db']:.1f} dB")
    return row


def fallback_table(name: str, data: Path, max_drop: float, min_sqnr: float | None) -> dict:
    """The fp32 fallback with a budget full int8 misses: which nodes, the trials, the latency cost."""
    from edgekit.core.errors import CheckFailed
    from edgekit.quantize import quantize

    fp32 = WORK / name / f"{name}.onnx"
    out = WORK / name / f"{name}.budget.int8.onnx"
    try:
        q = quantize(fp32, calibration=data / "calib", dataset=data / "calib", max_drop=max_drop, min_sqnr=min_sqnr,
                     output=out)
    except CheckFailed as exc:
        return {"model": name, "max_drop": max_drop, "min_sqnr": min_sqnr, "failed": str(exc)}
    return {"model": name, "max_drop": max_drop, "min_sqnr": min_sqnr, "result": q.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--checkpoints", type=Path, default=digits.DEFAULT_OUT)
    parser.add_argument("--fallback-model", default="resnext50_32x4d")
    parser.add_argument("--fallback-min-sqnr", type=float, default=None)
    parser.add_argument("--fallback-max-drop", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--reuse", action="store_true", help="keep the recipe rows of int8_results.json; redo the fallback")
    args = parser.parse_args(argv)

    from edgekit.core.provenance import library_versions, this_cpu

    data = digits.DEFAULT_DATA
    digits.write_digits_imagefolder(data)
    rows = []
    if args.reuse:
        rows = json.loads((args.out / "int8_results.json").read_text())["rows"]
    for name in [n for n in args.models.split(",") if n and not args.reuse]:
        weights = args.checkpoints / f"{name}-digits.safetensors"
        if not weights.exists():
            log(f"{name}: no checkpoint {weights}; train it with benchmarks/digits.py")
            continue
        rows.append(measure_model(name, data, weights))
    fallback = None
    if args.fallback_model and any(r["model"] == args.fallback_model for r in rows):
        log(f"fallback: {args.fallback_model}, --max-drop {args.fallback_max_drop} on the calibration split")
        fallback = fallback_table(args.fallback_model, data, args.fallback_max_drop, args.fallback_min_sqnr)
    cpu = this_cpu()
    result = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu.to_dict(),
              "versions": library_versions(), "rows": rows, "fallback": fallback}
    from edgekit.core.serialize import to_json

    (args.out / "int8_results.json").write_text(to_json(result))
    (args.out / "INT8.md").write_text(markdown(result))
    log(f"wrote {args.out / 'INT8.md'}")
    return 0


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    out = [
        "# Int8 across CPUs: the digits references",
        "",
        f"Measured {result['measured']} by `benchmarks/int8_recipes.py` on **{cpu['model']}** ({cpu['kind']}; flags "
        f"{', '.join(cpu['flags'])}). ORT {result['versions']['onnxruntime']}. Models trained on scikit-learn's digits "
        "by `benchmarks/digits.py`, exported with the preprocessing they were trained with (`--resize 32 --crop 32`), "
        "quantized with the calibration split (no fp32 fallback), top-1 on the held-out test split. `exact` runs the "
        "same file with `session.x64quantprecision=1` (int32 accumulation: what a VNNI or ARM CPU computes); on a CPU "
        "with VNNI both columns are the same computation, and saturation can only be seen on an AVX2-only CPU.",
        "",
        "| model | fp32 top-1 | recipe | int8 top-1 (default kernels) | SQNR dB | int8 top-1 (exact) | SQNR dB | drop (default) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        for recipe, e in r["recipes"].items():
            if "quantize_failed" in e:
                out.append(f"| {r['model']} | {r['fp32_top1']:.2f} | {recipe} | refused: {e['quantize_failed'][:80]} | | | | |")
                continue
            d, x = e["default"], e["exact"]
            out.append(f"| {r['model']} | {r['fp32_top1']:.2f} | {recipe} | {d['top1']:.2f} | {d['sqnr_db']:.1f} | "
                       f"{x['top1']:.2f} | {x['sqnr_db']:.1f} | {r['fp32_top1'] - d['top1']:+.2f} |")
    out += ["", "## The preprocessing the model was trained with, against edgekit's old only one", "",
            "| model | PyTorch top-1, declared (`--resize 32 --crop 32`) | PyTorch top-1, torchvision's ImageNet recipe at 32 (resize 37, crop 32) |",
            "|---|---|---|"]
    for r in result["rows"]:
        out.append(f"| {r['model']} | {r['pytorch_top1']:.2f} | {r['pytorch_top1_old_default_preprocessing']:.2f} |")
    fb = result.get("fallback")
    if fb:
        out += ["", f"## Accuracy budget with fp32 fallback: {fb['model']}, `--dataset calib --max-drop {fb['max_drop']:g}`"
                + (f" `--min-sqnr {fb['min_sqnr']:g}`" if fb.get("min_sqnr") is not None else ""), ""]
        if "failed" in fb:
            out.append(f"Not met: {fb['failed']}")
        else:
            q = fb["result"]
            f = q.get("fallback")
            if not f:
                out.append("Full int8 met the budget; no node was kept in fp32.")
            else:
                out += ["| fp32 nodes | held-out SQNR dB | top-1 drop on calib | met |", "|---|---|---|---|"]
                chosen = f["chosen_fp32_nodes"]
                for t in f["trials"]:
                    out.append(f"| {len(t['fp32_nodes'])} | {t['holdout_sqnr_db']:.1f} | "
                               f"{'-' if t['drop_points'] is None else format(t['drop_points'], '+.2f')} | "
                               f"{'yes' if t['fp32_nodes'] == chosen else ''} |")
                ms = f["latency_ms"]
                out += ["", "Kept in fp32: " + ", ".join(f"`{n}`" for n in chosen), "",
                        "Latency (batch 1, CPU, interleaved p50): " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
