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
  8-bit weights), kept apart from the file's error as design.md asks.

SQNR is 10 log10(sum x^2 / sum (x - y)^2) over every element of every input, x the reference.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import BadInput, CheckFailed, one_line
from edgekit.runners import padded_batches
from edgekit.serialize import json_safe

DYNAMIC_BATCH = 8  # samples per run when the batch axis is dynamic
DEFAULT_MAX_BYTES = 1 << 30  # saved tensors held at once (the three runs of one round together)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
PLOT_LABELS = 3


@dataclass
class ActivationError:
    """One quantized activation (a node output with a QuantizeLinear/DequantizeLinear pair)."""

    tensor: str
    node: str | None  # the node computing it in the int8 graph (the Conv when a Relu was folded into it)
    op_type: str  # "input" for the graph input
    fp32_node: str | None  # the fp32-graph node name to pass to nodes_to_exclude (None: the graph input)
    position: int  # topological index of that node in the fp32 graph (-1: the graph input)
    sqnr_db: float  # fp32 vs int8 as ORT's CPU kernels computed it (session_config applied)
    simulated_sqnr_db: float  # fp32 vs the QDQ graph evaluated in float (qdq_loss_debug's xmodel_err)
    qdq_sqnr_db: float  # this tensor before vs after its own Q/DQ (qdq_loss_debug's qdq_err)
    input_sqnr_db: float  # sqnr_db of the noisiest quantized activation feeding the node (inf: clean inputs)
    added_noise: float  # noise-to-signal power the node adds: 10^(-sqnr/10) - 10^(-input_sqnr/10)
    inputs: list[str] = field(default_factory=list)  # the quantized activations it reads

    @property
    def drop_db(self) -> float:
        """SQNR lost across this node (input_sqnr_db - sqnr_db)."""
        return self.input_sqnr_db - self.sqnr_db


@dataclass
class WeightError:
    """One quantized initializer: float value vs its dequantized int8/int32 value."""

    name: str
    node: str | None  # the node it feeds (int8 graph)
    op_type: str
    role: str  # "weight", "bias" or "input <i>"
    position: int  # topological index of that node in the fp32 graph (-1: not there)
    sqnr_db: float


@dataclass
class LayerReport:
    """Per-layer error of an int8 QDQ file against its fp32 parent; lists are worst (lowest SQNR) first."""

    fp32_path: Path
    int8_path: Path
    samples: int
    batch: int  # samples per ORT run
    runs: int  # ORT runs per model
    session_config: dict[str, str]
    seconds: float
    activations: list[ActivationError]
    weights: list[WeightError]
    unmatched_activations: list[str] = field(default_factory=list)  # quantized in the int8 file, not in the fp32 one
    unmatched_weights: list[str] = field(default_factory=list)  # quantized initializers without an fp32 counterpart
    notes: list[str] = field(default_factory=list)

    def worst(self, n: int = 10) -> list[ActivationError]:
        """The `n` activations with the lowest SQNR (fp32 vs int8 as the CPU computed it)."""
        return self.activations[: max(n, 0)]

    def ranked(self) -> list[ActivationError]:
        """Activations produced by a node, most added noise first (see `sensitive_nodes`)."""
        candidates = [a for a in self.activations if a.fp32_node is not None]
        return sorted(candidates, key=lambda a: (-_finite_or(a.added_noise, 0.0), _finite_or(a.sqnr_db, math.inf)))

    def sensitive_nodes(self, n: int = 5) -> list[str]:
        """fp32-graph node names, most sensitive first, for quantize_static's `nodes_to_exclude`.

        Ranked by the noise a node adds, not by the SQNR at its output. Error accumulates along
        depth, so the lowest absolute SQNRs sit near the logits whichever layer caused them; what
        a node is responsible for is the difference between the noise at its output and the noise
        already on its noisiest quantized input. The difference is taken in linear noise-to-signal
        power (10^(-SQNR/10)), not in dB: to first order the relative noise at the logits is the
        sum of what each node adds, carried forward like the signal, so this is the part of the
        final error that keeping the node in fp32 can remove. A dB drop would rank a layer going
        from 45 to 35 dB (adds 3e-4) above one going from 20 to 18 dB (adds 6e-3).

        A node's added noise covers its weights' quantization, its arithmetic in int8 on this
        CPU, and the quantization of its output. Limits, measured on textbook_resnet18:
        (1) with QDQ a tensor stays quantized while its producer or any consumer is quantized. A
        tensor whose per-tensor range is set by one outlier channel loses its other channels, yet
        reads well in SQNR (the outlier carries the energy); the loss shows at its consumer, which
        ranks first, and is removed only by excluding producer and consumer together (each alone:
        no gain). `ActivationError.inputs` names the tensors to widen the exclusion to.
        (2) ORT's WeightBiasQuantization optimizer re-quantizes the float weights of an excluded
        Conv/Gemm that sits between a DequantizeLinear and a QuantizeLinear when the session
        starts, so the node is not in fp32 at run time unless the session has
        {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}; measure with the
        session config the deployment uses (`session_config`).
        (3) It is a first-order estimate: re-measure after each exclusion, as a fallback loop does.
        """
        names: list[str] = []
        for act in self.ranked():
            if act.fp32_node not in names:
                names.append(act.fp32_node)
            if len(names) >= n:
                break
        return names

    def to_dict(self) -> dict:
        """JSON-safe (no NaN/Inf floats: those are written as the strings "nan", "inf", "-inf")."""
        ranked = self.ranked()
        data = {
            "fp32_path": str(self.fp32_path),
            "int8_path": str(self.int8_path),
            "samples": self.samples,
            "batch": self.batch,
            "runs": self.runs,
            "session_config": dict(self.session_config),
            "seconds": self.seconds,
            "activations": [{**asdict(a), "drop_db": a.drop_db} for a in self.activations],
            "weights": [asdict(w) for w in self.weights],
            "sensitive_nodes": self.sensitive_nodes(len(ranked)),
            "unmatched_activations": list(self.unmatched_activations),
            "unmatched_weights": list(self.unmatched_weights),
            "notes": list(self.notes),
        }
        return json_safe(data)


