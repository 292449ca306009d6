"""Quantize's first steps on the fp32 file: what the file is (its task, its gates, its preprocessing) and the graph
ONNX Runtime's quantizer is given.

Files made elsewhere (torch.onnx, the dynamo exporter, onnxsim, Paddle2ONNX) reach quantize_static in shapes it
mishandles; each is normalised here, said in the summary, and the normalised graph is checked against the
original in ONNX Runtime before anything is calibrated:
- weights stored as Constant nodes (every Paddle2ONNX file): quantize_static only quantizes initializers, so they
  become initializers (the same tensors, the same names);
- a default-domain opset below 13: QDQ with per-channel weights needs QuantizeLinear's `axis` (opset 13), so the
  graph is upgraded with onnx.version_converter (ORT's own pre-processing only lifts opsets up to 10);
- ORT's quant_pre_process is given a file path, never the in-memory model: handed a ModelProto, it saves it into
  its temp folder with shape initializers (a Reshape's shape, a Resize's scales, ReduceMean's axes, as onnxsim and
  the dynamo exporter write them) pointing at an external file it never wrote ("... foo.bin, but it is not regular
  file"). The file written here holds every tensor inline (external data was loaded when the file was opened).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import BadInput, CheckFailed, one_line
from edgekit.data.preprocessing import Preprocessing
from edgekit.judge.compare import REWRITE_TOLERANCE, Tolerance, compare_outputs, gates_for, weights_of_file

MIN_QDQ_OPSET = 13  # QuantizeLinear/DequantizeLinear `axis` (per-channel weights) arrives in opset 13
_INLINE_LIMIT = 1_800_000_000  # protobuf's 2 GB: larger graphs are written with external data
IMPORT_HINT = "edgekit import {file} normalises a file made elsewhere (opset, Constant weights, shapes)"


def task_of(model, metadata: dict | None) -> str:
    """"classify" or "dense": the metadata's `task`, else the first output's shape (N, K) is a classifier and a map
    with spatial dimensions (N, C, H, W) a dense output (detection, segmentation)."""
    if metadata and metadata.get("task"):
        return metadata["task"]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    spatial = [d.dim_value if d.HasField("dim_value") else None for d in dims[2:]]
    return "dense" if any(d != 1 for d in spatial) else "classify"  # (N, K, 1, 1) is still a classifier's


def weights_reason(metadata: dict | None) -> str:
    """Why the weights count as trained or not, for the gates' line (judge.compare.weights_of_file)."""
    return weights_of_file(metadata)[1]


def int8_gates(metadata: dict | None, task: str, min_top1_agreement, min_sqnr) -> tuple[Tolerance, str]:
    """The gates the int8 file is held to, and the line that says which applied and why: trained-weight gates
    unless the metadata records seeded-random weights (a file made elsewhere, or imported, has unknown weights);
    a dense output is gated on SQNR only."""
    trained, why = weights_of_file(metadata)
    return gates_for("int8", trained, min_top1_agreement=min_top1_agreement, min_sqnr=min_sqnr, task=task,
                     why=why)


def resolve_preprocessing(source, calibration: Path | None, dataset: Path | None) -> tuple[Preprocessing, str | None]:
    """The preprocessing the int8 file records and image calibration uses, with a note when it is assumed.

    A file with edgekit metadata says its own. A file without: ImageNet's at its input size, said in the summary
    (`edgekit import` declares the file's own). A dynamic height/width without metadata takes the size of the
    calibration tensors (.npz/.npy), which are already preprocessed; with images to decode it is one line."""
    if source.metadata and "preprocessing" in source.metadata:
        return source.preprocessing(), None
    channels, height, width = source.spec.chw
    name = source.path.name
    if channels != 3:
        raise BadInput(f"{name} has no edgekit metadata and its input has {channels} channel(s); quantize cannot tell "
                       "how images become its input", hint=IMPORT_HINT.format(file=name) + " and records its preprocessing")
    origin = "its input size"
    tensors = calibration is not None and (calibration.suffix in (".npz", ".npy") or calibration.is_file())
    if height is None or width is None:
        if not tensors or dataset is not None:
            raise BadInput(
                f"{name} has a dynamic height/width (input {_shape(source)}) and no edgekit metadata: quantize cannot "
                "tell the size images are resized to",
                hint=f"pin it: edgekit import {name} --input-shape 1,3,H,W (or calibrate with --calibration "
                     "TENSORS.npz of preprocessed (N, 3, H, W) tensors)")
        from edgekit.data.tensors import load_tensor_file

        shape = load_tensor_file(calibration, None).shape  # read without pickle, its size bounded first
        if len(shape) != 4 or shape[1] != 3:
            raise BadInput(f"{calibration.name}: tensors have shape {tuple(shape)}, {name} takes (N, 3, H, W)")
        height, width = int(shape[2]), int(shape[3])
        origin = "the calibration tensors' size (the input's height/width are dynamic)"
    try:
        preprocessing = Preprocessing.for_input_size(height if height == width else (height, width))
    except (BadInput, TypeError, ValueError):
        raise BadInput(f"{name} has no edgekit metadata and a {height}x{width} input; quantize cannot record a "
                       "preprocessing for it", hint=IMPORT_HINT.format(file=name) + " and records its preprocessing") from None
    return preprocessing, (f"{name} has no edgekit metadata: ImageNet preprocessing at {origin} ({height}x{width}) "
                           f"is assumed and recorded; `edgekit import {name}` declares the file's own")


