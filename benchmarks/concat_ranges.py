"""One range per Concat (quantize/static.concat_range_overrides) against ORT's own per-tensor ranges: speed and
accuracy of the same model quantized both ways (issue 32, "QDQ placement around ... Concats").

For each fp32 file given, quantize in this process twice with the same recipe, calibration and held-out set: the
recipe as shipped (every activation of a Concat with one range, the union of theirs) and the same recipe with that
one knob off (each tensor its own calibrated range, as quantize_static gives by default). Then:
- the held-out SQNR and top-1 agreement against fp32 that quantize measured for each (and the top-1 on a labelled
  folder with --dataset: a model trained on real data says what accuracy costs);
- ORT int8 (both files) and ORT fp32, spinning off as `edgekit bench` times, and OpenVINO int8 (both files), all in
  one interleaved rotation with edgekit's timer, each timed call right after an untimed one (back to back); p50.

    .venv/bin/python benchmarks/concat_ranges.py exports/densenet121.onnx [--calibration DIR] [--dataset DIR]
        [--rounds 60] [--out benchmarks/CONCAT_RANGES.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def quantize_both(model: Path, tmp: Path, calibration: Path | None, dataset: Path | None) -> dict:
    """{"one range": result, "own ranges": result}: the same quantize with the knob on and off."""
    from edgekit.judge import targets
    from edgekit.quantize import quantize

    knobs = {"calibration": calibration, "dataset": dataset, "max_drop": 100.0 if dataset else None,
             "fallback": False, "min_sqnr": 0.0, "min_top1_agreement": 0.0}
    out = {"one range": quantize(model, output=tmp / f"{model.stem}.shared.int8.onnx", **knobs)}
    saved = dict(targets.RECIPES)
    try:
        for name, recipe in saved.items():
            targets.RECIPES[name] = dataclasses.replace(recipe, concat_shared_range=False)
        out["own ranges"] = quantize(model, output=tmp / f"{model.stem}.own.int8.onnx", **knobs)
    finally:
        targets.RECIPES.clear()
        targets.RECIPES.update(saved)
    return out


def time_all(fp32: Path, files: dict[str, Path], rounds: int, threads: int) -> dict[str, float]:
    from edgekit.onnxfile.artifact import load_onnx, read_metadata
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.timer import interleaved, percentiles

    runners = {"ORT fp32": open_runner(fp32, "ort", timing=True, threads=threads)}
    for label, path in files.items():
        recipe = (read_metadata(load_onnx(path, check=False), path) or {}).get("recipe")
        runners[f"ORT int8, {label}"] = open_runner(path, "ort", recipe=recipe, timing=True, threads=threads)
        runners[f"OpenVINO int8, {label}"] = open_runner(path, "openvino", threads=threads)
    shape = next(iter(runners.values())).session.input_shape[1:]
    x = np.random.default_rng(0).standard_normal([1, *shape]).astype(np.float32)
    samples, _ = interleaved({k: r.timed_runner(x) for k, r in runners.items()}, rounds, warmup=3, primed=True,
                             settle_ms=50.0)
    return {k: percentiles(v)[0] for k, v in samples.items()}


def main() -> int:
    from edgekit.core.provenance import this_cpu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--calibration", type=Path)
    ap.add_argument("--dataset", type=Path, help="labelled folder: top-1 of both files (only for trained weights)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "CONCAT_RANGES.md")
    args = ap.parse_args()
    started, cpu = time.time(), this_cpu()
    rows, raw = [], {}
    with tempfile.TemporaryDirectory(prefix="concat-ranges-") as tmp:
        for model in args.models:
            load = round(os.getloadavg()[0], 2)
            results = quantize_both(model, Path(tmp), args.calibration, args.dataset)
            ms = time_all(model, {k: r.path for k, r in results.items()}, args.rounds, args.threads)
            raw[model.name] = {"load": load, "ms_p50": ms, **{k: {
                "holdout_sqnr_db": r.holdout.sqnr_db, "holdout_top1_agreement": r.holdout.top1_agreement,
                "dataset_top1": r.dataset_top1, "concats_int8": r.coverage.int8.get("Concat")} for k, r in results.items()}}
            for label, r in results.items():
                top1 = (f"{r.dataset_top1[1]:.2f} % (fp32 {r.dataset_top1[0]:.2f} %)" if r.dataset_top1 is not None
                        else "-")
                rows.append(f"| {model.name} | {label} | {r.holdout.sqnr_db:.2f} | {r.holdout.top1_agreement:.1%} | {top1} "
                            f"| {ms[f'ORT int8, {label}']:.2f} | {ms['ORT fp32'] / ms[f'ORT int8, {label}']:.2f}x "
                            f"| {ms[f'OpenVINO int8, {label}']:.2f} | {load} |")
            print(model.name, {k: round(v, 2) for k, v in ms.items()}, flush=True)
    lines = [
        "# One range per Concat against each tensor's own", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} by `benchmarks/concat_ranges.py` on "
        f"{cpu.model} ({os.cpu_count()} cores; {cpu.kind()}). Batch 1, {args.threads} threads, one interleaved run of "
        f"{args.rounds} rounds per model, each timed call right after an untimed one; p50. ORT spinning off (as "
        "`edgekit bench`); OpenVINO with the f32 precision hint. The same recipe, calibration and held-out set for "
        "both files; only the Concat ranges differ.", "",
        "| model | Concat ranges | held-out SQNR dB | top-1 agreement | int8 top-1 on --dataset | ORT int8 ms | ORT fp32/int8 "
        "| OpenVINO int8 ms | load |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu.model, "results": raw}, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
