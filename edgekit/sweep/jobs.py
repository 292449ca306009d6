"""The work a sweep hands to its workers, as plain functions of plain values (no Ray here).

- `quantize_job`: one (model, target, method, samples) int8 file through edgekit's own quantize, with the shared
  activation-ranges cache; a failure comes back as its one line, never as an exception (it becomes a row).
- `predict_shard`: the top-1 predictions of one ONNX file on one shard of the labelled set, decoded in the worker,
  with ORT's intra-op threads set to the worker's share of the cores.

Paths are shared: on a cluster, the sweep's output folder, the calibration and the dataset must be on a
file system every node sees at the same path (README, "Scaling out").

Fault injection for the tests, read from EDGEKIT_SWEEP_FAULTS (JSON): {"crash_once": NAME, "fail": NAME,
"stall": NAME, "marker_dir": DIR}. The job whose name contains `crash_once` kills its worker process (os._exit) the
first time it runs, as a crashed worker would; the one containing `fail` raises; the one containing `stall` sleeps
ten minutes (a job still running when the user presses Ctrl-C). Unset, nothing happens.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


FAULTS_ENV = "EDGEKIT_SWEEP_FAULTS"


def quantize_job(name: str, model_file: str, target: str, method: str, samples: int, calibration: str, output: str,
                 ranges_cache: str, seed: int) -> dict:
    """Quantize `model_file` for `target`; a dict of what the row needs, or {"error": one line}."""
    from edgekit.core.errors import one_line

    started = time.perf_counter()
    try:
        _maybe_fault(name)
        from edgekit.quantize import quantize

        result = quantize(Path(model_file), calibration=Path(calibration), samples=samples, method=method, target=target,
                          seed=seed, output=Path(output), ranges_cache=Path(ranges_cache))
        return {
            "file": str(result.path), "int8_bytes": result.int8_bytes, "fp32_bytes": result.fp32_bytes,
            "fp32_nodes": len(result.fallback.chosen.fp32_nodes) if result.fallback and result.fallback.chosen else 0,
            "ranges_cached": result.ranges_cached, "holdout_sqnr_db": result.holdout.sqnr_db,
            "kernels": result.judgement.kernels or "default", "session_config": eval_session_config(result.path),
            "quantize_seconds": time.perf_counter() - started,
            "notes": [n for n in result.notes if n.startswith("calibration cache entry")],  # a damaged ranges entry
        }
    except Exception as exc:  # noqa: BLE001  (every failure is a row, with its kind and one line)
        return {"error": f"{type(exc).__name__}: {one_line(exc, 240)}", "quantize_seconds": time.perf_counter() - started}


def eval_session_config(path: Path) -> dict[str, str]:
    """How an int8 file is run for its top-1 here: the session options it records, with the kernels its gates
    ran on this CPU (its target's exact arithmetic where this CPU's defaults differ)."""
    from edgekit.onnxfile import OnnxFile
    from edgekit.core.provenance import this_cpu
    from edgekit.judge.targets import judge_int8
    from edgekit.runtimes.factory import session_options

    handle = OnnxFile.open(Path(path))
    meant_for = handle.recipe.get("target")
    judgement = judge_int8(handle.recipe, this_cpu(), meant_for)
    return session_options(handle.recipe, kernels="exact" if judgement.gate_session else "default")


def predict_shard(model_file: str, items: list[str], preprocessing: dict, session_config: dict, threads: int,
                  name: str = "") -> list[int]:
    """Top-1 class of each image of `items` (-1 where it cannot be decoded)."""
    from edgekit.data.images import decode_chunks
    from edgekit.data.preprocessing import Preprocessing
    from edgekit.runtimes.ort import NO_SPIN, create_session
    from edgekit.runtimes.runners import top1

    _maybe_fault(name)
    session = _session_for(Path(model_file), {**NO_SPIN, **(session_config or {})}, threads, create_session)
    predictions = [-1] * len(items)
    for _end, decoded, x, _failed in decode_chunks(items, Preprocessing.from_dict(preprocessing)):
        if x is not None:
            for i, p in zip(decoded, top1(session, x)):
                predictions[i] = int(p)
    return predictions


_SESSION: dict = {}  # this worker's last session: a file's shards mostly land on the same workers


def _session_for(path: Path, config: dict, threads: int, create):
    """One ORT session per worker process, reused while the worker evaluates shards of the same file (same bytes:
    size and mtime in the key, as the same sweep never rewrites a file in place)."""
    info = path.stat()
    key = (str(path.resolve()), info.st_size, info.st_mtime_ns, json.dumps(config, sort_keys=True), threads)
    if key not in _SESSION:
        _SESSION.clear()  # one at a time: a worker holds one model in memory
        _SESSION[key] = create(path, "cpu", session_config=config, threads=threads)
    return _SESSION[key]


def _maybe_fault(name: str) -> None:
    raw = os.environ.get(FAULTS_ENV)
    if not raw or not name:
        return
    faults = json.loads(raw)
    if faults.get("stall") and faults["stall"] in name:
        time.sleep(600)
    if faults.get("fail") and faults["fail"] in name:
        raise RuntimeError(f"injected failure in {name} ({FAULTS_ENV})")
    if faults.get("crash_once") and faults["crash_once"] in name:
        marker = Path(faults["marker_dir"]) / ("crashed-" + faults["crash_once"].replace("/", "_"))
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(137)  # the worker process dies, as one killed by the OOM killer would
