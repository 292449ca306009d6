"""Per-layer int8 error: where along the network a QDQ file departs from the fp32 file it came from.

Built on ONNX Runtime's `onnxruntime.quantization.qdq_loss_debug`: its augmentation
(`modify_model_output_intermediate_tensors`), its collection (`collect_activations`), its matching
(`create_activation_matching`, `create_weight_matching`) and its error loops
(`compute_activation_error`, `compute_weight_error`, given an error function that returns energies so
that several collection rounds add up). Three runs on the same inputs:

- the fp32 file, every float tensor saved (ORT graph optimisations off, the library's default);
- the QDQ file the same way: every op runs in float on dequantized values. This gives qdq_loss_debug's
  two numbers: `qdq_err` (the tensor before vs after its own QuantizeLinear/DequantizeLinear: the
  quantization noise added at that point only) and `xmodel_err` (fp32 model vs QDQ model at that
  tensor: everything upstream included), here `qdq_sqnr_db` and `simulated_sqnr_db`;
- the QDQ file as it is deployed: ORT optimisations on and `session_config` applied, only the
  DequantizeLinear outputs saved. Saving every tensor (the library's default) gives each Conv a
  second consumer and stops ORT from fusing DQ -> Conv -> Q into QLinearConv, so that run never
  touches the int8 kernels and options such as `session.x64quantprecision` change nothing. Saving only
  the DQ outputs keeps the fusions (ORT duplicates a shared DQ), so the saved values are what the CPU's
  int8 kernels really produced, dequantized. fp32 vs these is `sqnr_db`, the number that matters;
  its difference from `simulated_sqnr_db` is the CPU kernel's own loss (AVX2 without VNNI saturating
  8-bit weights), kept apart from the file's error as docs/design.md asks.

SQNR is 10 log10(sum x^2 / sum (x - y)^2) over every element of every input, x the reference.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core.errors import BadInput, CheckFailed, EdgekitError, one_line
from edgekit.layer_error.report import (
    ActivationError,
    LayerReport,
    WeightError,
    _db,
    _energies,
    _noise_ratio,
    _sort_db,
    sqnr_db,
)
from edgekit.layer_error.graphs import _Graphs
from edgekit.runtimes.runners import padded_batches

DYNAMIC_BATCH = 8  # samples per run when the batch axis is dynamic
DEFAULT_MAX_BYTES = 1 << 30  # saved tensors held at once (the three runs of one round together)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


# --- inputs and files ---------------------------------------------------------------------------


def _model_input(model, path: Path):
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInput(f"{path} has {len(inputs)} inputs; layer errors handle single-input classifiers")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _is_qdq(model) -> bool:
    ops = {n.op_type for n in model.graph.node}
    return "DequantizeLinear" in ops and "QuantizeLinear" in ops


def _check_pair(fp32_path: Path, int8_path: Path, fp32_model, int8_model) -> None:
    from edgekit.onnxfile.artifact import read_metadata, sha256_file

    if fp32_path.resolve() == int8_path.resolve():
        raise BadInput(f"the fp32 and int8 files are the same file ({fp32_path})")
    fp32_ops = {n.op_type for n in fp32_model.graph.node}
    quant_ops = sorted(op for op in fp32_ops if op in QDQ_OPS or op.startswith("QLinear") or op.endswith("Integer"))
    if quant_ops:
        raise BadInput(f"{fp32_path} is not an fp32 model: it has {', '.join(quant_ops)} nodes",
                       hint="give the fp32 file the int8 one was quantized from")
    if not _is_qdq(int8_model):
        qlinear = any(n.op_type.startswith("QLinear") for n in int8_model.graph.node)
        what = "QOperator-format (QLinear*) model" if qlinear else "model without QuantizeLinear/DequantizeLinear nodes"
        raise BadInput(f"{int8_path} is a {what}; layer errors need a QDQ int8 file",
                       hint="quantize with edgekit (QDQ format)")
    fp32_input, int8_input = _model_input(fp32_model, fp32_path), _model_input(int8_model, int8_path)
    if fp32_input != int8_input:
        raise BadInput(f"{fp32_path.name} takes {fp32_input[0]} {fp32_input[1]} but {int8_path.name} takes "
                       f"{int8_input[0]} {int8_input[1]}: not an fp32/int8 pair")
    fp32_precision = (read_metadata(fp32_model) or {}).get("precision", "fp32")
    if fp32_precision != "fp32":
        raise BadInput(f"{fp32_path} is an {fp32_precision} file, not fp32",
                       hint="give the fp32 file the int8 one was quantized from")
    for path, model in ((fp32_path, fp32_model), (int8_path, int8_model)):
        initializers = {t.name for t in model.graph.initializer}
        if any(i.type.tensor_type.elem_type != 1 for i in model.graph.input if i.name not in initializers):
            raise BadInput(f"{path} does not take float32 inputs; layer errors compare fp32-input models")
    parent = (read_metadata(int8_model) or {}).get("parent") or {}
    if parent.get("sha256") and parent["sha256"] != sha256_file(fp32_path):
        raise BadInput(f"{int8_path.name} was quantized from another file than {fp32_path} "
                       f"(its parent is {parent.get('file', '?')}, sha256 {parent['sha256'][:12]}...)",
                       hint="give the fp32 file it was quantized from")


def _check_inputs(inputs, dims: list[int | None], path: Path) -> np.ndarray:
    if not isinstance(inputs, np.ndarray):
        raise BadInput(f"inputs must be a numpy array (N, C, H, W), got {type(inputs).__name__}")
    if not np.issubdtype(inputs.dtype, np.floating):
        raise BadInput(f"inputs must be floating point (preprocessed), got dtype {inputs.dtype}")
    if inputs.ndim != len(dims) or inputs.shape[0] == 0:
        raise BadInput(f"inputs have shape {tuple(inputs.shape)}; {path.name} takes {len(dims)}-D inputs "
                       f"({', '.join(str(d or 'N') for d in dims)}) and at least one sample")
    for axis, (have, want) in enumerate(zip(inputs.shape[1:], dims[1:]), start=1):
        if want is not None and have != want:
            raise BadInput(f"inputs have shape {tuple(inputs.shape)}; {path.name} expects "
                           f"(N, {', '.join(str(d or '?') for d in dims[1:])}) (axis {axis} differs)")
    if not np.isfinite(inputs).all():
        raise BadInput("inputs hold NaN or Inf values")
    return np.ascontiguousarray(inputs, dtype=np.float32)


def _save_copy(model, path: Path) -> bool:
    """Save a loaded model where qdq_loss_debug may write beside it; True when it needed external data."""
    import onnx

    big = sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000
    onnx.save_model(model, str(path), save_as_external_data=big, location=path.name + ".data" if big else None)
    return big


def _real_rows(arrays: list[np.ndarray], reals: list[int], batch: int) -> list[np.ndarray]:
    """Drop the padded samples from flattened (batch-major) saved tensors."""
    out = []
    for array, real in zip(arrays, reals):
        if real < batch and array.size % batch == 0:
            array = array[: array.size // batch * real]
        out.append(array)
    return out


@contextlib.contextmanager
def _quiet_logging():
    """create_weight_matching logs (root logger) every initializer it cannot pair; we report them instead."""
    import logging

    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


# --- the measurement ----------------------------------------------------------------------------


def layer_errors(
    fp32_path: Path,
    int8_path: Path,
    inputs: np.ndarray,
    *,
    session_config: dict[str, str] | None = None,
    device: str | None = None,
    workdir: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LayerReport:
    """SQNR of every quantized activation and weight of `int8_path` (QDQ) against `fp32_path`.

    `inputs`: preprocessed float (N, C, H, W). A static batch axis B is fed exactly B samples per
    run, the last chunk padded with copies of its last sample and the padded rows dropped from
    every saved tensor before comparing; a dynamic one runs DYNAMIC_BATCH samples at a time.
    `session_config` (ORT session config entries, e.g. {"session.x64quantprecision": "1"}) goes to
    the int8 runs; `device` (runtimes.devices) runs the deployed int8 file on that CPU's kernels, emulated where it
    is not this machine. Every tensor of every run is kept in memory by collect_activations, so the inputs
    are processed in rounds holding at most about `max_bytes` of saved tensors. Every file (copies
    of the models, augmented models, ORT's shape-inference files) is written into a temporary
    folder (inside `workdir` when given) that is deleted before returning.
    """
    from edgekit.onnxfile.artifact import load_onnx

    started = time.perf_counter()
    stage = on_stage or (lambda _s: None)
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    session_config = {str(k): str(v) for k, v in (session_config or {}).items()}
    fp32_model = load_onnx(fp32_path)
    int8_model = load_onnx(int8_path)
    _check_pair(fp32_path, int8_path, fp32_model, int8_model)
    input_name, dims = _model_input(fp32_model, fp32_path)
    inputs = _check_inputs(inputs, dims, fp32_path)
    batch = dims[0] or min(len(inputs), DYNAMIC_BATCH)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    graphs = _Graphs(fp32_model, int8_model)

    with tempfile.TemporaryDirectory(prefix="edgekit-layers-", dir=str(workdir) if workdir else None) as tmp:
        tmp = Path(tmp)
        stage("augment")
        fp32_aug, sim_aug, dep_aug = _augment(fp32_model, int8_model, tmp)
        stage("activations")
        energies, runs = _collect(
            fp32_aug, sim_aug, dep_aug, input_name, list(padded_batches(inputs, batch)), batch, graphs, session_config,
            max_bytes, stage, device,
        )
        stage("weights")
        with _quiet_logging():
            from onnxruntime.quantization.qdq_loss_debug import compute_weight_error, create_weight_matching

            weight_db = compute_weight_error(create_weight_matching(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx")),
                                             err_func=sqnr_db)

    stage("rank")
    activations, unmatched = _activation_records(energies, graphs)
    simulated_only = sorted(n for n, kinds in energies.items() if "simulated" in kinds and "deployed" not in kinds)
    if not activations:
        raise CheckFailed(f"no quantized activation of {int8_path.name} has a counterpart in {fp32_path.name}: "
                          "the files are not an fp32/int8 pair")
    weights, unmatched_weights = _weight_records(weight_db, graphs, int8_model)
    notes = []
    if simulated_only:
        notes.append(f"{len(simulated_only)} activation(s) had no DequantizeLinear output in the deployed run; their "
                     f"sqnr_db is the QDQ simulation's: {', '.join(simulated_only[:5])}")
    if device not in (None, "host"):
        notes.append(f"the deployed int8 run ran on {device}'s ONNX Runtime kernels (emulated where it is not this "
                     "machine); the float and simulated runs on this machine")
    if session_config:
        notes.append("session config applied to the int8 runs: "
                     + ", ".join(f"{k}={v}" for k, v in sorted(session_config.items())))
    return LayerReport(
        fp32_path=fp32_path,
        int8_path=int8_path,
        samples=len(inputs),
        batch=batch,
        runs=runs,
        session_config=session_config,
        seconds=time.perf_counter() - started,
        activations=activations,
        weights=weights,
        unmatched_activations=unmatched,
        unmatched_weights=unmatched_weights,
        notes=notes,
    )


def _augment(fp32_model, int8_model, tmp: Path) -> tuple[Path, Path, Path]:
    """Copies of both models in `tmp` and qdq_loss_debug's augmented models beside them."""
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    fp32_copy, int8_copy = tmp / "fp32.onnx", tmp / "int8.onnx"
    external = _save_copy(fp32_model, fp32_copy) | _save_copy(int8_model, int8_copy)
    paths = (tmp / "fp32.saving-all.onnx", tmp / "int8.saving-all.onnx", tmp / "int8.saving-dq.onnx")
    try:
        modify_model_output_intermediate_tensors(fp32_copy, paths[0], save_as_external_data=external)
        modify_model_output_intermediate_tensors(int8_copy, paths[1], save_as_external_data=external)
        # only DequantizeLinear outputs: the DQ -> op -> Q groups stay fusable into int8 kernels
        modify_model_output_intermediate_tensors(int8_copy, paths[2], op_types_for_saving=["DequantizeLinear"],
                                                 save_as_external_data=external)
    except Exception as exc:
        raise CheckFailed(f"cannot add the intermediate outputs to the models: {one_line(exc, 200)}") from exc
    return paths


def _nbytes(tensors: dict[str, list[np.ndarray]]) -> int:
    return sum(a.nbytes for arrays in tensors.values() for a in arrays)


def _collect(fp32_aug, sim_aug, dep_aug, input_name, chunks, batch, graphs: _Graphs, session_config, max_bytes, stage,
             device: str | None = None):
    """Run the three augmented models over the chunks in rounds; accumulate energies per activation.

    Returns ({activation: {"qdq": (s, n), "simulated": (s, n), "deployed": (s, n)}}, runs per model).
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        _TENSOR_SAVE_POSTFIX,
        compute_activation_error,
        create_activation_matching,
    )

    from edgekit.runtimes.runners import every_output

    # (optimisations, session config, device) of each run: the float graph and the QDQ simulation as written, on this
    # machine; the deployed int8 run with ORT's optimisations on, on the device's own kernels where one is named
    fp32_options = ("none", {}, None)
    sim_options = ("none", session_config, None)
    dep_options = ("all", session_config, device)
    totals: dict[str, dict[str, list[float]]] = {}

    def add(name: str, kind: str, pair: tuple[float, float]) -> None:
        slot = totals.setdefault(name, {}).setdefault(kind, [0.0, 0.0])
        slot[0] += pair[0]
        slot[1] += pair[1]

    def run(path, options, reader) -> dict[str, list[np.ndarray]]:
        optimization, config, on_device = options
        try:
            outputs = every_output(path, reader, optimization=optimization, session_config=config, device=on_device)
        except EdgekitError:
            raise
        except Exception as exc:
            raise CheckFailed(f"ONNX Runtime failed on {Path(path).name}: {one_line(exc, 200)}") from exc
        return {name[: -len(_TENSOR_SAVE_POSTFIX)]: values for name, values in outputs.items()
                if name.endswith(_TENSOR_SAVE_POSTFIX)}

    done = 0
    per_round = 1  # the first round measures how many bytes one run saves
    while done < len(chunks):
        todo = chunks[done : done + per_round]
        reals = [real for _chunk, real in todo]
        reader = [{input_name: chunk} for chunk, _real in todo]
        stage(f"activations {done + len(todo)}/{len(chunks)}")
        fp32 = {k: _real_rows(v, reals, batch) for k, v in run(fp32_aug, fp32_options, reader).items()}
        sim = {k: _real_rows(v, reals, batch) for k, v in run(sim_aug, sim_options, reader).items()}
        dep = {k: _real_rows(v, reals, batch) for k, v in run(dep_aug, dep_options, reader).items()}
        if done == 0:
            per_run = max(1, _nbytes(fp32) + _nbytes(sim) + _nbytes(dep))
            per_round = max(1, int(max_bytes // per_run))
        matches = create_activation_matching(sim, fp32)
        for name, (low, high) in graphs.folded.items():
            if name in matches:  # qdq_err must not count the folded Relu/Clip as quantization noise
                matches[name]["pre_qdq"] = [np.clip(a, low, high) for a in matches[name]["pre_qdq"]]
        errors = compute_activation_error({k: v for k, v in matches.items() if "float" in v}, err_func=_energies)
        for name, err in errors.items():
            add(name, "qdq", err["qdq_err"])
            add(name, "simulated", err["xmodel_err"])
            deployed = next((dep[d] for d in graphs.dequantized.get(name, []) if d in dep), None)
            if deployed is not None:
                add(name, "deployed", _energies(fp32[name], deployed))
        for name, match in matches.items():
            if "float" not in match:
                totals.setdefault(name, {})  # quantized, but not in the fp32 file
        done += len(todo)
        del fp32, sim, dep, matches
    return totals, len(chunks)


def _activation_records(totals, graphs: _Graphs) -> tuple[list[ActivationError], list[str]]:
    unmatched = sorted(name for name, kinds in totals.items() if "simulated" not in kinds)
    db = {name: {kind: _db(*pair) for kind, pair in kinds.items()}
          for name, kinds in totals.items() if "simulated" in kinds}
    matched = set(db)
    deployed = {name: kinds.get("deployed", kinds["simulated"]) for name, kinds in db.items()}
    records = []
    for name, kinds in db.items():
        node = graphs.compute_node(name)
        fp32_node, position = graphs.fp32_name(node, name)
        if node is None:  # the graph input: nothing computes it
            fp32_node, position = None, -1
        upstream = graphs.quantized_inputs(node, matched) if node is not None else []
        input_db = min((deployed[u] for u in upstream), default=math.inf,
                       key=lambda v: v if not math.isnan(v) else math.inf)
        out_noise, in_noise = _noise_ratio(deployed[name]), _noise_ratio(input_db)
        added = out_noise - in_noise if not (math.isnan(out_noise) or math.isnan(in_noise)) else math.nan
        if math.isinf(out_noise) and math.isinf(in_noise):
            added = 0.0
        records.append(ActivationError(
            tensor=name,
            node=node.name if node is not None else None,
            op_type=node.op_type if node is not None else "input",
            fp32_node=fp32_node,
            position=position,
            sqnr_db=deployed[name],
            simulated_sqnr_db=kinds["simulated"],
            qdq_sqnr_db=kinds.get("qdq", math.nan),
            input_sqnr_db=input_db,
            added_noise=added,
            inputs=upstream,
        ))
    records.sort(key=lambda a: (_sort_db(a.sqnr_db), a.position, a.tensor))
    return records, unmatched


def _weight_records(weight_db: dict[str, float], graphs: _Graphs, int8_model) -> tuple[list[WeightError], list[str]]:
    from onnxruntime.quantization.quant_utils import TENSOR_NAME_QUANT_SUFFIX

    records, unmatched = [], []
    for dq in int8_model.graph.node:
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in graphs.initializers:
            continue
        if not dq.input[0].endswith(TENSOR_NAME_QUANT_SUFFIX):
            unmatched.append(dq.input[0])
            continue
        name = dq.input[0][: -len(TENSOR_NAME_QUANT_SUFFIX)]
        if name not in weight_db:
            unmatched.append(name)
            continue
        for consumer in graphs.consumers.get(dq.output[0], []) or [None]:
            role = "weight"
            if consumer is not None:
                index = list(consumer.input).index(dq.output[0])
                role = f"input {index}"
                if consumer.op_type in ("Conv", "ConvTranspose", "Gemm") and index in (1, 2):
                    role = "weight" if index == 1 else "bias"
            fp32_node, position = graphs.fp32_name(consumer, "") if consumer is not None else (None, -1)
            records.append(WeightError(
                name=name,
                node=consumer.name if consumer is not None else None,
                op_type=consumer.op_type if consumer is not None else "",
                role=role,
                position=position,
                sqnr_db=float(weight_db[name]),
            ))
    records.sort(key=lambda w: (_sort_db(w.sqnr_db), w.position, w.name))
    return records, sorted(set(unmatched))
