"""`edgekit import`: an ONNX file made elsewhere (torch.onnx, the dynamo exporter, onnxsim, Paddle2ONNX) becomes
an edgekit fp32 file every command accepts. Its input is pinned, its graph normalised (importer/normalise.py:
Constant weights to initializers, opset >= 13, shape-only subgraphs folded), the result checked against the
ORIGINAL in ONNX Runtime on seeded random inputs and photos, and the metadata (the original's name, sha256, opset,
producer, every change, the check) written through the schema. Staged beside the destination; moved into place
only when every check passed. Its knobs are ImportOptions (below)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.errors import BadInput, GateFailed, InvariantBroken
from edgekit.core.files import shown_path
from edgekit.core.knobs import knob, with_knobs
from edgekit.core.limits import MAX_SEED, MAX_TENSOR_BYTES, human_bytes
from edgekit.core.provenance import library_versions
from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
from edgekit.data.preprocessing import Preprocessing
from edgekit.data.tensors import seeded_random_inputs
from edgekit.importer import normalise
from edgekit.judge.compare import SIMPLIFY_TOLERANCE, OutputMetrics, Tolerance, compare_outputs
from edgekit.onnxfile.artifact import (
    artifact_bytes,
    default_output,
    load_onnx,
    load_work_file,
    opset_of,
    read_metadata,
    resolve_output,
    sha256_file,
    stage_output,
    write_metadata,
)
from edgekit.onnxfile.graph import detect_precision, graph_inputs
from edgekit.runtimes.ort import create_session
from edgekit.runtimes.runners import DYNAMIC_LARGE_BATCH, run_session

TASKS = ("classify", "dense")
RANDOM_CHECK_INPUTS = 4
# The normalised graph computes what the original computes; folding and BatchNorm fusion move float32 rounding
# only (onnxsim's own check uses these bounds): same as export's simplify check.
IMPORT_TOLERANCE = SIMPLIFY_TOLERANCE


@dataclass(frozen=True)
class ImportOptions:
    """The knobs of `import_onnx`, with the defaults, help and ranges `edgekit import` shows (cli/import_cmd.py).
    `preprocessing`: the model's own (the CLI's --resize/--crop/...); None: ImageNet's mean and std at the input
    size (for a non-square input: a straight resize to H x W), said in the result's notes."""

    input_shape: tuple[int | None, int, int, int] | None = knob(
        None, "N,C,H,W the model runs at, e.g. 1,3,48,192 (N or -1: keep the batch dynamic); needed when H/W are dynamic")
    task: str | None = knob(None, "classify or dense (default: from the output's shape)")
    output: Path | None = knob(None)
    images: Path | None = knob(None)
    seed: int = knob(0, "seed of the random check inputs", low=0, high=MAX_SEED)
    preprocessing: Preprocessing | None = knob(None)
    untrained: bool = knob(False, "the file's weights are not trained (a random init, to try the pipeline): the "
                                  "random-weight gates apply downstream, and every report says its int8 figures say "
                                  "nothing about accuracy (default: unknown weights count as trained)")


@dataclass
class ImportResult:
    """What `import_onnx` did and measured."""

    path: Path
    source: Path
    metadata: dict
    changes: list[str]
    task: str
    task_detected: bool
    output_shape: list[int | str]
    structure_before: dict[str, int]
    structure_after: dict[str, int]
    vs_original: OutputMetrics
    check_inputs: str
    file_bytes: int
    stage_seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "source": str(self.source), "task": self.task, "task_detected": self.task_detected,
            "output_shape": self.output_shape, "changes": self.changes, "structure_before": self.structure_before,
            "structure_after": self.structure_after, "vs_original": self.vs_original.to_dict(),
            "check_inputs": self.check_inputs, "file_bytes": self.file_bytes, "stage_seconds": self.stage_seconds,
            "notes": self.notes, "metadata": self.metadata,
        }


def import_onnx(source: Path, options: ImportOptions | None = None, *, on_stage: Callable[[str], None] | None = None,
                **knobs) -> ImportResult:
    """Normalise the foreign ONNX file SOURCE into an edgekit fp32 file (see the module's docstring)."""
    o = with_knobs(ImportOptions, options, knobs)
    if o.task is not None and o.task not in TASKS:
        raise BadInput(f"--task {o.task!r}: use one of {', '.join(TASKS)}")
    source = Path(source)
    where = shown_path(source)
    original = _original_facts(source, where)
    model = load_onnx(source, check=False)  # signature, external data (beside it, present), a readable protobuf
    if read_metadata(model, source) is not None:
        raise BadInput(f"{where} is already an edgekit file (it has edgekit metadata): nothing to import",
                       hint="use it as it is")
    precision = detect_precision(model)
    if precision != "fp32":
        raise BadInput(f"{where} is a {precision} file; edgekit imports float32 models and quantizes them itself",
                       hint="import the float32 original")
    stem = source.name[: -len(".onnx")] if source.name.endswith(".onnx") else source.stem
    final = resolve_output(o.output, default_output(stem))
    staged = stage_output(final)  # refuses the input (path or inode) and an unwritable folder, before any work
    try:
        return _import_staged(source, where, model, original, o, staged, on_stage or (lambda _s: None))
    except BaseException:
        staged.discard()
        raise


