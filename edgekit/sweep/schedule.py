"""The sweep's jobs on Ray, in dependency order, as their results arrive.

- Each model's fp32 top-1: its labelled set cut into shards, one task each.
- Each row: one quantize task, then its int8 file's top-1, sharded like the fp32's.
- Rows that share a calibration (model, method, samples) start one at a time until the first has finished, so its
  activation ranges are in the ranges cache before the others quantize: computed once per calibration.

A failed quantization or shard becomes the row's one-line error; a task whose worker died every retry too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from edgekit.sweep import engine, jobs
from edgekit.sweep.plan import Inputs, ModelPlan, fp32_key
from edgekit.sweep.results import Row, save_row
from edgekit.sweep.spec import SweepSpec


def shards(count: int, workers: int) -> list[slice]:
    """Contiguous slices of `count` items: two per worker (a slow worker does not hold the rest), at least 16 items."""
    n = max(1, min(count // 16 or 1, 2 * workers))
    bounds = [round(i * count / n) for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run_jobs(spec: SweepSpec, plans: list[ModelPlan], inputs: Inputs, rows: list[Row], fp32: dict, out: Path,
             cluster: engine.Cluster, cpu_kind: str, on_row: Callable[[Row, dict], None] | None,
             notes: list[str] | None = None) -> int:
    """Run every job not cached; fills `rows` and `fp32` in place (and `notes` with what the workers said about
    the caches); returns how many jobs ran."""
    threads = cluster.threads
    quantize_task = engine.remote(jobs.quantize_job, threads)
    predict_task = engine.remote(jobs.predict_shard, threads)
    cuts = shards(len(inputs.items), cluster.workers)
    by_name = {p.name: p for p in plans}
    pending: dict = {}  # ref -> (kind, what, shard index)
    predictions: dict[str, list] = {}  # "fp32:<model>" or a row's key -> per-shard predictions
    started: dict[str, float] = {}
    status = {"done": sum(r.status == "ok" for r in rows), "failed": 0, "total": len(rows)}

    def submit_shards(tag: str, file: str, prep: dict, config: dict, name: str) -> None:
        predictions[tag] = [None] * len(cuts)
        for i, cut in enumerate(cuts):
            ref = predict_task.remote(file, inputs.items[cut], prep, config, threads, name)
            pending[ref] = ("shard", tag, i)

    fp32_run = 0
    for p in plans:
        if fp32.get(p.name) is None:
            submit_shards(f"fp32:{p.name}", str(p.file), p.preprocessing, {}, "")
            fp32_run += 1
    waiting: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.status == "ok":
            continue
        group = (row.model, row.method, row.samples)
        if group in waiting:
            waiting[group].append(row)
        else:
            waiting[group] = []
            _submit_quantize(quantize_task, pending, row, by_name[row.model], spec, out, started)
    rows_by_key = {r.key: r for r in rows}

    def finish(row: Row, error: str | None) -> None:
        if error:
            row.status, row.error = "failed", error
            status["failed"] += 1
        else:
            row.status = "ok"
            status["done"] += 1
        row.seconds = time.perf_counter() - started.get(row.key, time.perf_counter())
        save_row(out / "jobs", row)
        group = (row.model, row.method, row.samples)
        for nxt in waiting.pop(group, []):  # the calibration is cached now (or failed: the next computes it)
            _submit_quantize(quantize_task, pending, nxt, by_name[nxt.model], spec, out, started)
            waiting.setdefault(group, [])
        if on_row:
            on_row(row, {**status, "running": sum(1 for k in pending.values() if k[0] == "quantize")})

    while pending:
        for ref in engine.wait_one(list(pending)):
            kind, what, index = pending.pop(ref)
            value = engine.result_of(ref)
            died = isinstance(value, tuple) and value and value[0] == "died"
            if kind == "quantize":
                row = rows_by_key[what]
                if died or "error" in value:
                    finish(row, value[1] if died else value["error"])
                    continue
                if notes is not None:
                    notes += [n for n in value.get("notes", []) if n not in notes]
                for k in ("file", "int8_bytes", "fp32_bytes", "fp32_nodes", "ranges_cached", "holdout_sqnr_db",
                          "kernels", "session_config"):
                    setattr(row, k, value[k])
                submit_shards(row.key, row.file, by_name[row.model].preprocessing, row.session_config, row.name)
                continue
            store = predictions.get(what)
            if store is None:  # its job already failed on another shard
                continue
            if died:
                predictions.pop(what)
                if what.startswith("fp32:"):
                    model = what[5:]
                    fp32[model] = {"error": f"fp32 top-1: {value[1]}"}
                    for row in rows:
                        if row.model == model and row.status != "ok":
                            row.error = row.error or f"fp32 top-1: {value[1]}"
                else:
                    finish(rows_by_key[what], f"top-1: {value[1]}")
                continue
            store[index] = value
            if any(s is None for s in store):
                continue
            flat = [p for s in predictions.pop(what) for p in s]
            if what.startswith("fp32:"):
                model = what[5:]
                fp32[model] = _top1(flat, inputs.labels)
                fp32[model]["predictions"] = flat
                _save_fp32(out, by_name[model], inputs, cpu_kind, fp32[model])
                _complete_rows(rows_by_key, predictions, fp32, inputs, model, finish)
            else:
                row = rows_by_key[what]
                row.images = sum(p >= 0 for p in flat)
                row.int8_top1 = _top1(flat, inputs.labels)["top1"]
                predictions[f"done:{row.key}"] = flat
                _complete_rows(rows_by_key, predictions, fp32, inputs, row.model, finish)
    for row in rows:  # an fp32 top-1 that failed leaves its model's rows without a reference
        if row.status == "pending":
            row.status, row.error = "failed", row.error or "not finished"
    return fp32_run + len(started)  # each fp32 top-1, each quantization (with its top-1)


def _complete_rows(rows_by_key, predictions, fp32, inputs, model, finish) -> None:
    """Rows of `model` whose int8 and fp32 predictions are both in: agreement, fp32 top-1, done."""
    ref = fp32.get(model)
    if not ref or "predictions" not in ref:
        return
    for tag in [t for t in predictions if t.startswith("done:")]:
        row = rows_by_key[tag[5:]]
        if row.model != model:
            continue
        flat = predictions.pop(tag)
        both = [(a, b) for a, b in zip(flat, ref["predictions"]) if a >= 0 and b >= 0]
        row.agreement = 100.0 * sum(a == b for a, b in both) / len(both) if both else None
        row.fp32_top1 = ref["top1"]
        finish(row, None)


def _top1(predictions: list[int], labels: list[int]) -> dict:
    scored = [(p, y) for p, y in zip(predictions, labels) if p >= 0]
    if not scored:
        return {"top1": None, "images": 0}
    return {"top1": 100.0 * sum(p == y for p, y in scored) / len(scored), "images": len(scored)}


def _save_fp32(out: Path, plan: ModelPlan, inputs: Inputs, cpu_kind: str, entry: dict) -> None:
    from edgekit.onnxfile.artifact import write_text_atomic

    write_text_atomic(out / "jobs" / f"{fp32_key(plan, inputs, cpu_kind)}.json", json.dumps(entry) + "\n")


def _submit_quantize(task, pending: dict, row: Row, plan: ModelPlan, spec: SweepSpec, out: Path, started: dict) -> None:
    name = f"{row.model}.{row.target}.{row.method}.{row.samples}"
    output = out / "files" / f"{name}.int8.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    started[row.key] = time.perf_counter()
    ref = task.remote(row.name, str(plan.file.resolve()), row.target, row.method, row.samples,
                      str(Path(spec.calibration).resolve()), str(output.resolve()), str((out / "calibration").resolve()),
                      spec.seed)
    pending[ref] = ("quantize", row.key, 0)
