"""The sweep's jobs on Ray, in dependency order, as their results arrive.

- Each model's fp32 top-1 in each runtime: its labelled set cut into shards, one task each.
- Each int8 file: one quantize task, then its top-1 in each runtime of the sweep (each a row), sharded like the
  fp32's. A file whose row in another runtime is already finished (read from the job cache) is not quantized again.
- Files that share a calibration (model, method, samples) start one at a time until the first has finished, so its
  activation ranges are in the ranges cache before the others quantize: computed once per calibration.

A failed quantization or shard becomes the row's one-line error (every runtime's row of a file that failed to
quantize); a task whose worker died every retry too. What runs is `tasks` (jobs.TASKS unless a caller, such as
the tests' fault injection, gives its own).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from edgekit.sweep import engine, jobs
from edgekit.sweep.plan import Inputs, ModelPlan, fp32_key, reference
from edgekit.sweep.results import Row, save_row
from edgekit.sweep.spec import SweepSpec

_QUANTIZED = ("file", "int8_bytes", "fp32_bytes", "fp32_nodes", "ranges_cached", "holdout_sqnr_db", "kernels",
              "session_config")
_FALLBACK = ("fp32_groups", "groups", "quantize_drop")  # absent from a job that ran without a budget


def shards(count: int, workers: int) -> list[slice]:
    """Contiguous slices of `count` items: two per worker (a slow worker does not hold the rest), at least 16 items."""
    n = max(1, min(count // 16 or 1, 2 * workers))
    bounds = [round(i * count / n) for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run_jobs(spec: SweepSpec, plans: list[ModelPlan], inputs: Inputs, rows: list[Row], fp32: dict, out: Path,
             cluster: engine.Cluster, cpu_kind: str, on_row: Callable[[Row, dict], None] | None,
             notes: list[str] | None = None, tasks: jobs.Tasks | None = None) -> int:
    """Run every job not cached; fills `rows` and `fp32` (keyed by plan.reference: model, or model@runtime) in
    place (and `notes` with what the workers said about the caches); returns how many jobs ran."""
    run = _Run(spec, plans, inputs, rows, fp32, out, cluster, cpu_kind, on_row, notes, tasks or jobs.TASKS)
    fp32_run = run.start_fp32()
    run.start_files()
    while run.pending:
        for ref in engine.wait_one(list(run.pending)):
            run.arrived(ref)
    for row in rows:  # an fp32 top-1 that failed leaves its model's rows without a reference
        if row.status == "pending":
            row.status, row.error = "failed", row.error or "not finished"
    return fp32_run + run.submitted  # each fp32 top-1, each quantization (with its top-1s)


class _Run:
    """One run_jobs call: the tasks in flight, the shards' predictions as they arrive, the rows by file and by key,
    the calibration groups waiting for their first file, and the progress counts handed to `on_row`."""

    def __init__(self, spec: SweepSpec, plans: list[ModelPlan], inputs: Inputs, rows: list[Row], fp32: dict,
                 out: Path, cluster: engine.Cluster, cpu_kind: str, on_row: Callable[[Row, dict], None] | None,
                 notes: list[str] | None, tasks: jobs.Tasks) -> None:
        self.spec, self.plans, self.inputs, self.rows, self.fp32, self.out = spec, plans, inputs, rows, fp32, out
        self.cpu_kind, self.on_row, self.notes = cpu_kind, on_row, notes
        self.threads = cluster.threads
        self.quantize_task = engine.remote(tasks.quantize, self.threads)
        self.predict_task = engine.remote(tasks.predict, self.threads)
        self.cuts = shards(len(inputs.items), cluster.workers)
        self.by_name = {p.name: p for p in plans}
        self.pending: dict = {}  # ref -> (kind, what, shard index)
        self.predictions: dict[str, list] = {}  # "fp32:<reference>" or a row's key -> per-shard predictions
        self.started: dict[str, float] = {}
        self.status = {"done": sum(r.status == "ok" for r in rows), "failed": 0, "total": len(rows)}
        self.files: dict[str, list[Row]] = {}  # a file's name -> its rows, one per runtime
        for row in rows:
            self.files.setdefault(row.file_name, []).append(row)
        self.rows_by_key = {r.key: r for r in rows}
        self.waiting: dict[tuple, list[str]] = {}  # calibration group -> files waiting for its first
        self.submitted = 0  # quantize tasks submitted

    # -- submitting

    def submit_shards(self, tag: str, file: str, prep: dict, kernels: str, name: str, runtime: str) -> None:
        self.predictions[tag] = [None] * len(self.cuts)
        for i, cut in enumerate(self.cuts):
            ref = self.predict_task.remote(file, self.inputs.items[cut], prep, kernels, self.threads, name, runtime)
            self.pending[ref] = ("shard", tag, i)

    def start_fp32(self) -> int:
        """Each model's fp32 top-1 in each runtime of its rows, unless cached; returns how many were submitted."""
        fp32_run = 0
        for p in self.plans:
            for runtime in dict.fromkeys(r.runtime for r in self.rows if r.model == p.name):
                if self.fp32.get(reference(p.name, runtime)) is None:
                    self.submit_shards(f"fp32:{reference(p.name, runtime)}", str(p.file), p.preprocessing, "default",
                                       "", runtime)
                    fp32_run += 1
        return fp32_run

    def start_files(self) -> None:
        """The first file of each calibration group starts; the group's other files wait for it (release)."""
        for file_name, file_rows in self.files.items():
            if all(r.status == "ok" for r in file_rows):
                continue
            row = file_rows[0]
            group = (row.model, row.method, row.samples)
            if group in self.waiting:
                self.waiting[group].append(file_name)
            else:
                self.waiting[group] = []
                self.quantize(file_name)

    def quantize(self, file_name: str) -> None:
        todo = [r for r in self.files[file_name] if r.status != "ok"]
        done = next((r for r in self.files[file_name] if r.status == "ok" and r.file and Path(r.file).is_file()), None)
        if done is not None:  # quantized in an earlier run: its file is reused for the other runtimes
            for row in todo:
                self.started[row.key] = time.perf_counter()
                self.evaluate(row, {**{k: getattr(done, k) for k in (*_QUANTIZED, *_FALLBACK)},
                                    "eval_kernels": jobs.eval_kernels(Path(done.file))})
            return
        _submit_quantize(self.quantize_task, self.pending, todo, self.by_name[todo[0].model], self.spec, self.out,
                         self.started)
        self.submitted += 1

    def evaluate(self, row: Row, value: dict) -> None:
        """The file is there: this row's top-1 in its runtime."""
        for k in _QUANTIZED:
            setattr(row, k, value[k])
        for k in _FALLBACK:
            setattr(row, k, value.get(k))
        self.submit_shards(row.key, row.file, self.by_name[row.model].preprocessing,
                           value.get("eval_kernels", "default"), row.name, row.runtime)

    # -- finishing

    def finish(self, row: Row, error: str | None) -> None:
        if error:
            row.status, row.error = "failed", error
            self.status["failed"] += 1
        else:
            row.status = "ok"
            self.status["done"] += 1
        row.seconds = time.perf_counter() - self.started.get(row.key, time.perf_counter())
        save_row(self.out / "jobs", row)
        self.release(row)
        if self.on_row:
            self.on_row(row, {**self.status, "running": sum(1 for k in self.pending.values() if k[0] == "quantize")})

    def release(self, row: Row) -> None:
        """Its file's first row finished: the calibration is cached now (or failed: the next files compute it), so
        the files waiting on it start."""
        group = (row.model, row.method, row.samples)
        for nxt in self.waiting.pop(group, []):
            self.quantize(nxt)
            self.waiting.setdefault(group, [])

    # -- results as they arrive

    def arrived(self, ref) -> None:
        """A task finished (or its worker died every retry)."""
        kind, what, index = self.pending.pop(ref)
        value = engine.result_of(ref)
        died = isinstance(value, tuple) and value and value[0] == "died"
        if kind == "quantize":
            self.quantized(what, value, died)
        else:
            self.shard_arrived(what, index, value, died)

    def quantized(self, file_name: str, value, died: bool) -> None:
        """A file's quantization: failed, its rows' one line; done, each row's top-1 in its runtime starts."""
        file_rows = [r for r in self.files[file_name] if r.status != "ok"]
        if died or "error" in value:
            for row in file_rows:
                self.finish(row, value[1] if died else value["error"])
            return
        if self.notes is not None:
            self.notes += [n for n in value.get("notes", []) if n not in self.notes]
        for row in file_rows:
            self.evaluate(row, value)

    def shard_arrived(self, tag: str, index: int, value, died: bool) -> None:
        """One shard's predictions; once all of a job's shards are in, its top-1."""
        store = self.predictions.get(tag)
        if store is None:  # its job already failed on another shard
            return
        if died:
            self.shard_died(tag, value[1])
            return
        store[index] = value
        if any(s is None for s in store):
            return
        flat = [p for s in self.predictions.pop(tag) for p in s]
        if tag.startswith("fp32:"):
            self.fp32_done(tag[5:], flat)
        else:
            self.int8_done(self.rows_by_key[tag], flat)

    def shard_died(self, tag: str, line: str) -> None:
        """A shard's worker died every retry: an fp32 top-1 leaves its rows the reason; an int8 one fails its row."""
        self.predictions.pop(tag)
        if tag.startswith("fp32:"):
            ref_name = tag[5:]
            self.fp32[ref_name] = {"error": f"fp32 top-1: {line}"}
            for row in self.rows:
                if reference(row.model, row.runtime) == ref_name and row.status != "ok":
                    row.error = row.error or f"fp32 top-1: {line}"
        else:
            self.finish(self.rows_by_key[tag], f"top-1: {line}")

    def fp32_done(self, ref_name: str, flat: list[int]) -> None:
        """A model's fp32 top-1 in one runtime: saved, and the rows waiting on it judged."""
        self.fp32[ref_name] = _top1(flat, self.inputs.labels)
        self.fp32[ref_name]["predictions"] = flat
        plan = self.by_name[ref_name.split("@")[0]]
        runtime = ref_name.partition("@")[2] or "ort"
        _save_fp32(self.out, plan, self.inputs, self.cpu_kind, self.fp32[ref_name], runtime)
        _complete_rows(self.rows_by_key, self.predictions, self.fp32, self.inputs, ref_name, self.finish)

    def int8_done(self, row: Row, flat: list[int]) -> None:
        """A row's int8 top-1: judged once its model's fp32 predictions are in."""
        row.images = sum(p >= 0 for p in flat)
        row.int8_top1 = _top1(flat, self.inputs.labels)["top1"]
        self.predictions[f"done:{row.key}"] = flat
        _complete_rows(self.rows_by_key, self.predictions, self.fp32, self.inputs, reference(row.model, row.runtime),
                       self.finish)


