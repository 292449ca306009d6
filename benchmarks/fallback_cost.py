"""What the accuracy budget's fp32 fallback costs against one plain quantize of the same file.

Each run is a fresh process (`edgekit quantize ... --json`), the two commands interleaved A B A B ..., and the cost
is the median of the per-pair ratios of wall seconds (pairing keeps the ratio meaningful when the machine's speed
drifts). Both use the same calibration folder, so the same held-out set; the fallback run adds a budget only the
fallback meets. Printed as JSON: each pair's seconds and ratio, the median, and what the fallback did (groups,
groups reverted, the session runs of the ranking, the bound and the steps).

    .venv/bin/python benchmarks/fallback_cost.py MODEL.onnx --calibration DIR --budget "--min-sqnr 34" --pairs 5

The digits case (docs/fallback-groups.md): export textbook_resnext with its digits weights first,

    .venv/bin/edgekit export textbook_resnext --weights benchmarks/reference/textbook_resnext-digits.safetensors \\
        --input-size 32 --resize 32 --crop 32 -o benchmarks/work/resnext-digits.onnx
    .venv/bin/python benchmarks/fallback_cost.py benchmarks/work/resnext-digits.onnx \\
        --calibration benchmarks/work/digits/calib --budget "--min-sqnr 34"
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EDGEKIT = ROOT / ".venv" / "bin" / "edgekit"


def quantize(model: Path, calibration: Path, extra: list[str], out: Path) -> tuple[float, dict]:
    """One `edgekit quantize` in a fresh process: (wall seconds, its JSON result)."""
    cmd = [str(EDGEKIT), "quantize", str(model), "--calibration", str(calibration), *extra, "-o", str(out), "--json"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--budget", required=True, help='the options that need the fallback, e.g. "--min-sqnr 34"')
    ap.add_argument("--plain", default="", help="options of the plain quantize (default: none, the default gates)")
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    pairs, fallback = [], None
    with tempfile.TemporaryDirectory(prefix="fallback-cost-") as tmp:
        for i in range(args.pairs):
            a, result = quantize(args.model, args.calibration, shlex.split(args.budget), Path(tmp) / "a.int8.onnx")
            b, plain = quantize(args.model, args.calibration, shlex.split(args.plain), Path(tmp) / "b.int8.onnx")
            if plain.get("fallback") is not None:
                sys.exit("the plain quantize needed the fallback: give --plain options it meets without it")
            fallback = result["fallback"]
            if fallback is None:
                sys.exit("the budget was met without the fallback: give a stricter --budget")
            pairs.append({"fallback_s": round(a, 2), "plain_s": round(b, 2), "ratio": round(a / b, 3)})
    steps = fallback["steps"]
    print(json.dumps({
        "model": str(args.model), "budget": args.budget, "plain": args.plain or "(default gates)",
        "pairs": pairs, "median_ratio": round(statistics.median(p["ratio"] for p in pairs), 3),
        "groups": fallback["groups"], "reverted_groups": fallback["reverted_groups"], "runs": fallback["runs"],
        "bound": {k: v for k, v in (fallback["bound"] or {}).items() if k != "groups"} or None,
        "steps": [{"group": s["group"], "holdout_sqnr_db": round(s["holdout_sqnr_db"], 2), "verdict": s["verdict"]}
                  for s in steps],
        "fallback_seconds_in_process": fallback["seconds"],
    }, indent=1))


if __name__ == "__main__":
    main()
