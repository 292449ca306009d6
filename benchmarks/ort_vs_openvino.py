"""ORT against OpenVINO on the same int8 file (issue 32): back to back, batch 1, one interleaved run per model.

For each model folder's `NAME.onnx` and `NAME.int8.onnx` (made by `edgekit export NAME` and `edgekit quantize`),
every candidate below is timed in one interleaved rotation with edgekit's timer (runtimes/timer.py), each timed
call right after an untimed call of the same candidate (`primed`: back to back, as a deployment sees it):

- ORT on the fp32 and the int8 file, with its thread pool's spinning off (what `edgekit bench` times) and on
  (ONNX Runtime's default, what a deployment that calls one model in a loop gets);
- OpenVINO on the same two files (one stream, LATENCY hint, f32 precision hint: it computes what the file says);
- with `--variants`, ORT int8 with session options under trial (each one a row; kept only if measured faster).

Writes a Markdown table and a JSON file. The CPU is read from /proc/cpuinfo and written beside every figure.

    .venv/bin/python benchmarks/ort_vs_openvino.py --folder DIR [--models resnet18,...] [--rounds 40]
        [--threads 2] [--variants] [--out benchmarks/ORT_VS_OPENVINO.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "densenet121")
# Session options tried on the int8 file in ORT, on top of edgekit's own (spinning on, as back to back is timed).
VARIANTS = {
    "no layout transform (extended)": {"optimization": "extended", "config": {}},
    "dynamic block base 4": {"optimization": "all", "config": {"session.dynamic_block_base": "4"}},
}


def cpu_line() -> str:
    from edgekit.core.provenance import this_cpu

    cpu = this_cpu()
    flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in cpu.flags]
    return f"{cpu.model} ({os.cpu_count()} cores; {', '.join(flags) or 'no AVX2'})"


def candidates(fp32: Path, int8: Path, threads: int, variants: bool, extra: dict[str, Path]) -> dict:
    """{label: zero-argument call}, every runner opened the way edgekit opens it."""
    from edgekit.onnxfile.artifact import load_onnx, read_metadata
    from edgekit.runtimes.factory import open_runner, session_options
    from edgekit.runtimes.ort import create_session

    recipe = (read_metadata(load_onnx(int8, check=False), int8) or {}).get("recipe")
    ort_files = [("fp32", fp32, None), ("int8", int8, recipe), *((label, path, recipe) for label, path in extra.items())]
    runners = {f"ORT {name} spin {'on' if spin else 'off'}": open_runner(path, "ort", recipe=rec, timing=True,
                                                                        spin=spin, threads=threads)
               for name, path, rec in ort_files for spin in (False, True)}
    first = next(iter(runners.values()))
    x = np.random.default_rng(0).standard_normal([1, *first.session.input_shape[1:]]).astype(np.float32)
    runs = {label: r.timed_runner(x) for label, r in runners.items()}
    for name, path in (("fp32", fp32), ("int8", int8)):  # the extra files are timed in ORT only
        runs[f"OpenVINO {name}"] = open_runner(path, "openvino", threads=threads).timed_runner(x)
    if variants:
        base = session_options(recipe, timing=True, spin=True)
        for label, v in VARIANTS.items():
            s = create_session(int8, threads=threads, optimization=v["optimization"],
                               session_config={**base, **v["config"]})
            runs[f"ORT int8 spin on, {label}"] = s.timed_runner(x)
    return runs


def measure(
    folder: Path, model: str, rounds: int, threads: int, variants: bool, settle_ms: float, extra: list[str]
) -> dict:
    from edgekit.runtimes.timer import interleaved, percentiles

    others = {}
    for item in extra:  # LABEL=PATH, PATH may hold {model}
        label, _, path = item.partition("=")
        found = Path(path.format(model=model))
        if found.exists():
            others[label] = found
    runs = candidates(folder / f"{model}.onnx", folder / f"{model}.int8.onnx", threads, variants, others)
    samples, _ = interleaved(runs, rounds, warmup=3, primed=True, settle_ms=settle_ms)
    return {label: dict(zip(("p50", "p90", "mean"), percentiles(v))) for label, v in samples.items()}


def table(results: dict) -> list[str]:
    lines = [
        "| model | ORT int8 ms (spin off / on) | OpenVINO int8 ms | ORT int8 speed / OpenVINO's (spin off / on) "
        "| ORT int8/fp32 (spin on) | OpenVINO int8/fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        p = {k: v["p50"] for k, v in r.items()}
        off, on, ov = p["ORT int8 spin off"], p["ORT int8 spin on"], p["OpenVINO int8"]
        lines.append(
            f"| {model} | {off:.2f} / {on:.2f} | {ov:.2f} | {ov / off:.2f} / {ov / on:.2f} "
            f"| {p['ORT fp32 spin on'] / on:.2f}x | {p['OpenVINO fp32'] / ov:.2f}x |"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--extra", action="append", default=[], help="LABEL=PATH of another int8 file ({model} expands)")
    ap.add_argument("--settle-ms", type=float, default=50.0, help="idle before each candidate's untimed call")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ORT_VS_OPENVINO.md")
    args = ap.parse_args()
    started = time.time()
    clean, loads = {}, {}
    for model in args.models.split(","):
        loads[model] = round(os.getloadavg()[0], 2)
        clean[model] = measure(args.folder, model, args.rounds, args.threads, args.variants, args.settle_ms, args.extra)
        print(model, loads[model], {k: round(v["p50"], 2) for k, v in clean[model].items()}, flush=True)
    head = [
        "# ORT and OpenVINO on the same int8 file",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} by `benchmarks/ort_vs_openvino.py` "
        f"in {(time.time() - started) / 60:.1f} min. CPU: {cpu_line()}. Batch 1, {args.threads} threads, 224x224, "
        f"seeded random weights (speed only), the `auto` int8 files. One interleaved run per model, {args.rounds} "
        "rounds, each timed call right after an untimed call of the same candidate (back to back), that untimed call "
        f"after {args.settle_ms:g} ms idle so that no other candidate's pool still spins; p50. "
        f"1-minute load average before each model: {loads}.",
        "",
    ]
    rows = []
    for m, r in clean.items():
        ov = r["OpenVINO int8"]["p50"]
        for label in sorted({k.rsplit(" spin ", 1)[0] for k in r if k.startswith("ORT ")}):
            off, on = r[f"{label} spin off"]["p50"], r[f"{label} spin on"]["p50"]
            rows.append(f"| {m} | {label[4:]} | {off:.2f} / {on:.2f} | {ov / off:.2f} / {ov / on:.2f} |")
    body = [*table(clean), "", "Every ORT candidate against OpenVINO on the int8 file (the same rotation):", "",
            "| model | ORT on | p50 ms (spin off / on) | speed as a fraction of OpenVINO int8's (off / on) |",
            "|---|---|---|---|", *rows, ""]
    args.out.write_text("\n".join(head + body))
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu_line(), "load": loads, "results": clean}, indent=1))
    print("\n".join(table(clean)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