def _import_staged(source: Path, where: str, model, original: dict, o: ImportOptions, staged, on_stage) -> ImportResult:
    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def stage(name: str) -> None:
        on_stage(name)
        clock[0] = time.perf_counter()

    def done(name: str) -> None:
        times[name] = round(time.perf_counter() - clock[0], 3)

    stage("normalise")
    original_opset = opset_of(model)
    changes: list[str] = []
    if original["external_bytes"]:
        changes.append(f"external data loaded into the file ({human_bytes(original['external_bytes'])})")
    input_name = graph_inputs(model)[0].name
    shape, change = normalise.pin_input(model, where, o.input_shape)
    changes += [change] if change else []
    batch, channels, height, width = shape
    preprocessing, notes = _preprocessing(o.preprocessing, channels, height, width)  # before the slow steps
    changes += [c for c in [normalise.constants_to_initializers(model)] if c]
    structure_before = normalise.structure_counts(model)
    model, change = normalise.upgrade_opset(model, original_opset, where)
    changes += [change] if change else []
    model, change = normalise.fold_shapes(model, where)
    changes += [change] if change else []
    structure_after = normalise.structure_counts(model)
    done("normalise")

    stage("check")
    inputs, description = _check_inputs(preprocessing, o.images, o.seed, notes)
    run_batch = None if isinstance(batch, str) else batch
    reference = _run_all(source, inputs, run_batch, "the original")
    candidate = _run_all(model.SerializeToString(), inputs, run_batch, "the normalised graph")
    output_name = model.graph.output[0].name
    out = reference[0]
    task, detected = _task(o.task, out, where)
    tolerance = IMPORT_TOLERANCE if task == "classify" else Tolerance(atol=IMPORT_TOLERANCE.atol,
                                                                       rtol=IMPORT_TOLERANCE.rtol, same_top1=False)
    vs_original = _compare(reference, candidate, model, tolerance, where)
    done("check")

    stage("save")
    metadata = _metadata(source, original["producer"], model, original_opset, changes, shape, input_name,
                         output_name, task, out, preprocessing, vs_original, tolerance, description,
                         o.preprocessing is not None, o.untrained)
    write_metadata(model, metadata)
    staged.save(model)
    # The bytes that will ship: loaded as every command loads them (signature, schema, metadata against the
    # graph), then checked against the original once more, as written.
    written = load_onnx(staged.path, check=True)
    if read_metadata(written, staged.path) is None:
        raise InvariantBroken(f"the written file {shown_path(staged.path)} lost its metadata; nothing was written")
    _compare(reference, _run_all(staged.path, inputs, run_batch, "the written file"), model, tolerance, where)
    if isinstance(batch, str):
        _check_dynamic_batch(staged.path, inputs, reference[0], tolerance, where)
    done("save")
    path = staged.commit()
    return ImportResult(
        path=path, source=source, metadata=metadata, changes=changes, task=task, task_detected=detected,
        output_shape=[batch, *map(int, out.shape[1:])],
        structure_before=structure_before, structure_after=structure_after, vs_original=vs_original,
        check_inputs=description, file_bytes=artifact_bytes(path), stage_seconds=times, notes=notes,
    )


