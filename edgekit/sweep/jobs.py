"""The work a sweep hands to its workers, as plain functions of plain values (no Ray here).

- `quantize_job`: one int8 file through edgekit's own quantize, given every quantize knob of its point (a dict of
  QuantizeOptions' fields), with the shared activation-ranges cache; a failure comes back as its one line, never as
  an exception (it becomes a row).
- `predict_shard`: the top-1 predictions of one ONNX file on one shard of the labelled set, decoded in the worker,
  run in one runtime through edgekit's runners (runtimes/factory.py `open_runner`) with the worker's share of the
  cores as its threads.

`TASKS` names the two; the scheduler submits what it is given (schedule.run_jobs `tasks`), so a test can hand the
workers wrappers of its own (tests/sweep_faults.py injects crashes, failures and stalls that way).

Paths are shared: on a cluster, the sweep's output folder, the calibration and the dataset must be on a
file system every node sees at the same path (docs/sweep.md, "Scaling out").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def quantize_job(name: str, model_file: str, options: dict, output: str, ranges_cache: str) -> dict:
    """Quantize `model_file` with the quantize knobs `options` (JSON values); a dict of what the row needs, or
    {"error": one line}. `name` is the point's, for the worker's logs and the tests' wrappers."""
    from edgekit.core.errors import one_line

    started = time.perf_counter()
    try:
        from edgekit.quantize import quantize
        from edgekit.quantize.options import QuantizeOptions

        knobs = {k: (Path(v) if k in ("calibration", "dataset") and v is not None else
                     tuple(v) if isinstance(v, list) else v) for k, v in options.items()}
        result = quantize(Path(model_file), QuantizeOptions(**knobs, output=Path(output), ranges_cache=Path(ranges_cache)))
        fallback = result.fallback
        return {
            "file": str(result.path), "int8_bytes": result.int8_bytes, "fp32_bytes": result.fp32_bytes,
            "fp32_nodes": len(fallback.chosen.fp32_nodes) if fallback and fallback.chosen else 0,
            "fp32_groups": (fallback.reverted if fallback else 0) if knobs.get("max_drop") is not None else None,
            "groups": fallback.groups if fallback else None,
            "quantize_drop": result.dataset_top1[0] - result.dataset_top1[1] if result.dataset_top1 else None,
            "ranges_cached": result.ranges_cached, "holdout_sqnr_db": result.holdout.sqnr_db,
            "kernels": result.judgement.kernels or "default", "session_config": eval_session_config(result.path),
            "eval_kernels": eval_kernels(result.path), "quantize_seconds": time.perf_counter() - started,
            "notes": [n for n in result.notes if n.startswith("calibration cache entry")],  # a damaged ranges entry
        }
    except Exception as exc:  # noqa: BLE001  (every failure is a row, with its kind and one line)
        return {"error": f"{type(exc).__name__}: {one_line(exc, 240)}", "quantize_seconds": time.perf_counter() - started}


def eval_kernels(path: Path) -> str:
    """The kernels an int8 file's top-1 runs on here: "exact" where its gates ran its target's exact arithmetic
    because this CPU's defaults differ, else "default"."""
    from edgekit.onnxfile import OnnxFile
    from edgekit.core.provenance import this_cpu
    from edgekit.judge.targets import judge_int8

    handle = OnnxFile.open(Path(path))
    return "exact" if judge_int8(handle.recipe, this_cpu(), handle.recipe.get("target")).gate_session else "default"


def eval_session_config(path: Path) -> dict[str, str]:
    """How an int8 file is run in ONNX Runtime for its top-1 here: the session options its recipe needs with the
    kernels `eval_kernels` picks (the record a row keeps; the worker opens its runner from the same decision)."""
    from edgekit.onnxfile import OnnxFile
    from edgekit.runtimes.factory import session_options

    return session_options(OnnxFile.open(Path(path)).recipe, kernels=eval_kernels(path))


def predict_shard(model_file: str, items: list[str], preprocessing: dict, kernels: str, threads: int, name: str = "",
                  runtime: str = "ort") -> list[int]:
    """Top-1 class of each image of `items` (-1 where it cannot be decoded), the file run in `runtime` with
    `kernels` (ORT: runtimes/factory.py `session_options`)."""
    from edgekit.data.images import decode_chunks
    from edgekit.data.preprocessing import Preprocessing

    from edgekit.runtimes.runners import run_batched

    runner, batch = _runner_for(Path(model_file), runtime, kernels, threads)
    predictions = [-1] * len(items)
    for _end, decoded, x, _failed in decode_chunks(items, Preprocessing.from_dict(preprocessing)):
        if x is not None:  # whole batches of the runner's size, the last one padded (OpenVINO's batch is fixed)
            logits = run_batched(runner.run, x, batch)[0].reshape(len(x), -1)
            for i, p in zip(decoded, logits.argmax(axis=1)):
                predictions[i] = int(p)
    return predictions


_RUNNER: dict = {}  # this worker's last runner: a file's shards mostly land on the same workers


def _runner_for(path: Path, runtime: str, kernels: str, threads: int):
    """One runner per worker process, reused while the worker evaluates shards of the same file in the same runtime
    (same bytes: size and mtime in the key, as the same sweep never rewrites a file in place). Timed sessions: no
    thread spinning, so workers sharing cores do not steal them from each other."""
    from edgekit.onnxfile import OnnxFile
    from edgekit.runtimes.factory import open_runner
    from edgekit.runtimes.runners import batch_sizes_for

    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns, runtime, kernels, threads)
    if key not in _RUNNER:
        for old, _batch in _RUNNER.values():  # one at a time: a worker holds one model in memory
            old.close()
        _RUNNER.clear()
        handle = OnnxFile.open(path)
        batch = batch_sizes_for(handle.spec.batch)[-1]
        _RUNNER[key] = (open_runner(path, runtime, recipe=handle.recipe or None, kernels=kernels, timing=True,
                                    threads=threads, batch=batch), batch)
    return _RUNNER[key]


@dataclass(frozen=True)
class Tasks:
    """The two functions a sweep's workers run (module-level functions: Ray ships them to its workers by name)."""

    quantize: Callable = quantize_job
    predict: Callable = predict_shard


TASKS = Tasks()