def _shape(source) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in (source.spec.batch, *source.spec.chw)) + ")"


def constants_to_initializers(model) -> int:
    """Move the main graph's Constant nodes holding a tensor into initializers of the same name; returns how many."""
    keep, moved = [], []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and not node.domain and value is not None and len(node.attribute) == 1:
            tensor = type(value)()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            moved.append(tensor)
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.initializer.extend(moved)
    return len(moved)


def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@dataclass
class Prepared:
    """The graph handed to ORT's quantizer: `path` (ORT-pre-processed), and what was changed to get there."""

    path: Path
    changes: list[str]


def prepare_graph(model, model_path: Path, workdir: Path, probe, batch: int | None, output_name: str) -> Prepared:
    """Normalise the loaded fp32 MODEL (see the module's docstring), write it into WORKDIR, run ORT's quantization
    pre-processing on that file, and check the result against MODEL_PATH on the PROBE inputs when anything was
    changed. MODEL itself is left as it is."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = model_path.name
    changes: list[str] = []
    work = model
    constants = sum(1 for n in model.graph.node if n.op_type == "Constant")
    if constants:
        work = onnx.ModelProto()
        work.CopyFrom(model)
        moved = constants_to_initializers(work)
        if moved:
            changes.append(f"{moved} Constant node(s) moved into initializers (quantize_static quantizes initializers only)")
    opset = default_opset(work)
    if opset is not None and opset < MIN_QDQ_OPSET:
        from onnx import version_converter

        try:
            work = version_converter.convert_version(work, MIN_QDQ_OPSET)
        except Exception as exc:
            raise BadInput(f"{name} is opset {opset}; QDQ per-channel quantization needs opset {MIN_QDQ_OPSET} and "
                           f"onnx's version converter failed on it: {one_line(exc, 160)}",
                           hint=IMPORT_HINT.format(file=name)) from None
        changes.append(f"opset {opset} -> {MIN_QDQ_OPSET} (onnx.version_converter; QDQ per-channel needs {MIN_QDQ_OPSET})")
    prepared, pre = workdir / "prepared.onnx", workdir / "preprocessed.onnx"
    big = work.ByteSize() > _INLINE_LIMIT
    onnx.save_model(work, str(prepared), save_as_external_data=big, location="prepared.onnx.data")
    try:
        # a path, never the ModelProto: see the module's docstring
        quant_pre_process(str(prepared), str(pre), skip_symbolic_shape=True, save_as_external_data=big,
                          all_tensors_to_one_file=True)
    except Exception as exc:
        raise CheckFailed(f"ONNX Runtime's quantization pre-processing failed on {name}: {one_line(exc, 200)}",
                          hint=IMPORT_HINT.format(file=name)) from exc
    if changes:
        from edgekit.runtimes.runners import run_onnx

        drift = compare_outputs(run_onnx(model_path, probe, batch), run_onnx(pre, probe, batch), output_name,
                                REWRITE_TOLERANCE)
        if not drift.passed:
            raise CheckFailed(f"preparing {name} for quantization ({'; '.join(changes)}) changed its outputs: "
                              f"{'; '.join(drift.failures)}", hint=IMPORT_HINT.format(file=name))
        changes[-1] += f" [checked: same outputs as {name} in ONNX Runtime, max abs {drift.max_abs:.1e}]"
    return Prepared(pre, changes)