def _original_facts(source: Path, where: str) -> dict:
    """The original's producer and external data, read without its weights. External data files are read whole
    into the model, so their sizes are bounded here, before anything is read."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        proto = load_work_file(source, external_data=False)
    except Exception:  # not a readable ONNX file: load_onnx words the problem
        return {"producer": None, "external_bytes": 0}
    locations = {ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)}
    total = 0
    for location in locations:
        candidate = source.parent / location
        if candidate.is_file() and not os.path.isabs(location) and ".." not in Path(location).parts:
            total += candidate.stat().st_size
    if total > MAX_TENSOR_BYTES:
        raise BadInput(f"{where}: its external data is {human_bytes(total)}, over the {human_bytes(MAX_TENSOR_BYTES)} "
                       "edgekit imports", hint="edgekit handles edge-sized models")
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p) or None
    return {"producer": producer, "external_bytes": total}


def _preprocessing(given: Preprocessing | None, channels: int, height: int, width: int):
    notes: list[str] = []
    if given is None:
        size = height if height == width else (height, width)
        given = Preprocessing.for_input_size(size)
        if channels == 1:
            raise BadInput("the model takes 1 channel: pass --channels gray with its --mean and --std (one value each)")
        notes.append(f"no preprocessing given: assumed {given.describe()}; pass the model's own (--resize, --mean, "
                     "--std, --channels, or --preprocessing FILE.json) if it was trained otherwise")
    if given.chw != (channels, height, width):
        raise BadInput(f"the preprocessing makes {given.chw} (C, H, W) but the input is {(channels, height, width)}; "
                       "pass --crop HxW matching --input-shape, and --channels/--input-channels matching C")
    return given, notes


def _check_inputs(preprocessing: Preprocessing, images: Path | None, seed: int, notes: list[str]):
    """Photos through the preprocessing plus seeded random inputs (standard normal: the scale of normalised
    images)."""
    folder = Path(images) if images is not None else DEFAULT_CALIBRATION_DIR
    photos = load_image_folder(folder, preprocessing)
    notes += photos.notes
    random = seeded_random_inputs(RANDOM_CHECK_INPUTS, preprocessing.chw, seed)
    description = f"{len(photos.tensors)} images from {shown_path(folder)} + {RANDOM_CHECK_INPUTS} seeded random"
    return np.concatenate([photos.tensors, random]).astype(np.float32), description


def _run_all(model, inputs: np.ndarray, batch: int | None, what: str) -> list[np.ndarray]:
    """Every output of MODEL (a path or serialized bytes) on the CPU provider, basic optimisations only, so the
    comparison sees the graphs as written."""
    try:
        session = create_session(model, "cpu", optimization="basic")
        return run_session(session, inputs, batch)
    except BadInput:
        raise
    except Exception as exc:
        from edgekit.core.errors import one_line

        raise BadInput(f"ONNX Runtime cannot run {what} at this input shape: {one_line(exc, 300)}",
                       hint="check --input-shape") from None


def _task(asked: str | None, out: np.ndarray, where: str) -> tuple[str, bool]:
    """(N, K) or (N, K, 1, 1) -> classify; anything else (a map, a sequence) -> dense. --task wins, but classify
    needs a vector of class scores per sample."""
    vector = out.ndim == 2 or (out.ndim == 4 and out.shape[2:] == (1, 1))
    if asked is None:
        return ("classify" if vector else "dense"), True
    if asked == "classify" and not vector:
        raise BadInput(f"{where}: --task classify needs an (N, classes) output, but it is (N, {', '.join(map(str, out.shape[1:]))}); "
                       "use --task dense")
    return asked, False


def _compare(reference, candidate, model, tolerance, where: str) -> OutputMetrics:
    """Every output against the original's; returns the first output's metrics (the one edgekit judges)."""
    first = None
    for ref, cand, value in zip(reference, candidate, model.graph.output):
        metrics = compare_outputs(ref, cand, value.name, tolerance)
        if not metrics.passed:
            raise GateFailed(f"{where}: the normalised graph's output {value.name!r} differs from the original's in "
                             f"ONNX Runtime: {'; '.join(metrics.failures)}; nothing was written")
        first = metrics if first is None else first
    return first


def _check_dynamic_batch(path: Path, inputs: np.ndarray, reference: np.ndarray, tolerance, where: str) -> None:
    """A dynamic batch runs at 1 and at DYNAMIC_LARGE_BATCH with the same outputs."""
    session = create_session(path, "cpu")
    for batch in (1, DYNAMIC_LARGE_BATCH):
        got = run_session(session, inputs, batch)[0]
        metrics = compare_outputs(reference, got, "batch check", tolerance)
        if not metrics.passed:
            raise GateFailed(f"{where}: at batch {batch} the normalised file differs from the original: "
                             f"{'; '.join(metrics.failures)}; nothing was written")


def _metadata(source, producer, model, original_opset, changes, shape, input_name, output_name, task, out, preprocessing,
              vs_original, tolerance, description, preprocessing_given, untrained: bool = False) -> dict:
    batch, channels, height, width = shape
    sqnr = float(vs_original.sqnr_db)
    check = {"inputs": description, "max_abs": float(vs_original.max_abs), "mean_abs": float(vs_original.mean_abs),
             "atol": tolerance.atol, "rtol": tolerance.rtol, "bit_exact": float(vs_original.max_abs) == 0.0,
             "sqnr_db": sqnr if np.isfinite(sqnr) else None,  # +inf when bit-exact: strict JSON has no Infinity
             "top1_agreement": float(vs_original.top1_agreement) if task == "classify" else None}
    imported = {"file": source.name, "path": str(source.resolve()), "sha256": sha256_file(source),
                "opset": original_opset, "changes": list(changes),
                "check": {k: v for k, v in check.items() if v is not None},
                "preprocessing": "given" if preprocessing_given else "assumed"}
    if untrained:
        imported["weights"] = "untrained"
    if producer:
        imported["producer"] = producer
    metadata = {
        "schema": 1, "task": task, "input_shape": list(shape), "dynamic_batch": isinstance(batch, str),
        "input_name": input_name, "output_name": output_name, "opset": opset_of(model), "precision": "fp32",
        "versions": library_versions(), "preprocessing": preprocessing.to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "imported": imported,
    }
    if height == width:
        metadata["input_size"] = height
    if task == "classify" and out.ndim == 2:
        metadata["num_classes"] = int(out.shape[1])
    return metadata
