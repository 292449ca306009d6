"""bench's last line: the fastest runtime whose outputs pass, for each file on this CPU.

Each runtime bench timed a file in (ORT on a provider, OpenVINO) runs the file once more on a few seeded inputs
(the bench input's shape); its outputs are compared with ORT CPU's (the reference every edgekit gate is read
against) with the file's precision gates (judge/compare.py gates_for, compare_outputs). The fastest passing one,
by the p50 bench just measured, is the verdict. ORT CPU is the reference, so it always passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VERDICT_SAMPLES = 8  # seeded inputs each runtime's outputs are compared on (batched at the file's own batch)


def _outputs(path: Path, runtime: str, provider: str, x: np.ndarray, batch: int, threads: int,
             recipe: dict | None) -> np.ndarray:
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.runners import run_batched

    runner = open_runner(path, runtime, provider, threads=threads, batch=batch,
                         recipe=recipe if runtime == "ort" else None)
    try:
        return run_batched(runner.run, x, batch)[0]
    finally:
        runner.close()


def fastest_passing(timings: list, *, batch: int, threads: int) -> dict:
    """{file name: {"fastest": label, "runtime", "provider", "p50_ms", "checked": [{label, passed, failures}]}}
    over the ONNX timings; a file where no runtime passes has "fastest": None."""
    from edgekit.judge.compare import compare_outputs
    from edgekit.onnxfile import OnnxFile

    by_file: dict[str, list] = {}
    for t in timings:
        if t.kind == "onnx" and t.file:
            by_file.setdefault(t.file, []).append(t)
    out = {}
    for file, ts in by_file.items():
        path = Path(file)
        source = OnnxFile.open(path, check=False)
        spec, recipe = source.spec, source.recipe or None
        tolerance, gates = source.gates()  # the file's own gates: its precision, weights and task
        del source
        dtype = np.float16 if spec.dtype == "float16" else np.float32
        n = batch * max(1, VERDICT_SAMPLES // batch)
        x = np.random.default_rng(0).standard_normal([n, *spec.chw]).astype(dtype)
        reference = _outputs(path, "ort", "cpu", x, batch, threads, recipe)
        checked = []
        for t in ts:
            if t.runtime == "ort" and t.provider == "cpu":
                checked.append({"label": t.label, "runtime": "ort", "provider": "cpu", "p50_ms": t.p50_ms,
                                "passed": True, "failures": [], "reference": True})
                continue
            got = _outputs(path, t.runtime, t.provider, x, batch, threads, recipe)
            metrics = compare_outputs(reference, got, "output", tolerance)
            checked.append({"label": t.label, "runtime": t.runtime, "provider": t.provider, "p50_ms": t.p50_ms,
                            "passed": metrics.passed, "failures": list(metrics.failures), "sqnr_db": metrics.sqnr_db,
                            "top1_agreement": metrics.top1_agreement})
        passing = [c for c in checked if c["passed"]]
        best = min(passing, key=lambda c: c["p50_ms"]) if passing else None
        out[path.name] = {"fastest": best["label"] if best else None, "runtime": best["runtime"] if best else None,
                          "provider": best["provider"] if best else None, "p50_ms": best["p50_ms"] if best else None,
                          "gates": gates, "samples": n, "checked": checked}
    return out


def verdict_line(name: str, verdict: dict) -> str:
    """One line: which runtime to ship this file with on this CPU, and why."""
    failed = [c for c in verdict["checked"] if not c["passed"]]
    also = ("; failed the gates: " + ", ".join(f"{c['label']} ({'; '.join(c['failures'][:1])})" for c in failed)) if failed else ""
    if verdict["fastest"] is None:
        return f"fastest passing runtime for {name} on this CPU: none{also}"
    runtime = verdict["runtime"] + (f" {verdict['provider']}" if verdict["runtime"] == "ort" else "")
    gates = verdict["gates"].split(" (")[0]
    why = ("ORT CPU is the reference the others are gated against" if runtime == "ort cpu"
           else f"its outputs pass the file's gates, {gates}, against ORT CPU's on {verdict['samples']} seeded inputs")
    return f"fastest passing runtime for {name} on this CPU: {runtime}, p50 {verdict['p50_ms']:.2f} ms ({why}){also}"
