"""What the activation-ranges cache saves a second target: quantize the digits textbook_resnext (128 calibration
samples) for x86-vnni with an empty ranges cache (it calibrates) against with the entry x86-avx2 left (the same
rewritten graph: it reads the ranges), interleaved rounds, warm, medians. Needs benchmarks/sweep.py's export first.

    .venv/bin/python benchmarks/ranges_cache.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    from edgekit.core.provenance import this_cpu
    from edgekit.quantize import quantize

    model = ROOT / "benchmarks" / "work" / "sweep" / "textbook_resnext.onnx"
    calibration = ROOT / "benchmarks" / "work" / "digits" / "calib"
    if not model.is_file():
        raise SystemExit(f"{model} is missing: run benchmarks/sweep.py first")
    work = Path(tempfile.mkdtemp(prefix="edgekit-ranges-"))
    try:
        store = work / "store"
        quantize(model, calibration=calibration, target="x86-avx2", output=work / "warm.onnx", min_sqnr=0.0)
        quantize(model, calibration=calibration, target="x86-avx2", output=work / "a.onnx", min_sqnr=0.0, ranges_cache=store)
        cold, hit = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            fresh = quantize(model, calibration=calibration, target="x86-vnni", output=work / "c.onnx", min_sqnr=0.0,
                             ranges_cache=work / f"empty{r}")
            cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reused = quantize(model, calibration=calibration, target="x86-vnni", output=work / "h.onnx", min_sqnr=0.0,
                              ranges_cache=store)
            hit.append(time.perf_counter() - t0)
            assert not fresh.ranges_cached and reused.ranges_cached
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(cold), statistics.median(hit)
    cpu = this_cpu()
    print(f"{cpu.model} ({cpu.kind()}): x86-vnni quantize calibrating {a:.2f} s, reading x86-avx2's ranges {b:.2f} s: "
          f"{a - b:.2f} s saved ({100 * (1 - b / a):.0f} %); rounds cold {[round(v, 2) for v in cold]}, "
          f"cached {[round(v, 2) for v in hit]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