def _complete_rows(rows_by_key, predictions, fp32, inputs, ref_name, finish) -> None:
    """Rows judged against `ref_name` (a model's fp32 top-1 in one runtime) whose int8 and fp32 predictions are both
    in: agreement, fp32 top-1, done."""
    ref = fp32.get(ref_name)
    if not ref or "predictions" not in ref:
        return
    for tag in [t for t in predictions if t.startswith("done:")]:
        row = rows_by_key[tag[5:]]
        if reference(row.model, row.runtime) != ref_name:
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


def _save_fp32(out: Path, plan: ModelPlan, inputs: Inputs, cpu_kind: str, entry: dict, runtime: str) -> None:
    from edgekit.onnxfile.artifact import write_text_atomic

    write_text_atomic(out / "jobs" / f"{fp32_key(plan, inputs, cpu_kind, runtime)}.json", json.dumps(entry) + "\n")


def _submit_quantize(task, pending: dict, rows: list[Row], plan: ModelPlan, spec: SweepSpec, out: Path,
                     started: dict) -> None:
    """One quantize task for the file of `rows` (its rows in each runtime still to run)."""
    row = rows[0]
    output = out / "files" / f"{row.file_name.replace('/', '.')}.int8.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        started[r.key] = time.perf_counter()
    options = {**row.options, "target": row.target, "method": row.method, "samples": row.samples,
               "calibration": str(Path(spec.calibration).resolve()), "seed": spec.seed}
    ref = task.remote(row.file_name, str(plan.file.resolve()), options, str(output.resolve()),
                      str((out / "calibration").resolve()))
    pending[ref] = ("quantize", row.file_name, 0)