def _finite_or(value: float, default: float) -> float:
    return value if value is not None and math.isfinite(value) else default


# --- error arithmetic -------------------------------------------------------------------------


def _energies(reference, candidate) -> tuple[float, float]:
    """(signal energy, noise energy) over a list of arrays (or one array).

    float32 tensors are compared in float32 (BLAS dot products: the rounding is ~1e-6 relative, far
    below what a dB figure shows); anything else, or a sum that overflows float32, in float64.
    """
    refs = [reference] if isinstance(reference, np.ndarray) else list(reference)
    cands = [candidate] if isinstance(candidate, np.ndarray) else list(candidate)
    if len(refs) != len(cands):
        raise CheckFailed(f"cannot compare {len(refs)} reference tensors with {len(cands)} int8 ones")
    signal = noise = 0.0
    for r, c in zip(refs, cands):
        r, c = np.asarray(r).ravel(), np.asarray(c).ravel()
        if r.shape != c.shape:
            raise CheckFailed(f"a tensor has {r.size} elements in the fp32 run and {c.size} in the int8 run")
        pair = None
        if r.dtype == np.float32 and c.dtype == np.float32:
            d = r - c
            pair = float(np.dot(r, r)), float(np.dot(d, d))
        if pair is None or not all(math.isfinite(v) for v in pair):
            r, c = r.astype(np.float64), c.astype(np.float64)
            d = r - c
            pair = float(np.dot(r, r)), float(np.dot(d, d))
        signal += pair[0]
        noise += pair[1]
    return signal, noise


def _db(signal: float, noise: float) -> float:
    if not (math.isfinite(signal) and math.isfinite(noise)):
        return math.nan
    if noise == 0.0:
        return math.inf if signal > 0 else math.nan
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def sqnr_db(reference, candidate) -> float:
    """SQNR in dB of `candidate` against `reference` (arrays or lists of arrays); inf when identical."""
    return _db(*_energies(reference, candidate))


def _noise_ratio(db: float) -> float:
    """Noise-to-signal power for an SQNR in dB (0 for inf, inf for -inf, nan stays nan)."""
    if math.isnan(db):
        return math.nan
    if db == math.inf:
        return 0.0
    if db == -math.inf:
        return math.inf
    return 10.0 ** (-db / 10.0)


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
    from edgekit.artifact import read_metadata, sha256_file

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


# --- graph structure ----------------------------------------------------------------------------


