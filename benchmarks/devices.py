"""Int8 files judged on the CPUs they are for, emulated from this machine (edgekit's --device).

The digits-trained textbook_densenet reference (benchmarks/reference/, real labelled data) is exported with the
preprocessing it was trained with and quantized with each recipe (calibration split). Each file is then run on
the held-out test split by ONNX Runtime on: this machine (its default kernels, and the exact path where this CPU
saturates), x86-avx2 (QEMU Haswell: default and exact), arm64-a53 and arm64-a76 (QEMU, aarch64 onnxruntime).
For each: top-1, logit SQNR against fp32, and the SQNR against the x86 exact path. Writes benchmarks/DEVICES.md
and benchmarks/devices_results.json; says which CPU. Emulated speed means nothing: no timing here.

    .venv/bin/python benchmarks/devices.py [--recipes x86-avx2,x86-vnni,arm64,generic] [--samples N]
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
from benchmarks.int8_recipes import log, split, top1  # noqa: E402

WORK = ROOT / "benchmarks" / "work" / "devices"
REFERENCE = ROOT / "benchmarks" / "reference" / "textbook_densenet-digits.safetensors"
DEVICES = ("host", "x86-avx2", "arm64-a53", "arm64-a76")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="x86-avx2,x86-vnni,arm64,generic")
    parser.add_argument("--samples", type=int, default=None, help="at most this many test images (default: all)")
    args = parser.parse_args(argv)

    from edgekit.judge.compare import DEFAULT_TOLERANCES, compare_outputs
    from edgekit.export import export
    from edgekit.core.provenance import this_cpu
    from edgekit.quantize import quantize
    from edgekit.runtimes.runners import run_onnx
    from edgekit.runtimes.devices import device_status
    from edgekit.judge.targets import exact_session_for

    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / "digits"
    digits.write_digits_imagefolder(data)
    log("export textbook_densenet (digits reference, 32 px, its own preprocessing)")
    pre = digits.preprocessing()
    fp32 = export("textbook_densenet", weights=REFERENCE, input_size=32, preprocessing=pre,
                  output=WORK / "textbook_densenet.onnx").path
    x, y = split(data, "test", pre)
    if args.samples:
        x, y = x[: args.samples], y[: args.samples]
    reference = run_onnx(fp32, x, 1)
    tol = DEFAULT_TOLERANCES["int8"]
    rows = []
    for recipe in args.recipes.split(","):
        log(f"quantize --target {recipe}")
        q = quantize(fp32, calibration=data / "calib", target=recipe, fallback=False, min_sqnr=0.0,
                     min_top1_agreement=0.0, output=WORK / f"textbook_densenet.{recipe}.int8.onnx")
        recipe_meta = q.metadata["recipe"]
        exact_config = exact_session_for(recipe_meta)
        x86_exact = run_onnx(q.path, x, 1, exact_config, device="x86-avx2")
        runs = [("host", "default", None)]
        if this_cpu().int8_saturates:
            runs.append(("host", "exact", exact_config))
        runs += [("x86-avx2", "default", None), ("x86-avx2", "exact", exact_config),
                 ("arm64-a53", "default", None), ("arm64-a76", "default", None)]
        for device, kernels, config in runs:
            if not device_status(device).ready:
                log(f"  {device}: not ready here, skipped ({'; '.join(device_status(device).missing)})")
                continue
            started = time.perf_counter()
            out = x86_exact if (device, kernels) == ("x86-avx2", "exact") else run_onnx(q.path, x, 1, config, device=device)
            row = {
                "recipe": recipe, "device": device, "mode": device_status(device).mode, "kernels": kernels,
                "session_config": config or {}, "top1": top1(out, y), "fp32_top1": top1(reference, y),
                "sqnr_vs_fp32_db": compare_outputs(reference, out, "logits", tol).sqnr_db,
                "sqnr_vs_x86_exact_db": compare_outputs(x86_exact, out, "logits", tol).sqnr_db,
                "identical_to_x86_exact": bool(np.array_equal(out, x86_exact)),
                "samples": int(len(x)), "seconds": time.perf_counter() - started,
            }
            rows.append(row)
            log(f"  {device:9s} {kernels:7s} top-1 {row['top1']:.2f} % (fp32 {row['fp32_top1']:.2f}), "
                f"{row['sqnr_vs_fp32_db']:.1f} dB vs fp32, {row['sqnr_vs_x86_exact_db']:.1f} dB vs x86 exact")
    cpu = this_cpu()
    result = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu.to_dict(),
              "model": "textbook_densenet (digits reference, 32 px)", "rows": rows}
    (ROOT / "benchmarks" / "devices_results.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Int8 files on the CPUs they are for (emulated devices)", "",
        f"Written by `python benchmarks/devices.py` on {cpu.model} ({cpu.kind()}), {result['created']}.",
        f"{result['model']}, {len(x)} held-out labelled test images; fp32 top-1 {rows[0]['fp32_top1']:.2f} %." if rows else "",
        "ONNX Runtime on each device; `x86-avx2` is QEMU `-cpu Haswell-noTSX`, `arm64-*` QEMU with aarch64 onnxruntime",
        "(natively where this machine is that CPU). `exact`: the session option the file's manifest names for that CPU.",
        "SQNR vs x86 exact: the logits against the same file on x86 with exact accumulation.", "",
        "| recipe | device | runs | kernels | top-1 % | SQNR vs fp32 dB | SQNR vs x86 exact dB | bit-identical to x86 exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "yes" if r["identical_to_x86_exact"] else "no"
        lines.append(f"| {r['recipe']} | {r['device']} | {r['mode']} | {r['kernels']} | {r['top1']:.2f} | "
                     f"{r['sqnr_vs_fp32_db']:.1f} | {r['sqnr_vs_x86_exact_db']:.1f} | {same} |")
    (ROOT / "benchmarks" / "DEVICES.md").write_text("\n".join(lines) + "\n")
    log("wrote benchmarks/DEVICES.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