class _Graphs:
    """What the int8 (QDQ) graph and the fp32 graph say about tensors and nodes."""

    def __init__(self, fp32_model, int8_model):
        from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

        self.initializers = {t.name for t in int8_model.graph.initializer}
        self.graph_inputs = {i.name for i in int8_model.graph.input}
        self.producer = {o: n for n in int8_model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for node in int8_model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.fp32_index = {n.name: i for i, n in enumerate(fp32_model.graph.node) if n.name}
        self.fp32_producer = {o: (i, n) for i, n in enumerate(fp32_model.graph.node) for o in n.output}
        # activation name (qdq_loss_debug's naming) -> the tensor its QuantizeLinear reads, and the
        # DequantizeLinear output(s) carrying it
        self.pre: dict[str, str] = {}
        self.dequantized: dict[str, list[str]] = {}
        self.canonical: dict[str, str] = {}  # DQ output -> activation name
        for node in int8_model.graph.node:
            if node.op_type != "QuantizeLinear":
                continue
            name = node.input[0]
            if name.endswith(QUANT_INPUT_SUFFIX):
                name = name[: -len(QUANT_INPUT_SUFFIX)]
            self.pre.setdefault(name, node.input[0])
            for dq in self.consumers.get(node.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    self.dequantized.setdefault(name, []).append(dq.output[0])
                    self.canonical[dq.output[0]] = name
        # activations whose fp32 Relu/Clip the quantizer folded into the Q range: the producer writes the
        # value before the activation function, and the QuantizeLinear clamp applies it
        self.folded: dict[str, tuple[float, float]] = {}
        fp32_inits = {t.name: t for t in fp32_model.graph.initializer}
        for name in self.pre:
            fp32_node = self.fp32_producer.get(name, (None, None))[1]
            node = self.compute_node(name)
            if fp32_node is None or node is None or node.op_type == fp32_node.op_type:
                continue
            bounds = _activation_bounds(fp32_node, fp32_inits)
            if bounds is not None:
                self.folded[name] = bounds

    def compute_node(self, activation: str):
        """The node that computes an activation in the int8 graph (None for a graph input)."""
        tensor = self.pre.get(activation, activation)
        if tensor in self.graph_inputs:
            return None
        return self.producer.get(tensor)

    def fp32_name(self, node, activation: str) -> tuple[str | None, int]:
        """(fp32 node name usable in nodes_to_exclude, its topological index in the fp32 graph)."""
        if node is not None and node.name in self.fp32_index:
            return node.name, self.fp32_index[node.name]
        if activation not in self.fp32_producer:
            return None, -1
        # renamed in the int8 graph (edgekit rewrites DenseNet's BatchNormalization as a Conv): the fp32
        # node writing the same tensor, stepping back over a Relu/Clip the quantizer folded into it
        index, fp32_node = self.fp32_producer[activation]
        if activation in self.folded and fp32_node.input and fp32_node.input[0] in self.fp32_producer:
            index, fp32_node = self.fp32_producer[fp32_node.input[0]]
        return (fp32_node.name or None), index

    def quantized_inputs(self, node, matched: set[str]) -> list[str]:
        """The quantized activations a node reads, looking through float-only nodes in between."""
        found: list[str] = []
        seen: set[str] = set()

        def visit(tensor: str) -> None:
            if tensor in seen or not tensor:
                return
            seen.add(tensor)
            if tensor in self.canonical:
                name = self.canonical[tensor]
                if name in matched:
                    found.append(name)
                    return
                tensor = self.pre.get(name, name)  # not in the fp32 file: look further up
            if tensor in self.initializers or tensor in self.graph_inputs:
                return  # constants and an unquantized graph input carry no int8 error
            producer = self.producer.get(tensor)
            if producer is None:
                return
            if producer.op_type == "DequantizeLinear":  # of an initializer: a weight, part of the node's own error
                return
            for upstream in producer.input:
                visit(upstream)

        for tensor in node.input:
            visit(tensor)
        return found


def _activation_bounds(node, initializers) -> tuple[float, float] | None:
    """(low, high) a Relu / Clip applies, or None for any other op or a Clip with non-constant bounds."""
    from onnx import numpy_helper

    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type != "Clip":
        return None
    low, high = -math.inf, math.inf
    for attr in node.attribute:  # opset < 11
        if attr.name == "min":
            low = attr.f
        elif attr.name == "max":
            high = attr.f
    for index, name in enumerate(node.input[1:3], start=1):
        if not name:
            continue
        if name not in initializers:
            return None
        value = float(numpy_helper.to_array(initializers[name]).reshape(-1)[0])
        low, high = (value, high) if index == 1 else (low, value)
    return low, high


# --- the measurement ----------------------------------------------------------------------------


def layer_errors(
    fp32_path: Path,
    int8_path: Path,
    inputs: np.ndarray,
    *,
    session_config: dict[str, str] | None = None,
    workdir: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LayerReport:
    """SQNR of every quantized activation and weight of `int8_path` (QDQ) against `fp32_path`.

    `inputs`: preprocessed float (N, C, H, W). A static batch axis B is fed exactly B samples per
    run, the last chunk padded with copies of its last sample and the padded rows dropped from
    every saved tensor before comparing; a dynamic one runs DYNAMIC_BATCH samples at a time.
    `session_config` (ORT session config entries, e.g. {"session.x64quantprecision": "1"}) goes to
    the int8 runs. Every tensor of every run is kept in memory by collect_activations, so the inputs
    are processed in rounds holding at most about `max_bytes` of saved tensors. Every file (copies
    of the models, augmented models, ORT's shape-inference files) is written into a temporary
    folder (inside `workdir` when given) that is deleted before returning.
    """
    from edgekit.artifact import load_onnx

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
            max_bytes, stage,
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


def _session_options(optimized: bool, session_config: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)
    return options


def _nbytes(tensors: dict[str, list[np.ndarray]]) -> int:
    return sum(a.nbytes for arrays in tensors.values() for a in arrays)


def _collect(fp32_aug, sim_aug, dep_aug, input_name, chunks, batch, graphs: _Graphs, session_config, max_bytes, stage):
    """Run the three augmented models over the chunks in rounds; accumulate energies per activation.

    Returns ({activation: {"qdq": (s, n), "simulated": (s, n), "deployed": (s, n)}}, runs per model).
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
    )

    fp32_options = _session_options(False, {})
    sim_options = _session_options(False, session_config)
    dep_options = _session_options(True, session_config)
    totals: dict[str, dict[str, list[float]]] = {}

    def add(name: str, kind: str, pair: tuple[float, float]) -> None:
        slot = totals.setdefault(name, {}).setdefault(kind, [0.0, 0.0])
        slot[0] += pair[0]
        slot[1] += pair[1]

    def run(path, options, reader) -> dict[str, list[np.ndarray]]:
        try:
            return collect_activations(str(path), reader, session_options=options)
        except Exception as exc:
            raise CheckFailed(f"ONNX Runtime failed on {Path(path).name}: {one_line(exc, 200)}") from exc

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


def _sort_db(value: float) -> float:
    return math.inf if math.isnan(value) else value


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


# --- the picture --------------------------------------------------------------------------------


def plot_layer_errors(report: LayerReport, png_path: Path, title: str) -> Path:
    """PNG of activation SQNR along the network's depth (fp32-graph node index), weights' SQNR as a
    second series, the few worst activations labelled and the most sensitive nodes ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, no pyplot: no global backend state
    from matplotlib.figure import Figure

    png_path = Path(png_path)
    acts = sorted((a for a in report.activations if math.isfinite(a.sqnr_db)), key=lambda a: (a.position, a.tensor))
    weights = [w for w in report.weights if math.isfinite(w.sqnr_db) and w.role == "weight"]
    figure = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    ax.plot([a.position for a in acts], [a.sqnr_db for a in acts], "o-", ms=3.5, lw=1.2, color="tab:blue",
            label="activations: fp32 vs int8 (SQNR, dB)")
    sim = [(a.position, a.simulated_sqnr_db) for a in acts if math.isfinite(a.simulated_sqnr_db)]
    if sim and any(abs(a.sqnr_db - a.simulated_sqnr_db) > 0.05 for a in acts if math.isfinite(a.simulated_sqnr_db)):
        ax.plot(*zip(*sim), "--", lw=0.9, color="tab:gray", label="activations, QDQ in float (no CPU kernel loss)")
    if weights:
        ax.scatter([w.position for w in weights], [w.sqnr_db for w in weights], marker="s", s=14,
                   color="tab:orange", label="weights: fp32 vs dequantized (SQNR, dB)", zorder=3)
    sensitive = set(report.sensitive_nodes(PLOT_LABELS))
    ringed = [a for a in acts if a.fp32_node in sensitive]
    if ringed:
        ax.scatter([a.position for a in ringed], [a.sqnr_db for a in ringed], s=110, facecolors="none",
                   edgecolors="tab:red", linewidths=1.5, label="adds the most noise (sensitive_nodes)", zorder=4)
    for act in [a for a in report.worst(PLOT_LABELS) if math.isfinite(a.sqnr_db)]:
        label = act.fp32_node or act.tensor
        ax.annotate(label if len(label) <= 40 else "..." + label[-37:], (act.position, act.sqnr_db),
                    textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.set_xlabel("depth (node index in the fp32 graph)")
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    from edgekit.artifact import write_atomic

    return write_atomic(png_path, lambda f: figure.savefig(f, format="png"))

